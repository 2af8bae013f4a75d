"""EDITS, one module per paper step (see run.py for the order)."""
