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


def test_rank_seeds_differ_across_ranks_and_resume_points() -> None:
    from captioner.train.state import rank_seed

    assert [rank_seed(7, rank, 4) for rank in range(4)] == [7, 8, 9, 10]  # nanoGPT's seed + rank
    resumed = {rank_seed(7, rank, 4, step) for rank in range(1, 4) for step in (0, 12, 13, 40)}
    assert len(resumed) == 12  # no two ranks or resume points replay the same stream


def _xe_objective(model):
    from omegaconf import OmegaConf

    from captioner.train.objective import CrossEntropy

    cfg = OmegaConf.create(
        {
            "trainer": {"att_gamma": 1.0, "att_reduction": "mean"},
            "smoothing": {"value": 0.1},
            "objective": {
                "location_reinforce": 1.0,
                "location_entropy": 0.002,
                "location_baseline_decay": 0.9,
            },
        }
    )
    return CrossEntropy(cfg, model.decoder)


@pytest.mark.parametrize(
    "decoder_kwargs",
    [
        {},
        {"context": "mean"},
        {"context": "blind"},
        {"attention": "hard", "hard_expected_prob": 0.0},  # a sampled-location minibatch
        {"attention": "hard", "hard_expected_prob": 1.0},  # an expected-context minibatch
        {"coverage": True, "attend_word": True, "beta_gate": "channel", "num_layers": 2},
        {"deep_output": False, "beta_gate": "none", "tie_weights": True, "embed_dim": 16},
        {"freeze_embeddings": True},
    ],
)
@pytest.mark.parametrize(
    "encoder", ["none", "cached", "cached_projected", "cached_partial", "images_projected", "finetune"]
)
def test_unused_parameter_search_is_on_exactly_when_a_step_leaves_parameters_without_gradient(
    decoder_kwargs: dict, encoder: str
) -> None:
    import torch

    from captioner.model.captioner import Captioner
    from captioner.model.decoder import Decoder
    from captioner.model.encoder import build_encoder
    from captioner.train.ddp import needs_unused_parameter_search

    torch.manual_seed(0)
    enc = None
    if encoder != "none":
        enc = build_encoder(
            "shufflenet_v2_x0_5",
            pretrained=False,
            encoder_dim=8 if "projected" in encoder else None,
            finetune=encoder in ("finetune", "cached_partial"),
            finetune_from="stage4" if encoder == "cached_partial" else None,
        )
    dim = enc.out_dim if enc is not None else 8
    kwargs = {"embed_dim": 16, "hidden_dim": 16, "attention_dim": 8, **decoder_kwargs}
    model = Captioner(enc, Decoder(vocab_size=12, encoder_dim=dim, **kwargs)).train()
    cached = encoder.startswith("cached") or encoder == "none"
    cached_dim = enc.prefix_dim if enc is not None else dim  # the frozen prefix's maps
    inputs = torch.randn(2, 2, 2, cached_dim) if cached else torch.rand(2, 3, 64, 64)
    batch = {"captions": torch.randint(1, 12, (2, 6))}
    loss, _ = _xe_objective(model)(model, inputs, batch, 1.0, cached)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert needs_unused_parameter_search(model) == bool(unused), unused


def test_delayed_fine_tuning_under_ddp_is_refused_at_start():
    from omegaconf import OmegaConf

    from captioner.errors import ConfigError
    from captioner.train.ddp import check_distributed

    cfg = OmegaConf.create({"encoder": {"finetune": True, "finetune_start_step": 100}})
    check_distributed(cfg, distributed=False)  # one process: fine
    with pytest.raises(ConfigError, match="finetune_start_step=100 under torchrun"):
        check_distributed(cfg, distributed=True)
    check_distributed(OmegaConf.create({"encoder": {"finetune": True, "finetune_start_step": 0}}), True)
