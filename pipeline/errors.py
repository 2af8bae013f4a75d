"""Errors a user can act on: each message names the file or key and the fix."""


class SemdistillError(Exception):
    """Base class: the CLI prints these as one clear message, without a traceback."""


class ConfigError(SemdistillError):
    """A configuration fault: wrong key, wrong type, missing file."""


class DataError(SemdistillError):
    """A dataset fault: missing root, empty class, too many unreadable images."""


class ModelLoadError(SemdistillError):
    """A model could not be loaded from its id or path."""
