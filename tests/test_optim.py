"""Optimiser param groups, LR schedules with warm-up, resume, gradient clipping."""

from pathlib import Path

import pytest
import torch
from conftest import group_yaml
from torch import nn

from captioner.config import SmoothingConfig
from captioner.errors import CheckpointError, ConfigError
from captioner.train.optim import build_optimizer, clip_gradients
from captioner.train.schedulers import SCHEDULERS, build_scheduler

ROOT = Path(__file__).resolve().parents[1]


class _Decoder(nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 6)
        self.lstm = nn.LSTMCell(6, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 11)
        if tie:
            self.out.weight = self.embedding.weight


class _Captioner(nn.Module):
    def __init__(self, tie: bool = True, encoder: bool = True) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)) if encoder else None
        self.decoder = _Decoder(tie)


def _groups(optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {g["name"]: g for g in optimizer.param_groups}


def _ids(group: dict) -> set[int]:
    return {id(p) for p in group["params"]}


def test_groups_lrs_and_no_decay() -> None:
    torch.manual_seed(0)
    model = _Captioner(tie=True)
    optimizer = build_optimizer(model, "adamw", encoder_lr=1e-5, decoder_lr=2e-3, embedding_lr=None)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = _groups(optimizer)
    assert list(groups) == ["encoder", "encoder_no_decay", "decoder", "decoder_no_decay", "embedding"]
    assert [g["lr"] for g in groups.values()] == [
        1e-5,
        1e-5,
        2e-3,
        2e-3,
        2e-3,
    ]  # embedding_lr None = decoder_lr
    assert [g["weight_decay"] for g in groups.values()] == [1e-2, 0.0, 1e-2, 0.0, 0.0]
    enc, dec = model.encoder, model.decoder
    assert _ids(groups["encoder"]) == {id(enc[0].weight)}
    assert _ids(groups["encoder_no_decay"]) == {id(enc[0].bias), id(enc[1].weight), id(enc[1].bias)}
    assert _ids(groups["decoder"]) == {id(dec.lstm.weight_ih), id(dec.lstm.weight_hh)}
    no_decay = {
        id(dec.lstm.bias_ih),
        id(dec.lstm.bias_hh),
        id(dec.norm.weight),
        id(dec.norm.bias),
        id(dec.out.bias),
    }
    assert _ids(groups["decoder_no_decay"]) == no_decay
    assert _ids(groups["embedding"]) == {id(dec.embedding.weight)}
    # the tied output weight is the embedding, counted once across all groups
    all_params = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(all_params) == len(set(all_params)) == len(list(model.parameters()))


def test_embedding_lr_untied_sgd_and_frozen_encoder() -> None:
    model = _Captioner(tie=False)
    for p in model.encoder.parameters():
        p.requires_grad_(False)  # frozen until finetune_start_step: still in the optimiser
    optimizer = build_optimizer(model, "sgd", encoder_lr=0.0, decoder_lr=0.1, embedding_lr=0.02, momentum=0.5)
    groups = _groups(optimizer)
    assert isinstance(optimizer, torch.optim.SGD) and groups["decoder"]["momentum"] == 0.5
    assert groups["embedding"]["lr"] == 0.02
    assert id(model.decoder.out.weight) in _ids(groups["decoder"])
    assert len(groups["encoder"]["params"]) + len(groups["encoder_no_decay"]["params"]) == 4
    no_encoder = _groups(build_optimizer(_Captioner(encoder=False), "adam"))
    assert list(no_encoder) == ["decoder", "decoder_no_decay", "embedding"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"decoder_lr": -1e-3}, "optimizer.decoder_lr=-0.001"),
        ({"encoder_lr": -1.0}, "optimizer.encoder_lr=-1.0"),
        ({"embedding_lr": -2e-2}, "optimizer.embedding_lr=-0.02"),
        ({"name": "lamb"}, "sgd, adam, adamw"),
        ({"weight_decay": -0.1}, "optimizer.weight_decay=-0.1"),
        ({"betas": (0.9, 1.5)}, "optimizer.betas"),
    ],
)
def test_bad_optimizer_values_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_optimizer(_Captioner(), **kwargs)


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def _run_batches(optimizer: torch.optim.Optimizer, schedule, n: int) -> list[float]:
    """The rate used by each of n batches (the loop steps the schedule after the optimiser)."""
    lrs = []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step_batch()
    return lrs


