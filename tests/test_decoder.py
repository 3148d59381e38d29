"""Decoder: shapes, weight tying, scheduled sampling, GloVe loading and config validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import group_yaml

from captioner.decode import beam_search
from captioner.errors import ConfigError
from captioner.model import Captioner, Decoder, DecoderState, build_encoder, load_glove
from captioner.model.loss import caption_loss

V, D, L = 12, 6, 5


def tiny(**kwargs) -> Decoder:
    torch.manual_seed(0)
    base = dict(vocab_size=V, encoder_dim=D, embed_dim=8, hidden_dim=8, attention_dim=4, dropout=0.0)
    return Decoder(**{**base, **kwargs})


def batch(b: int = 3, t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    annotations = torch.rand(b, L, D, generator=g)
    captions = torch.randint(4, V, (b, t), generator=g)
    captions[:, 0] = 1  # <start>
    captions[0, 4:] = 0  # a shorter caption, padded
    return annotations, captions


@pytest.mark.parametrize("beta_gate", ["scalar", "channel", "none"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_shapes_and_attention_is_a_distribution(beta_gate: str, num_layers: int) -> None:
    dec = tiny(beta_gate=beta_gate, num_layers=num_layers)
    annotations, captions = batch()
    h, c, coverage = dec.init_state(annotations)
    assert h.shape == c.shape == (num_layers, 3, 8) and coverage is None
    out = dec(annotations, captions)
    assert out.logits.shape == (3, 5, V) and out.alphas.shape == (3, 5, L)
    assert torch.allclose(out.alphas.sum(-1), torch.ones(3, 5))


@pytest.mark.parametrize("deep_output", [True, False])
def test_tied_weights_share_storage_and_embedding_learns(deep_output: bool) -> None:
    dec = tiny(tie_weights=True, deep_output=deep_output, embed_max_norm=1.0)
    assert dec.L_o.weight.data_ptr() == dec.embedding.weight.data_ptr()
    assert dec.embedding.weight.requires_grad
    assert sum(p is dec.embedding.weight for p in dec.parameters()) == 1  # counted once by optimisers
    annotations, captions = batch()
    before = dec.embedding.weight.detach().clone()
    opt = torch.optim.SGD(dec.parameters(), lr=0.5)
    loss, _ = caption_loss(dec(annotations, captions), captions)
    loss.backward()
    grad = dec.embedding.weight.grad
    assert grad is not None and grad[captions[:, :-1].unique()].abs().sum() > 0
    opt.step()
    assert not torch.equal(before, dec.embedding.weight)
    assert dec.L_o.weight.data_ptr() == dec.embedding.weight.data_ptr()


def _manual_rollout(dec: Decoder, annotations, captions, feed_truth: bool) -> torch.Tensor:
    projected, state = dec.project(annotations), dec.init_state(annotations)
    words, logits = captions[:, 0], []
    for t in range(captions.shape[1] - 1):
        step_logits, _, state = dec.step(words, state, annotations, projected)
        logits.append(step_logits)
        words = captions[:, t + 1] if feed_truth else step_logits.argmax(-1)
    return torch.stack(logits, 1)


@pytest.mark.parametrize("teacher_forcing, feed_truth", [(0.0, False), (1.0, True)])
def test_scheduled_sampling_extremes_match_step_loop(teacher_forcing: float, feed_truth: bool) -> None:
    dec = tiny().eval()
    annotations, captions = batch()
    with torch.no_grad():
        out = dec(annotations, captions, teacher_forcing=teacher_forcing)
        expected = _manual_rollout(dec, annotations, captions, feed_truth)
        other = _manual_rollout(dec, annotations, captions, not feed_truth)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert not torch.allclose(out.logits, other, atol=1e-4)


def test_scheduled_sampling_mixes_per_sequence_and_is_seeded() -> None:
    dec = tiny().eval()
    annotations, captions = batch(b=16, t=8)
    with torch.no_grad():
        torch.manual_seed(7)
        first = dec(annotations, captions, teacher_forcing=0.5).logits
        torch.manual_seed(7)
        second = dec(annotations, captions, teacher_forcing=0.5).logits
        truth = dec(annotations, captions, teacher_forcing=1.0).logits
        own = dec(annotations, captions, teacher_forcing=0.0).logits
    assert torch.equal(first, second)
    assert not torch.allclose(first, truth) and not torch.allclose(first, own)


def test_captioner_accepts_images_or_cached_features() -> None:
    """Cached features are the encoder's frozen prefix's maps; the model applies the tail (here the 1x1 conv)."""
    enc = build_encoder("shufflenet_v2_x0_5", pretrained=False, encoder_dim=D, encoder_size=2).eval()
    model = Captioner(enc, tiny()).eval()
    images = torch.rand(2, 3, 64, 64)
    _, captions = batch(b=2)
    with torch.no_grad():
        fmap = enc.encode_prefix(images)
        from_images = model(images, captions)
        from_features = model(fmap, captions)
        explicit = model(fmap, captions, features=True)
    assert torch.allclose(from_images.logits, from_features.logits, atol=1e-6)
    assert torch.equal(from_features.logits, explicit.logits)
    assert fmap.shape[-1] == enc.prefix_dim != D
    ambiguous = torch.rand(2, 3, 4, enc.prefix_dim)
    with pytest.raises(ConfigError, match="features=True"):
        model(ambiguous, captions)


def test_load_glove_copies_known_words(tmp_path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("dog 1 2 3 4 5 6 7 8\nzebra 0 0 0 0 0 0 0 1\ncat 8 7 6 5 4 3 2 1\n")
    itos = ["<pad>", "<start>", "<end>", "<unk>", "cat", "dog"] + [f"w{i}" for i in range(V - 6)]
    dec = tiny(pretrained_embeddings=str(path), vocab_itos=itos, freeze_embeddings=True)
    assert torch.equal(dec.embedding.weight[5], torch.arange(1.0, 9.0))
    assert torch.equal(dec.embedding.weight[4], torch.arange(8.0, 0.0, -1.0))
    assert not dec.embedding.weight.requires_grad
    assert load_glove(dec.embedding, path, itos) == 2


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"beta_gate": "vector"}, "scalar, channel, none"),
        ({"tie_weights": True, "deep_output": False, "hidden_dim": 16}, "hidden_dim == embed_dim"),
        ({"tie_weights": True, "freeze_embeddings": True}, "freeze_embeddings"),
        ({"vocab_size": None}, "vocab_size=None"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"pretrained_embeddings": "glove.txt"}, "vocab_itos"),
    ],
)
def test_bad_decoder_config_is_one_line_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        tiny(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["sat", "small"])
def test_decoder_configs_build(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "conf" / "decoder" / f"{name}.yaml"
    cfg = group_yaml(path)
    dec = Decoder(**{**cfg, "vocab_size": 50, "encoder_dim": 32})
    out = dec(torch.rand(2, 4, 32), torch.randint(1, 50, (2, 5)))
    assert out.logits.shape == (2, 4, 50)


def test_attend_word_puts_the_previous_word_in_the_attention_query() -> None:
    paper, reads = tiny().eval(), tiny(attend_word=True).eval()
    annotations, captions = batch()
    state = paper.init_state(annotations)
    projected = paper.project(annotations)
    with torch.no_grad():
        alphas = [
            dec.step(captions[:, 1] * 0 + w, state, annotations, projected)[1]
            for dec in (paper, reads)
            for w in (5, 9)
        ]
    assert torch.equal(alphas[0], alphas[1])  # paper: the query is h_{t-1} alone
    assert not torch.allclose(alphas[2], alphas[3])  # attend_word: another word, another place
    loss, _ = caption_loss(reads(annotations, captions), captions)
    loss.backward()
    assert reads.attention.word_proj.weight.grad.abs().sum() > 0
    assert "attention.word_proj.weight" not in paper.state_dict()  # paper checkpoints are unchanged


def test_coverage_sums_past_attention_and_steers_the_next_step() -> None:
    dec = tiny(coverage=True).eval()
    annotations, captions = batch()
    projected = dec.project(annotations)
    state = dec.init_state(annotations)
    assert state.coverage.shape == (1, 3, L) and not state.coverage.any()
    with torch.no_grad():
        dec.attention.coverage_weight.normal_(0.0, 2.0)
        total = torch.zeros(3, L)
        for t in range(3):
            _, alpha, state = dec.step(captions[:, t], state, annotations, projected)
            total += alpha
        assert torch.allclose(state.coverage[0], total)
        # The same h, c and word with another coverage attend elsewhere.
        h, c, cov = state
        alpha_a = dec.step(captions[:, 3], DecoderState(h, c, cov), annotations, projected)[1]
        alpha_b = dec.step(captions[:, 3], DecoderState(h, c, cov.flip(-1) * 3), annotations, projected)[1]
    assert not torch.allclose(alpha_a, alpha_b)
    loss, _ = caption_loss(dec(annotations, captions), captions)
    loss.backward()
    assert dec.attention.coverage_weight.grad.abs().sum() > 0
    # The controls keep the parameter (one checkpoint layout) but carry no coverage.
    assert tiny(coverage=True, context="mean").init_state(annotations).coverage is None


def test_blind_decoder_never_sees_the_image() -> None:
    dec = tiny(context="blind").eval()
    annotations, captions = batch()
    other = torch.randn_like(annotations) * 5
    with torch.no_grad():
        out, out_other = dec(annotations, captions), dec(other, captions)
        state, state_other = dec.init_state(annotations), dec.init_state(other)
    assert torch.equal(out.logits, out_other.logits)
    assert torch.equal(state.h, state_other.h) and torch.equal(state.c, state_other.c)
    assert torch.allclose(out.alphas, torch.full_like(out.alphas, 1 / L))


def test_mean_context_is_uniform_attention_and_differs_from_soft() -> None:
    soft, mean = tiny().eval(), tiny(context="mean").eval()
    annotations, captions = batch()
    with torch.no_grad():
        out_soft, out_mean = soft(annotations, captions), mean(annotations, captions)
        # Same weights (same seed): mean context is soft attention with alpha forced uniform.
        soft.attention.score.weight.zero_()
        soft.attention.score.bias.zero_()
        uniform_soft = soft(annotations, captions)
        out_other = mean(annotations.flip(0), captions)
    assert torch.equal(out_mean.alphas, torch.full_like(out_mean.alphas, 1 / L))
    assert not torch.allclose(out_soft.logits, out_mean.logits, atol=1e-4)
    assert torch.allclose(uniform_soft.logits, out_mean.logits, atol=1e-6)
    assert not torch.allclose(out_mean.logits, out_other.logits)  # it still sees the image


@pytest.mark.parametrize("context", ["mean", "blind"])
def test_controls_leave_attention_parameters_untrained(context: str) -> None:
    dec = tiny(context=context)
    annotations, captions = batch()
    loss, _ = caption_loss(dec(annotations, captions), captions)
    loss.backward()
    assert all(p.grad is None for p in dec.attention.parameters())
    assert dec.L_o.weight.grad is not None
    assert (dec.init_h.weight.grad.abs().sum() > 0) == (context == "mean")  # blind: h0 from zeros


def test_state_dict_is_the_same_for_every_context() -> None:
    # One checkpoint layout: a control's weights load into any context (and old checkpoints still load).
    keys = {c: set(tiny(context=c).state_dict()) for c in ("soft", "mean", "blind")}
    assert keys["soft"] == keys["mean"] == keys["blind"]


def test_decode_respects_context() -> None:
    from captioner.decode import beam_search, greedy

    dec = tiny(context="blind").eval()
    a, _ = batch()
    b = torch.randn_like(a)
    for method in (greedy, lambda d, x: beam_search(d, x, k=3)):
        ha, hb = method(dec, a), method(dec, b)
        assert torch.equal(ha.tokens, hb.tokens) and torch.equal(ha.scores, hb.scores)
        live = ha.alphas[ha.tokens.unsqueeze(-1).expand_as(ha.alphas) != 0]
        assert torch.allclose(live, torch.full_like(live, 1 / L))


def test_unknown_context_is_one_line_error() -> None:
    with pytest.raises(ConfigError) as err:
        tiny(context="hard")
    assert "decoder.context='hard'" in str(err.value) and "soft, mean, blind" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, context", [("blind", "blind"), ("mean_context", "mean")])
def test_control_experiments_set_context_and_tag(name: str, context: str) -> None:
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[1] / "conf" / "experiment" / f"{name}.yaml"
    cfg = OmegaConf.load(path)
    assert cfg.decoder.context == context and cfg.logger.tags.control == name


@pytest.mark.parametrize("coverage", [True, False])
def test_state_repeats_and_reorders_every_tensor_alike(coverage: bool) -> None:
    """Beam search repeats the state per beam and picks parent rows: h, c and coverage move together."""
    dec = tiny(coverage=coverage, num_layers=2).eval()
    annotations, _ = batch()
    state = dec.init_state(annotations).map(lambda s: s + torch.arange(3.0)[:, None])  # rows told apart
    beams = state.repeat(2)
    assert beams.h.shape == beams.c.shape == (2, 6, 8)
    assert (beams.coverage is None) == (not coverage)
    rows = torch.tensor([5, 0, 2])
    picked = beams.select(rows)
    for got, was in zip(picked, beams, strict=True):
        assert (got is None and was is None) or torch.equal(got, was[:, rows])
    assert torch.equal(picked.h[:, 0], state.h[:, 2]) and torch.equal(picked.c[:, 1], state.c[:, 0])
    with torch.no_grad():
        assert beam_search(dec, annotations, k=2, n_best=2, max_len=4).tokens.shape[:2] == (3, 2)
