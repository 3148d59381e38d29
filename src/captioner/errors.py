"""User-facing errors: one line that names the thing, the bad value and the fix."""

from pathlib import Path


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


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file's bytes are damaged (a failed CRC, a truncated archive); ``fix`` says what to use instead."""

    def __init__(
        self,
        path: str | Path,
        problem: str,
        fix: str = "use another checkpoint (best.pt / last.pt) or retrain",
    ):
        self.problem = problem  # what is wrong, for a caller that knows a better fix (a resume)
        super().__init__(f"checkpoint {path} {problem}; {fix}")


class SaveError(OSError):
    """A file could not be written (disk full, no permission); its previous version is intact.

    Not the user's config: entry points print ``str(err)`` as one line and exit with status 1. An
    OSError, so code that tolerates a read-only folder (``except OSError``) still does.
    """


def require(condition: bool, message: str, error: type[CaptionerError] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds (keeps validation one line per rule)."""
    if not condition:
        raise error(message)