@pytest.mark.parametrize(
    ("total", "per_epoch", "n_restarts"), [(120, 10, 2), (97, 7, 2), (100, 1, 2), (7, 7, 1), (2, 1, 0)]
)
def test_cosine_restarts_end_exactly_at_min_lr(total: int, per_epoch: int, n_restarts: int) -> None:
    optimizer = _opt(2e-3)
    schedule = build_scheduler(optimizer, "cosine", total_steps=total, steps_per_epoch=per_epoch, n_cycles=3)
    lrs = _run_batches(optimizer, schedule, total)
    assert lrs[0] == 2e-3
    assert lrs[-1] == pytest.approx(2e-3 * 1e-3, rel=1e-12) and lrs[-1] <= lrs[0] / 1000
    assert min(lrs) == pytest.approx(lrs[-1])
    # 3 cycles -> 2 restarts, each back at the peak; short runs fit fewer cycles of >= 2 steps
    restarts = [i for i in range(1, total) if lrs[i] > lrs[i - 1]]
    assert len(restarts) == n_restarts
    assert all(lrs[i] == 2e-3 and lrs[i - 1] == pytest.approx(2e-6) for i in restarts)
    if total == 120:  # cycles of 1:2:4 rounded to whole epochs: restarts at epochs 2 and 5
        assert restarts == [20, 50]
    schedule.step_batch()  # one step too many stays at the minimum
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-6)


def test_one_step_runs_train_at_the_final_rate() -> None:
    for name, final in (("cosine", 1e-3), ("onecycle", 1e-3)):
        optimizer = _opt(1.0)
        schedule = build_scheduler(optimizer, name, total_steps=1, steps_per_epoch=1)
        assert _run_batches(optimizer, schedule, 2) == pytest.approx([final, final])


def test_warmup_ramps_linearly_on_top_of_schedule() -> None:
    optimizer = _opt(1.0)
    schedule = build_scheduler(optimizer, "none", total_steps=20, steps_per_epoch=5, warmup_steps=4)
    assert _run_batches(optimizer, schedule, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    optimizer = _opt(1.0)
    schedule = build_scheduler(optimizer, "exp", total_steps=20, steps_per_epoch=2, warmup_steps=4, gamma=0.5)
    lrs = []
    for _epoch in range(3):
        lrs += _run_batches(optimizer, schedule, 2)
        schedule.step_epoch()
    # exp halves per epoch; warm-up multiplies on top and does not compound into the exp state
    assert lrs == [0.25, 0.5, 0.75 * 0.5, 0.5, 0.25, 0.25]


def test_onecycle_ends_low_and_step_decays_per_epoch() -> None:
    optimizer = _opt(1e-2)
    schedule = build_scheduler(optimizer, "onecycle", total_steps=50, steps_per_epoch=10)
    lrs = _run_batches(optimizer, schedule, 50)
    assert max(lrs) == pytest.approx(1e-2) and lrs.index(max(lrs)) == 15 - 1  # peak after pct_start=0.3
    assert lrs[0] == pytest.approx(1e-2 / 25) and lrs[-1] == pytest.approx(1e-5)
    optimizer = _opt(1.0)
    schedule = build_scheduler(optimizer, "step", total_steps=50, steps_per_epoch=10, step_size=2, gamma=0.1)
    per_epoch = []
    for _ in range(5):
        per_epoch.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step_batch()  # batch steps do not move an epoch schedule
        schedule.step_epoch()
    assert per_epoch == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


def test_plateau_reduces_after_patience_validations() -> None:
    optimizer = _opt(1.0)
    schedule = build_scheduler(
        optimizer, "plateau", total_steps=100, steps_per_epoch=10, factor=0.5, patience=2
    )
    seen = []
    for bleu4 in (0.10, 0.12, 0.12, 0.11, 0.12, 0.11, 0.11, 0.11):
        schedule.step_epoch()  # ignored: plateau steps on validation only
        schedule.step_validation(bleu4)
        seen.append(schedule.get_last_lr()[0])
    assert seen == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_plateau_never_goes_below_min_lr_ratio() -> None:
    optimizer = _opt(1.0)
    schedule = build_scheduler(optimizer, "plateau", 10, 1, factor=0.1, patience=0, min_lr_ratio=1e-2)
    for _ in range(6):
        schedule.step_validation(0.0)
    assert schedule.get_last_lr() == [pytest.approx(1e-2)]


@pytest.mark.parametrize("name", ["cosine", "onecycle", "plateau", "exp"])
def test_state_dict_resumes_exact_lr_sequence(name: str) -> None:
    def make():
        model = _Captioner()
        optimizer = build_optimizer(model, "adamw", encoder_lr=1e-4, decoder_lr=1e-2)
        return optimizer, build_scheduler(optimizer, name, total_steps=40, steps_per_epoch=5, warmup_steps=7)

    def run(optimizer, schedule, epochs: range, trace: list) -> None:
        for epoch in epochs:
            for _ in range(5):
                trace.append([g["lr"] for g in optimizer.param_groups])
                optimizer.step()
                schedule.step_batch()
            schedule.step_epoch()
            schedule.step_validation(0.1 + 0.01 * (epoch % 2))

    full: list = []
    run(*make(), range(8), full)
    first: list = []
    optimizer, schedule = make()
    run(optimizer, schedule, range(3), first)
    saved = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict()}
    resumed: list = []
    optimizer, schedule = make()
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["scheduler"])
    run(optimizer, schedule, range(3, 8), resumed)
    assert first + resumed == full
    assert len({tuple(lrs) for lrs in full}) > 3  # the rates really moved


