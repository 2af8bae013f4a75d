"""The offline demo: the digits, the zoo commands and the end-to-end run."""
