"""The training fast path (``trainer.compile``): which runs take it, and that it trains the same numbers.

The fast path's loss and gradients equal the eager path's up to float rounding, for the demo, quality
and COCO recipes' decoder options (at tiny sizes) and for SCST; compiled on CPU in the slow tests, its
regrouped equations uncompiled in the default ones. It must also dispatch at most a fifth of the eager
path's operators per demo training batch (issue 29's target, measurable without a GPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from captioner.config import register
from captioner.errors import ConfigError
from captioner.model.captioner import Captioner
from captioner.model.decoder import Decoder
from captioner.model.fast_train import teacher_forced
from captioner.runtime.distributed import SINGLE
from captioner.runtime.profiling import count_dispatched_ops
from captioner.train.ddp import wrap_model
from captioner.train.fast_path import FastCaptioner, compile_setting, make_fast, use_fast_path
from captioner.train.objective import CrossEntropy
from captioner.train.teacher_forcing import build_schedule

REPO = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# The recipes: the README's demo, the quality benchmark's model, and the seed's COCO setting (the
# default decoder and teacher forcing, which samples words: scheduled sampling, Bengio et al. 2015).
RECIPES = {
    "demo": ["experiment=demo"],
    "quality": ["experiment=quality"],
    "coco": ["data=coco", "encoder=resnet101"],
}
TINY = {"embed_dim": 16, "hidden_dim": 24, "attention_dim": 20}


def recipe(name: str) -> DictConfig:
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=RECIPES[name])


def build(cfg: DictConfig, sizes: dict | None = None, vocab: int = 30, dim: int = 12) -> Captioner:
    """The recipe's decoder options at ``sizes`` over cached features (B, h, w, ``dim``), in train mode."""
    torch.manual_seed(0)
    options = {**OmegaConf.to_container(cfg.decoder, resolve=True), **(sizes or {})}
    return Captioner(None, Decoder(vocab, dim, **options)).train()


