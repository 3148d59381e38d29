"""Batches copied to the GPU one step ahead, on a side CUDA stream, so the copy overlaps the step.

The train loader pins its host memory (``data.loaders``); here each batch's tensors start their
``non_blocking`` copy to the device while the previous batch trains, the pattern of NVIDIA's apex and
timm prefetchers. On any other device the loader's batches pass through untouched, so CPU runs (and the
golden run) are unchanged. Later ``.to(device, non_blocking=True)`` calls on a prefetched tensor are no-ops.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch


class DevicePrefetcher:
    """Iterate ``loader`` with every tensor of each batch (a mapping) already on ``device``."""

    def __init__(self, loader: Iterable[Mapping[str, Any]], device: torch.device):
        self.loader = loader
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        if self.device.type != "cuda":
            yield from self.loader
            return
        stream = torch.cuda.Stream(self.device)
        batches = iter(self.loader)
        upcoming = self._copy(next(batches, None), stream)
        while upcoming is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)  # the copy has landed before the step reads it
            for value in upcoming.values():
                if isinstance(value, torch.Tensor):
                    value.record_stream(current)  # not reused by the allocator while the step runs
            batch, upcoming = upcoming, self._copy(next(batches, None), stream)
            yield batch

    def _copy(self, batch: Mapping[str, Any] | None, stream: torch.cuda.Stream) -> dict[str, Any] | None:
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return {
                k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }
