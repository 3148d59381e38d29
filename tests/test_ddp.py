"""DDP on CPU (gloo): ranks train on disjoint shards, and only rank 0 writes the run's files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import test_train
from test_train import ENV, REPO, fast_overrides, load_state

from captioner.data.loaders import build_loaders
from captioner.data.vocab import Vocab

shapes_data = test_train.shapes_data  # the session's generated data (a fixture)


def _epoch_indices(loader, epoch: int) -> list[list[int]]:
    loader.batch_sampler.set_epoch(epoch)
    return list(loader.batch_sampler)


def test_ranks_see_disjoint_shards_that_cover_the_epoch(shapes_data: Path) -> None:
    root = shapes_data / "shapes_smoke"
    vocab = Vocab.load(root / "vocab.json")
    # 200 training captions in batches of 25: 8 batches, 4 per rank, no padding batch.
    loaders = [
        build_loaders(root, vocab, batch_size=25, image_size=128, distributed=(2, rank), eval_splits=[])[0]
        for rank in (0, 1)
    ]
    n = len(loaders[0].dataset)
    for epoch in (0, 1):
        shards = [_epoch_indices(loader, epoch) for loader in loaders]
        assert len(shards[0]) == len(shards[1]) == len(loaders[0]) == 4  # equal steps: no rank waits forever
        seen = [{i for batch in shard for i in batch} for shard in shards]
        assert not seen[0] & seen[1]
        assert seen[0] | seen[1] == set(range(n))
    assert _epoch_indices(loaders[0], 0) != _epoch_indices(loaders[0], 1)  # reshuffled per epoch


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_train_and_only_rank0_writes(shapes_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port: other test runs may share the machine
        "--nproc_per_node=2",
        "train.py",
        *fast_overrides(shapes_data, run),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    outputs = sorted(p.name for p in run.iterdir() if p.is_file())
    assert outputs == ["best.pt", "config.json", "last.pt", "metrics.json", "train.log"]
    state = load_state(run / "last.pt")
    # 200 captions in batches of 32 = 7 batches, dealt to 2 ranks and padded to 4 steps per epoch.
    assert state["progress"]["epoch"] == 2 and state["progress"]["step"] == 2 * 4
    text = proc.stdout + proc.stderr
    assert text.count("epoch 2/2 loss") == 1  # one summary per epoch: rank 0 only
    assert text.count("checkpoints and metrics in") == 1
