"""Checks on data and outputs: `data check` and `verify`."""
