"""Atomic file writes: a temporary file in the same folder, fsync, rename (never a half-written file).

Files get the permissions ``open`` would give (0666 less the umask), not mkstemp's 0600, so a shared
dataset or run folder stays readable by the group.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from captioner.errors import SaveError


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose content appears at ``path`` only when the block ends without error.

    Any OSError on the way (a full disk, no permission, a folder in the way) becomes a one-line
    :class:`SaveError` naming ``path``; the file there keeps its previous content.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600, which other users cannot read
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, SaveError):
            raise save_error(path, err) from err
        raise


def save_error(path: str | Path, err: OSError) -> SaveError:
    """The one-line :class:`SaveError` for an OSError while writing ``path`` (a full disk, no permission)."""
    reason = err.strerror or str(err) or type(err).__name__
    return SaveError(
        f"cannot write {path} ({reason}); its previous content, if any, is unchanged: "
        "free disk space or fix the folder's permissions, then run again"
    )


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, then rename."""
    with open_atomic(path) as f:
        f.write(data)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """Atomically write ``obj`` as JSON."""
    write_atomic(path, json.dumps(obj, indent=indent).encode())
