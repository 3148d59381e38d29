"""Progress output that reads well in a terminal and in a log file.

On a terminal, tqdm draws its usual bar. When stderr is not a terminal (CI, SLURM .out files, nohup),
tqdm would write a carriage-return line per update (~1,300 of them in a demo run); there we keep
tqdm's counting, rate and ETA but print one plain line at most every ``every_s`` seconds and at the
end. Status lines (``log_line``: epoch summaries, results) go through ``logging`` so Hydra's ``<run>/train.log``
holds them too; conf/hydra/job_logging/captioner.yaml prints them to the console without prefixes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

log = logging.getLogger("captioner")


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (tqdm writes the text,
    then flushes; we emit each non-empty status once)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.pending = ""

    def write(self, text: str) -> None:
        self.pending += text

    def flush(self) -> None:
        line = self.pending.replace("\r", "").strip()
        self.pending = ""
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()


class _LineBar(tqdm):
    """A bar that prints only on its own clock: a new postfix waits for the next line instead of forcing one."""

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:  # noqa: D102
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is an interactive terminal."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    disable: bool = False,
    every_s: float = 30.0,
    **kwargs,
) -> tqdm:
    """A tqdm bar on a terminal; otherwise a plain ``desc: n/total [elapsed<ETA, rate]`` line every ``every_s``."""
    if disable or is_terminal():
        return tqdm(iterable, desc=desc, disable=disable, **kwargs)
    kwargs.pop("leave", None)  # a closed bar's last line is the record of what ran: keep it
    return _LineBar(
        iterable,
        desc=desc,
        file=_Lines(sys.stderr),
        mininterval=every_s,
        maxinterval=every_s,
        ascii=True,
        ncols=100,
        bar_format="{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        **kwargs,
    )


def log_line(message: str) -> None:
    """A status line for the console and the run's log file (never garbled by a live bar)."""
    with tqdm.external_write_mode(file=sys.stderr):
        log.info(message)
