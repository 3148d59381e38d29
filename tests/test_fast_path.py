"""The training fast path (``trainer.compile``): which runs take it, and that it trains the same numbers.

The fast path's loss and gradients equal the eager path's up to float rounding, for the demo, quality
and COCO recipes' decoder options (at tiny sizes) and for SCST, whose rollouts on the fast path draw the
eager ones' captions token for token from the same seed; compiled on CPU in the slow tests, its
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
from captioner.decode import greedy, sample_with_grad
from captioner.decode.common import banned_words
from captioner.decode.fast_rollout import greedy_fused, policy_step, sample_fused
from captioner.errors import ConfigError
from captioner.model.captioner import Captioner
from captioner.model.decoder import Decoder
from captioner.model.fast_train import compile_pass, prepare, teacher_forced
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


def test_decoders_the_fast_path_does_not_cover_stay_eager_under_auto_and_refuse_on() -> None:
    cfg = recipe("demo")
    for options, words in [({"attention": "hard"}, "attention=hard"), ({"num_layers": 2}, "num_layers=2")]:
        model = build(cfg, {**TINY, **options})
        assert use_fast_path("auto", CUDA, model.decoder) is False  # a GPU user's default run trains eagerly
        assert use_fast_path("on", CUDA, model.decoder) is True
        with pytest.raises(ConfigError, match=f"{words}.*set trainer.compile=auto or off$"):
            make_fast(model, CPU)


def scst_recipe(compile: str) -> DictConfig:
    """The demo recipe's SCST stage with ``trainer.compile=compile`` (init_from: any existing file)."""
    register()
    overrides = ["experiment=demo", "objective=scst", f"trainer.init_from={REPO / 'README.md'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"trainer.compile={compile}"])


@pytest.mark.parametrize("compile", ["auto", "off", "on"])
def test_scst_takes_every_compile_setting_and_refuses_only_ddp(compile: str) -> None:
    from captioner.train.objective import check_objective

    check_objective(scst_recipe(compile), distributed=False)
    with pytest.raises(ConfigError, match="^objective=scst .* run it on one process$"):
        check_objective(scst_recipe(compile), distributed=True)


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


# --- SCST's rollouts: the same captions, log-probabilities, loss and gradients ---


def scst_vocab():
    """test_scst's words: the vocabulary of its four images' references."""
    from test_scst import REFERENCES

    from captioner.data.vocab import SPECIALS, Vocab

    return Vocab([*SPECIALS, *sorted({w for refs in REFERENCES.values() for r in refs for w in r.split()})])


def scst_setup(decoder: dict | None = None, **objective: object) -> tuple:
    """The quality recipe's decoder at tiny sizes (dropout on), SCST's test set, its SelfCritical."""
    from test_scst import REFERENCES, records, scst_config

    from captioner.train.scst import SelfCritical

    vocab = scst_vocab()
    model = build(recipe("quality"), {**TINY, **(decoder or {})}, vocab=len(vocab), dim=16)
    scst = SelfCritical(scst_config(**{"max_len": 12, **objective}), model, vocab, records())
    return model, scst, torch.randn(4, 2, 2, 16), {"image_ids": list(REFERENCES)}


def assert_same_rollouts(model: Captioner, annotations: torch.Tensor, step=policy_step, prologue=prepare):
    """The fused rollouts draw the eager ones' captions from the same seed, and leave the generator alike."""
    d, ran = model.decoder, {}
    for name, sampler in [("eager", sample_with_grad), ("fused", sample_fused)]:
        torch.manual_seed(3)
        extra = () if sampler is sample_with_grad else (1.0, step, prologue)
        ran[name] = sampler(d, annotations, 5, 12, *extra), torch.get_rng_state()
    (eager, eager_rng), (fused, fused_rng) = ran["eager"], ran["fused"]
    assert eager.mask.sum(-1).unique().numel() > 2, "captions of one length test no row leaving"
    assert torch.equal(fused.tokens, eager.tokens)
    assert torch.equal(fused.mask, eager.mask)
    torch.testing.assert_close(fused.log_probs, eager.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused.entropy, eager.entropy, rtol=0, atol=1e-5)
    assert torch.equal(fused_rng, eager_rng)  # the next batch's draws are the eager run's too
    d.eval()
    try:
        greedy_tokens = greedy_fused(d, annotations, 12, step, prologue)
        assert torch.equal(greedy_tokens, greedy(d, annotations, 12).tokens[:, 0])
    finally:
        d.train()


@pytest.mark.parametrize(
    "decoder",
    [{}, {"context": "mean"}, {"context": "blind"}, {"coverage": True, "attend_word": True}]
    + [{"deep_output": False, "beta_gate": "none"}, {"embed_max_norm": 1.0}],
)
def test_fused_rollouts_draw_the_eager_captions(decoder: dict) -> None:
    model, _, features, _ = scst_setup(decoder)
    assert_same_rollouts(model, model.annotate(features, True)[0])


def test_rollouts_without_host_reads_sync_only_every_few_steps() -> None:
    """What runs on CUDA: every row draws each step, no row lookup, a sync every CHECK_EVERY steps; the
    log-probabilities are still the policy's, those of the decoder read back on the sampled words."""
    from torch.profiler import ProfilerActivity, profile

    from captioner.data.vocab import START_ID
    from captioner.decode.fast_rollout import CHECK_EVERY

    model, _, features, _ = scst_setup({"dropout": 0.0})
    annotations = model.annotate(features, True)[0]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rollout = sample_fused(model.decoder, annotations, 5, 12, host_reads=False)
    names = [e.name for e in prof.events()]
    steps = rollout.tokens.shape[-1]
    assert "aten::nonzero" not in names
    assert names.count("aten::_local_scalar_dense") == (steps - 1) // CHECK_EVERY, steps
    tokens = rollout.tokens.flatten(0, 1)
    start = torch.full((tokens.shape[0], 1), START_ID)
    logits = model.decoder(annotations.repeat_interleave(5, 0), torch.cat([start, tokens], 1)).logits
    logits[..., torch.tensor(banned_words(False))] = -float("inf")
    read_back = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    mask = rollout.mask.flatten(0, 1)
    torch.testing.assert_close(rollout.log_probs.flatten(0, 1), read_back.where(mask, 0.0), atol=1e-5, rtol=0)


def scst_loss_and_grads(scst, model, features, batch) -> tuple:
    torch.manual_seed(3)  # the same dropout masks and samples for both paths
    model.zero_grad(set_to_none=True)
    loss, parts = scst(model, features, batch, 1.0, True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), parts, grads


def assert_same_scst(scst, fused, model, features, batch) -> None:
    eager_loss, eager_parts, eager_grads = scst_loss_and_grads(scst, model, features, batch)
    fused_loss, fused_parts, fused_grads = scst_loss_and_grads(fused, model, features, batch)
    torch.testing.assert_close(fused_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for name in ("reward", "baseline", "sample_length"):  # the same captions: the same rewards
        assert torch.equal(fused_parts[name], eager_parts[name]), name
    assert fused_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(fused_grads[name], eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_fused_scst_trains_like_eager(baseline: str) -> None:
    import copy

    model, scst, features, batch = scst_setup(baseline=baseline)
    fused = copy.copy(scst)
    fused.compiled = (policy_step, prepare)  # the fast path's rollouts, uncompiled
    assert_same_scst(scst, fused, model, features, batch)


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


@pytest.fixture(scope="module")
def compiled_scst() -> tuple:
    """SCST with the greedy baseline, on the fast path compiled for the CPU (both rollouts compiled)."""
    import copy

    model, scst, features, batch = scst_setup(baseline="greedy")
    fused = copy.copy(scst)
    fused.compiled = compile_pass(CPU, policy_step)
    return model, scst, fused, features, batch


@pytest.mark.slow
def test_compiled_rollouts_draw_the_eager_captions(compiled_scst: tuple) -> None:
    model, _, fused, features, _ = compiled_scst
    assert_same_rollouts(model, model.annotate(features, True)[0], *fused.compiled)


@pytest.mark.slow
def test_compiled_scst_trains_like_eager(compiled_scst: tuple) -> None:
    model, scst, fused, features, batch = compiled_scst
    assert_same_scst(scst, fused, model, features, batch)


@pytest.mark.slow
def test_compiled_sampling_dispatches_fewer_operators_per_step(compiled_scst: tuple) -> None:
    """Operators per sampling step (forward, with its graph), eager vs fused: with host reads (the CPU's
    default: the same draws as eager) and without (CUDA's: no row lookup)."""
    model, _, fused, features, _ = compiled_scst
    annotations = model.annotate(features, True)[0]
    rollouts = {
        "eager": lambda: sample_with_grad(model.decoder, annotations, 5, 12),
        "fused": lambda: sample_fused(model.decoder, annotations, 5, 12, 1.0, *fused.compiled),
        "fused_no_reads": lambda: sample_fused(
            model.decoder, annotations, 5, 12, 1.0, *fused.compiled, host_reads=False
        ),
    }
    per_step = {}
    for name, rollout in rollouts.items():
        torch.manual_seed(3)
        steps = rollout().tokens.shape[-1]  # warm-up: compiles
        torch.manual_seed(3)
        per_step[name] = count_dispatched_ops(rollout) / steps
    print(f"operators per SCST sampling step: {per_step}")
    assert per_step["fused"] <= 0.5 * per_step["eager"], per_step
    assert per_step["fused_no_reads"] <= 0.25 * per_step["eager"], per_step


@pytest.mark.slow
def test_compile_on_scst_trains_a_step() -> None:
    """``trainer.compile=on`` builds SCST on the compiled rollouts, and one optimiser step trains."""
    from test_scst import REFERENCES, records

    from captioner.train.objective import build_objective, check_objective

    cfg = scst_recipe("on")
    OmegaConf.update(cfg, "objective.samples", 2)
    OmegaConf.update(cfg, "objective.max_len", 6)
    check_objective(cfg, distributed=False)
    vocab = scst_vocab()
    model = build(cfg, TINY, vocab=len(vocab), dim=16)
    scst = build_objective(cfg, model, vocab, records())
    assert scst.compiled is not None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss, parts = scst(model, torch.randn(4, 2, 2, 16), {"image_ids": list(REFERENCES)}, 1.0, True)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and float(parts["sample_length"]) > 0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


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