def batch_of(rows: int, steps: int, vocab: int, grid: int, dim: int) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(rows, grid, grid, dim, generator=g)
    captions = torch.randint(4, vocab, (rows, steps), generator=g)
    captions[:, 0] = 1
    captions[: rows // 3, steps // 2 :] = 0  # shorter captions, padded
    return features, {"captions": captions}


def loss_and_grads(train_model, model, objective, features, batch, eps: float) -> tuple:
    torch.manual_seed(7)  # the same dropout masks and scheduled-sampling coins for both paths
    model.zero_grad(set_to_none=True)
    loss, _ = objective(train_model, features, batch, eps, True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_training(train_model, model, cfg: DictConfig, features, batch, eps: float) -> None:
    objective = CrossEntropy(cfg, model.decoder)
    eager_loss, eager_grads = loss_and_grads(model, model, objective, features, batch, eps)
    fast_loss, fast_grads = loss_and_grads(train_model, model, objective, features, batch, eps)
    torch.testing.assert_close(fast_loss, eager_loss, rtol=1e-4, atol=1e-5)
    assert fast_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(fast_grads[name], eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def epsilon(cfg: DictConfig) -> float:
    """The recipe's teacher forcing half-way through its first epoch (inv_sigmoid: < 1, words sampled)."""
    return build_schedule(**cfg.tf).epsilon(0.5)


# --- which runs take the fast path ---


@pytest.mark.parametrize(
    ("setting", "device", "fast"),
    [("auto", CUDA, True), ("auto", CPU, False), ("on", CPU, True), ("on", CUDA, True)]
    + [("off", CPU, False), ("off", CUDA, False)],
)
def test_use_fast_path_truth_table(setting: str, device: torch.device, fast: bool) -> None:
    assert use_fast_path(setting, device) is fast


def test_a_bad_compile_setting_is_one_line_naming_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"^trainer.compile='fast' is not valid; choose one of: auto, off, on$"
    ):
        use_fast_path("fast", CPU)
    # YAML 1.1 reads unquoted on/off as booleans; checkpoints from when the key was a bool hold them too.
    assert [compile_setting(v) for v in (False, True, "False", "True", "off")] == [
        "off",
        "on",
        "off",
        "on",
        "off",
    ]


def test_the_default_is_auto() -> None:
    assert recipe("demo").trainer.compile == "auto"


def test_compile_off_trains_the_model_itself_and_on_shares_its_parameters() -> None:
    model = build(recipe("demo"), TINY)
    assert wrap_model(model, CPU, SINGLE, "off") is model
    assert wrap_model(model, CPU, SINGLE, "auto") is model  # the CPU golden run stays eager
    fast = wrap_model(model, CPU, SINGLE, "on")
    assert isinstance(fast, FastCaptioner)
    assert [id(p) for p in fast.parameters()] == [id(p) for p in model.parameters()]


def test_decoders_the_fast_path_does_not_cover_are_one_line_errors() -> None:
    cfg = recipe("demo")
    for options, words in [({"attention": "hard"}, "attention=hard"), ({"num_layers": 2}, "num_layers=2")]:
        with pytest.raises(ConfigError, match=f"{words}.*set trainer.compile=off$"):
            make_fast(build(cfg, {**TINY, **options}), CPU)


def test_scst_refuses_only_compile_on() -> None:
    from captioner.train.objective import check_objective

    cfg = recipe("demo")
    OmegaConf.update(cfg, "objective", {"name": "scst"}, force_add=True)
    OmegaConf.update(cfg, "trainer.init_from", str(REPO / "README.md"))
    cfg.trainer.compile = "on"
    with pytest.raises(ConfigError, match="trainer.compile=auto or off"):
        check_objective(cfg, distributed=False)


# --- the same numbers: the regrouped equations (fast), compiled (slow) ---


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("context", ["soft", "mean", "blind"])
def test_the_fused_pass_trains_like_the_decoder(name: str, context: str) -> None:
    cfg = recipe(name)
    model = build(cfg, {**TINY, "context": context})

    def fused(inputs, captions, teacher_forcing=1.0, features=None, image_index=None):
        annotations = model.caption_annotations(inputs, features, image_index)
        return teacher_forced(model.decoder, annotations, captions, teacher_forcing)

    features, batch = batch_of(6, 7, 30, 3, 12)
    assert_same_training(fused, model, cfg, features, batch, epsilon(cfg))


def test_scst_trains_alike_through_the_fast_wrapper() -> None:
    """SCST samples through the decoder itself: handed the fast wrapper, it computes the same loss."""
    from test_scst import REFERENCES, records, scst_config

    from captioner.data.vocab import SPECIALS, Vocab
    from captioner.train.scst import SelfCritical

    vocab = Vocab([*SPECIALS, *sorted({w for refs in REFERENCES.values() for r in refs for w in r.split()})])
    model = build(recipe("quality"), TINY, vocab=len(vocab), dim=16)
    scst = SelfCritical(scst_config(baseline="greedy"), model, vocab, records())
    features, batch = torch.randn(4, 2, 2, 16), {"image_ids": list(REFERENCES)}
    losses = []
    for train_model in (model, make_fast(model, CPU)):
        torch.manual_seed(3)
        losses.append(scst(train_model, features, batch, 1.0, True)[0])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def demo() -> tuple:
    """The demo recipe at its real sizes (batch 32, 8x8x96 annotations, the sat decoder), compiled."""
    cfg = recipe("demo")
    model = build(cfg, vocab=40, dim=96)
    features, batch = batch_of(32, 12, 40, 8, 96)
    return cfg, model, make_fast(model, CPU), features, batch


@pytest.mark.slow
def test_compiled_demo_trains_like_eager(demo: tuple) -> None:
    cfg, model, fast, features, batch = demo
    assert_same_training(fast, model, cfg, features, batch, epsilon(cfg))


@pytest.mark.slow
def test_compiled_demo_dispatches_at_most_a_fifth_of_the_operators(demo: tuple) -> None:
    cfg, model, fast, features, batch = demo
    objective = CrossEntropy(cfg, model.decoder)

    def step(train_model) -> None:
        model.zero_grad(set_to_none=True)
        objective(train_model, features, batch, 1.0, True)[0].backward()

    step(fast)  # compiles
    eager, fused = count_dispatched_ops(lambda: step(model)), count_dispatched_ops(lambda: step(fast))
    assert fused <= 0.2 * eager, (fused, eager)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quality", "coco"])
def test_compiled_recipe_trains_like_eager(name: str) -> None:
    cfg = recipe(name)
    model = build(cfg, TINY)
    features, batch = batch_of(6, 7, 30, 3, 12)
    assert_same_training(make_fast(model, CPU), model, cfg, features, batch, epsilon(cfg))


@pytest.mark.slow
def test_another_caption_length_reuses_the_compiled_step(demo: tuple) -> None:
    """The bucket sampler's batches differ in length: the compiled cell must not recompile for each."""
    from torch._dynamo.utils import counters

    cfg, model, fast, features, batch = demo
    objective = CrossEntropy(cfg, model.decoder)
    objective(fast, features, batch, 1.0, True)[0].backward()
    graphs = counters["stats"]["unique_graphs"]
    for steps in (9, 15):
        longer = {"captions": batch_of(32, steps, 40, 8, 96)[1]["captions"]}
        objective(fast, features, longer, 1.0, True)[0].backward()
    assert counters["stats"]["unique_graphs"] == graphs
