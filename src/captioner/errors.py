"""User-facing errors: one line that names the thing, the bad value and the fix."""


class CaptionerError(Exception):
    """A user's mistake (bad config value, missing file, corrupt input).

    Entry points print ``str(err)`` as one line and exit with status 2 instead of a traceback.
    """


class ConfigError(CaptionerError, ValueError):
    """A configuration value is invalid; the message lists the valid values."""


class DataError(CaptionerError):
    """Input data is missing, malformed or unsafe; the message names the file and the fix."""


class CheckpointError(CaptionerError):
    """A checkpoint is truncated, of another format, or does not match the data."""


def require(condition: bool, message: str, error: type[CaptionerError] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds (keeps validation one line per rule)."""
    if not condition:
        raise error(message)
