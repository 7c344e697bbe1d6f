"""The errors that mean "the input or the config is wrong". Stages report them as one clear line that names
the file, key or value and the fix, and exit with status 2 (see `thaw.stage`); anything else is a bug."""

from __future__ import annotations


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


class DataError(ValueError):
    """The input data cannot be used; the message names the file and the problem."""


class ArchiveError(ValueError):
    """A `.keras` file is not one thaw can read, or does not hold what was written."""


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, ArchiveError, FileNotFoundError)
