"""The decoder's recurrent state and the row layout decoders share: n consecutive rows per image."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor


class DecoderState(NamedTuple):
    """What one step hands the next: the LSTM's h_t and c_t, (num_layers,B,H) each, and with
    ``decoder.coverage`` the attention summed over past steps, (1,B,L); None when off.

    Every tensor keeps its rows on dim 1, so decoders repeat and reorder them alike (``map``).
    """

    h: Tensor
    c: Tensor
    coverage: Tensor | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> DecoderState:
        """``fn`` applied to every tensor of the state (coverage stays None when off)."""
        return DecoderState(fn(self.h), fn(self.c), None if self.coverage is None else fn(self.coverage))

    def repeat(self, n: int) -> DecoderState:
        """Each row repeated n times, consecutively: n beams or samples per image."""
        return self.map(lambda s: s.repeat_interleave(n, dim=1))

    def select(self, rows: Tensor) -> DecoderState:
        """The rows ``rows`` (1-D long) in that order: beam search's surviving parents."""
        return self.map(lambda s: s.index_select(1, rows))


def group_size(rows: int, batch: int) -> int:
    """How many consecutive decoder rows share one image's annotations (rows = batch * n)."""
    if batch == 0 or rows % batch:
        raise ValueError(
            f"attention got {rows} hidden rows for {batch} images; rows must be a multiple of the images "
            "(n consecutive rows per image)"
        )
    return rows // batch