def test_load_state_dict_of_another_schedule_is_checkpoint_error() -> None:
    state = build_scheduler(_opt(), "cosine", 10, 5).state_dict()
    with pytest.raises(CheckpointError, match="scheduler.name='exp'"):
        build_scheduler(_opt(), "exp", 10, 5).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "linear"}, "none, plateau, cosine, exp, step, onecycle"),
        ({"name": "cosine", "min_lr_ratio": 0.0}, "scheduler.min_lr_ratio=0.0"),
        ({"name": "none", "warmup_steps": -1}, "scheduler.warmup_steps=-1"),
        ({"name": "plateau", "factor": 1.5}, "scheduler.factor=1.5"),
        ({"name": "step", "step_size": 0}, "scheduler.step_size=0"),
    ],
)
def test_bad_scheduler_values_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_scheduler(_opt(), total_steps=10, steps_per_epoch=5, **kwargs)


def test_clip_gradients_modes() -> None:
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients([p], "none", 1.0) is None and p.grad.tolist() == [3.0, 4.0]
    assert float(clip_gradients([p], "value", 3.5)) == pytest.approx(5.0)
    assert p.grad.tolist() == [3.0, 3.5]
    p.grad = torch.tensor([3.0, 4.0])
    assert float(clip_gradients(iter([p]), "norm", 1.0)) == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ConfigError, match="none, norm, value"):
        clip_gradients([p], "l2", 1.0)
    with pytest.raises(ConfigError, match="trainer.clip_value=0"):
        clip_gradients([p], "norm", 0)


def test_yaml_files_build() -> None:
    model = _Captioner()
    for path in sorted((ROOT / "conf" / "optimizer").glob("*.yaml")):
        optimizer = build_optimizer(model, **group_yaml(path))
        assert optimizer.param_groups[0]["name"] == "encoder"
    names = set()
    for path in sorted((ROOT / "conf" / "scheduler").glob("*.yaml")):
        schedule = build_scheduler(_opt(), total_steps=300, steps_per_epoch=30, **group_yaml(path))
        assert schedule.name == path.stem
        names.add(schedule.name)
    assert names == set(SCHEDULERS)
    values = {
        p.stem: group_yaml(p).get("value", SmoothingConfig.value)
        for p in (ROOT / "conf" / "smoothing").glob("*.yaml")
    }
    assert values == {
        "none": 0.0,
        "ls_0.05": 0.05,
        "ls_0.1": 0.1,
        "ls_0.2": 0.2,
        "ls_0.4": 0.4,
        "ls_0.6": 0.6,
    }


@pytest.mark.parametrize(
    ("mode", "metrics", "cut"), [("max", [1.0, 0.5, 0.4], True), ("min", [1.0, 0.5, 0.4], False)]
)
def test_plateau_follows_the_early_stop_direction(mode: str, metrics: list[float], cut: bool) -> None:
    optimizer = _opt(1.0)
    schedule = build_scheduler(
        optimizer, "plateau", total_steps=10, steps_per_epoch=1, metric_mode=mode, patience=1, factor=0.5
    )
    for m in metrics:
        schedule.step_validation(m)
    assert (optimizer.param_groups[0]["lr"] < 1.0) is cut
