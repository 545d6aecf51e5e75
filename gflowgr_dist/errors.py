"""User-facing errors.

Every error a user can cause (a bad file, config value or CLI argument) is raised as a
`GflowgrError` whose message names the field, the value and the fix. The CLI prints that message
alone, without a traceback, and exits with status 2.
"""


class GflowgrError(Exception):
    """An error caused by user input; its message is the whole report."""


class ConfigError(GflowgrError, ValueError):
    """A configuration file, overlay or `--set` override is invalid."""


class DataError(GflowgrError, ValueError):
    """An input data file is missing, malformed or inconsistent."""
