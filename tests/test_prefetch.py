"""DevicePrefetcher: on CPU the loader's batches pass through untouched; on CUDA they arrive on the device."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from captioner.data.prefetch import DevicePrefetcher


def _loader(pin: bool = False) -> DataLoader:
    rows = [{"captions": torch.full((5,), i), "id": f"img{i}"} for i in range(7)]
    return DataLoader(rows, batch_size=3, pin_memory=pin)


def test_on_cpu_every_batch_passes_through_in_order() -> None:
    loader = _loader()
    prefetched = DevicePrefetcher(loader, torch.device("cpu"))
    assert len(prefetched) == len(loader) == 3
    got, want = list(prefetched), list(loader)
    assert [b["id"] for b in got] == [b["id"] for b in want]
    assert all(torch.equal(a["captions"], b["captions"]) for a, b in zip(got, want, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU check runs it)")
def test_on_cuda_tensors_arrive_on_the_device_one_batch_ahead() -> None:
    device = torch.device("cuda")
    got = list(DevicePrefetcher(_loader(pin=True), device))
    assert [b["id"] for b in got] == [["img0", "img1", "img2"], ["img3", "img4", "img5"], ["img6"]]
    assert all(b["captions"].device.type == "cuda" for b in got)
    assert torch.equal(torch.cat([b["captions"][:, 0] for b in got]).cpu(), torch.arange(7))
