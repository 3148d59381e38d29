"""Decoding: greedy, batched beam search and sampling on a small random (deterministic) decoder."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
from conftest import group_yaml

from captioner.data.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocab
from captioner.decode import (
    DecodeConfig,
    Hypotheses,
    beam_search,
    decode,
    greedy,
    hypotheses_to_words,
    sample,
)
from captioner.errors import ConfigError
from captioner.model.decoder import Decoder

V, D, L = 24, 8, 6


@pytest.fixture(scope="module", params=["paper", "attend_word", "coverage"])
def decoder(request) -> Decoder:
    """Float64 so that batched and one-image decoding agree to rounding, not just roughly."""
    kwargs = dict(vocab_size=V, encoder_dim=D, embed_dim=12, hidden_dim=12, attention_dim=10, dropout=0.0)
    torch.manual_seed(0)
    dec = Decoder(**kwargs).double()
    if request.param != "paper":  # the same weights plus a word or coverage term in the attention energy
        paper = dec
        dec = Decoder(**kwargs, **{request.param: True}).double()
        dec.load_state_dict(paper.state_dict(), strict=False)
        extra = (
            dec.attention.word_proj.weight
            if request.param == "attend_word"
            else dec.attention.coverage_weight
        )
        with torch.no_grad():
            extra.normal_(
                0.0,
                0.3 if request.param == "attend_word" else 3.0,
                generator=torch.Generator().manual_seed(1),
            )
    with torch.no_grad():
        # Peakier word distributions, a previous word that matters and a likely <end> so captions finish at different lengths.
        dec.embedding.weight.mul_(10.0)
        dec.L_o.weight.mul_(4.0)
        dec.L_o.bias[END_ID] += 2.0
        dec.L_o.bias[UNK_ID] += 1.0  # so that ban_unk has something to ban
    return dec.eval()


def annotations(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, L, D, generator=g, dtype=torch.float64)


def padded(t: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, steps - t.shape[-1]), value=PAD_ID)


def check_well_formed(hyp: Hypotheses, max_len: int) -> None:
    """Shapes agree, <pad> only after <end>, lengths count the real words, alpha rows sum to 1."""
    b, n, t = hyp.tokens.shape
    assert t <= max_len
    assert hyp.log_probs.shape == (b, n, t) and hyp.alphas.shape == (b, n, t, L)
    assert hyp.scores.shape == hyp.lengths.shape == (b, n)
    real = hyp.tokens != PAD_ID
    assert torch.equal(real.sum(-1), hyp.lengths)
    assert torch.equal(real, torch.arange(t) < hyp.lengths[..., None])  # no gaps
    assert not (hyp.tokens == START_ID).any()
    ended = (hyp.tokens == END_ID).any(-1)
    assert torch.equal(ended | (hyp.lengths == max_len), torch.ones_like(ended))
    assert (hyp.tokens == END_ID).sum(-1).le(1).all()
    sums = hyp.alphas.sum(-1)
    assert torch.allclose(sums[real], torch.ones_like(sums[real]))
    assert (sums[~real] == 0).all() and (hyp.log_probs[~real] == 0).all()
    assert (hyp.log_probs[real] <= 0).all()


def test_beam_width_one_is_greedy(decoder: Decoder) -> None:
    a = annotations(16)
    g, b = greedy(decoder, a, max_len=12), beam_search(decoder, a, k=1, max_len=12)
    assert torch.equal(g.tokens, b.tokens)
    assert torch.allclose(g.scores, b.scores) and torch.allclose(g.log_probs, b.log_probs)
    assert torch.allclose(g.alphas, b.alphas)
    assert torch.allclose(g.scores, g.log_probs.sum(-1))
    check_well_formed(g, 12)
    lengths = g.lengths.unique()
    assert len(lengths) > 2, f"fixture should give captions of varied length, got {lengths.tolist()}"


@pytest.mark.parametrize("k", [3, 5])
def test_batched_beam_equals_one_image_at_a_time(decoder: Decoder, k: int) -> None:
    a = annotations(64, seed=k)
    batched = beam_search(decoder, a, k=k, n_best=k, max_len=15)
    check_well_formed(batched, 15)
    steps = batched.tokens.shape[-1]
    for i in range(a.shape[0]):
        alone = beam_search(decoder, a[i : i + 1], k=k, n_best=k, max_len=15)
        assert torch.equal(padded(alone.tokens[0], steps), batched.tokens[i]), f"image {i}"
        assert torch.allclose(alone.scores[0], batched.scores[i])
        assert torch.equal(alone.lengths[0], batched.lengths[i])
    # Finished beams were frozen while the others went on: hypotheses of several lengths survive.
    assert (batched.lengths.max(1).values > batched.lengths.min(1).values).any()


def test_beam_scores_sum_log_probs_and_n_best_sorted_and_distinct(decoder: Decoder) -> None:
    hyp = beam_search(decoder, annotations(8), k=5, n_best=4, max_len=10)
    check_well_formed(hyp, 10)
    assert hyp.tokens.shape[1] == 4
    assert torch.allclose(hyp.scores, hyp.log_probs.sum(-1))
    assert (hyp.scores[:, :-1] >= hyp.scores[:, 1:]).all()
    for b in range(8):
        assert len({tuple(t) for t in hyp.tokens[b].tolist()}) == 4


def test_rescoring_follows_its_formula(decoder: Decoder) -> None:
    a = annotations(8, seed=3)
    raw = beam_search(decoder, a, k=4, n_best=4, max_len=10)
    hyp = beam_search(
        decoder, a, k=4, n_best=4, max_len=10, length_norm=0.7, word_reward=0.3, adaptive_reward=0.5
    )
    n = hyp.lengths.double()
    expected = (
        hyp.log_probs.sum(-1) / n**0.7
        + 0.3 * n
        + (-hyp.log_probs).clamp(max=0.5).masked_fill(hyp.tokens == PAD_ID, 0).sum(-1)
    )
    assert torch.allclose(hyp.scores, expected)
    assert (hyp.scores[:, :-1] >= hyp.scores[:, 1:]).all()
    # Same k beams, only their order changes.
    for b in range(8):
        assert {tuple(t) for t in raw.tokens[b].tolist()} == {tuple(t) for t in hyp.tokens[b].tolist()}
    assert not torch.equal(raw.tokens, hyp.tokens), "rescoring should reorder some images' beams"
    # A large word reward favours the longest surviving beam.
    long = beam_search(decoder, a, k=4, max_len=10, word_reward=50.0)
    assert torch.equal(long.lengths[:, 0], raw.lengths.max(1).values)


def test_ban_unk_and_max_len(decoder: Decoder) -> None:
    a = annotations(16, seed=4)
    assert (greedy(decoder, a, max_len=20).tokens == UNK_ID).any(), "fixture should emit <unk>"
    for hyp in (
        greedy(decoder, a, max_len=20, ban_unk=True),
        beam_search(decoder, a, k=3, n_best=3, max_len=20, ban_unk=True),
        sample(decoder, a, n=3, max_len=20, ban_unk=True, generator=torch.Generator().manual_seed(0)),
    ):
        assert not (hyp.tokens == UNK_ID).any()
        check_well_formed(hyp, 20)
    short = beam_search(decoder, a, k=3, n_best=2, max_len=2)
    assert short.tokens.shape[-1] <= 2 and (short.lengths <= 2).all()
    check_well_formed(short, 2)


def test_sampling_is_seeded_and_degenerates_to_greedy(decoder: Decoder) -> None:
    a = annotations(16, seed=5)

    def draw(seed: int, **kw: object) -> Hypotheses:
        return sample(decoder, a, max_len=12, generator=torch.Generator().manual_seed(seed), **kw)

    first, again, other = draw(0, n=4), draw(0, n=4), draw(1, n=4)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.scores, again.scores)
    assert not torch.equal(first.tokens, other.tokens)
    check_well_formed(first, 12)
    assert (first.scores[:, :-1] >= first.scores[:, 1:]).all()
    assert torch.allclose(first.scores, first.log_probs.sum(-1))
    best = greedy(decoder, a, max_len=12)
    for hyp in (draw(2, top_k=1), draw(3, top_p=1e-6)):
        assert torch.equal(hyp.tokens, best.tokens)
        assert torch.allclose(hyp.scores, best.scores)
    # A high temperature flattens the distribution: more varied captions than a low one.
    hot, cold = draw(4, n=8, temperature=3.0), draw(4, n=8, temperature=0.2)
    distinct = lambda h: sum(len({tuple(t) for t in h.tokens[b].tolist()}) for b in range(16))  # noqa: E731
    assert distinct(hot) > distinct(cold)


def test_top_k_and_top_p_restrict_the_choice(decoder: Decoder) -> None:
    a = annotations(32, seed=6)
    logp = torch.log_softmax(
        decoder.step(torch.full((32,), START_ID), decoder.init_state(a), a, decoder.project(a))[0].detach(),
        -1,
    )
    logp[:, [PAD_ID, START_ID]] = -torch.inf
    top3 = logp.topk(3, -1).indices
    first = sample(decoder, a, n=6, top_k=3, max_len=1, generator=torch.Generator().manual_seed(0)).tokens[
        ..., 0
    ]
    assert (first[..., None] == top3[:, None, :]).any(-1).all()
    # Nucleus 0.5: every drawn first word is within the smallest set holding half the mass.
    probs, order = logp.exp().sort(-1, descending=True)
    inside = (probs.cumsum(-1) - probs) < 0.5
    nucleus = [set(order[b][inside[b]].tolist()) for b in range(32)]
    first = sample(decoder, a, n=6, top_p=0.5, max_len=1, generator=torch.Generator().manual_seed(0)).tokens[
        ..., 0
    ]
    assert all(set(first[b].tolist()) <= nucleus[b] for b in range(32))


def test_temperature_scales_logits_and_decode_dispatches(decoder: Decoder) -> None:
    a = annotations(4, seed=7)
    plain = decode(decoder, a, "greedy", max_len=8)
    hot = decode(decoder, a, "greedy", max_len=8, temperature=2.0)
    assert torch.equal(plain.tokens, hot.tokens)  # argmax is unchanged by temperature...
    assert (hot.scores < plain.scores).all()  # ...but the chosen words lose probability
    calibrated = decode(decoder, a, "greedy", max_len=8, calibrated=True, fitted_temperature=2.0)
    assert torch.allclose(calibrated.scores, hot.scores)
    cfg = DecodeConfig(method="beam", k=4, n_best=2, max_len=8)
    via_config = decode(decoder, a, **vars(cfg))
    direct = beam_search(decoder, a, k=4, n_best=2, max_len=8)
    assert torch.equal(via_config.tokens, direct.tokens)
    samples = decode(decoder, a, "sample", n_best=3, max_len=8, generator=torch.Generator().manual_seed(0))
    assert samples.tokens.shape[:2] == (4, 3)


def test_hypotheses_to_words_drops_special_tokens() -> None:
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs"])
    tokens = torch.tensor([[[4, 5, 3, 6, 2, 0]], [[5, 6, 6, 6, 6, 6]]])
    zeros = torch.zeros(2, 1)
    hyp = Hypotheses(tokens, zeros, zeros, zeros, zeros)
    assert hypotheses_to_words(hyp, vocab) == [
        ["a", "dog", "runs"],
        ["dog", "runs", "runs", "runs", "runs", "runs"],
    ]
    assert hypotheses_to_words(hyp, vocab, keep_unk=True)[0] == ["a", "dog", "<unk>", "runs"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"method": "beam", "k": 0}, "decode.k=0"),
        ({"method": "beam", "k": 3, "n_best": 4}, "decode.n_best=4 exceeds decode.k=3"),
        ({"method": "greedy", "n_best": 2}, "decode.n_best=2"),
        ({"method": "beam", "temperature": 0.0}, "decode.temperature=0.0"),
        ({"method": "beam", "temperature": -1.0}, "decode.temperature=-1.0"),
        ({"method": "sample", "top_p": 0.0}, "decode.top_p=0.0"),
        ({"method": "sample", "top_p": 1.5}, "decode.top_p=1.5"),
        ({"method": "sample", "top_k": -1}, "decode.top_k=-1"),
        ({"method": "beam", "max_len": 0}, "decode.max_len=0"),
        ({"method": "beam", "length_norm": -0.5}, "decode.length_norm=-0.5"),
        ({"method": "beam", "adaptive_reward": -1.0}, "decode.adaptive_reward=-1.0"),
        ({"method": "nucleus"}, "greedy, beam, sample"),
        ({"method": "beam", "beam_size": 5}, "beam_size"),
        ({"method": "beam", "calibrated": True}, "fitted temperature"),
    ],
)
def test_bad_values_raise_one_line_config_errors(decoder: Decoder, kwargs: dict, fragment: str) -> None:
    kwargs = dict(kwargs)
    method = kwargs.pop("method")
    with pytest.raises(ConfigError, match=None) as err:
        decode(decoder, annotations(1), method, **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_direct_calls_validate_too(decoder: Decoder) -> None:
    a = annotations(1)
    with pytest.raises(ConfigError, match="decode.k=0"):
        beam_search(decoder, a, k=0)
    with pytest.raises(ConfigError, match="decode.temperature"):
        sample(decoder, a, temperature=0.0)
    with pytest.raises(ConfigError, match="exceeds the"):
        beam_search(decoder, a, k=V)
    with pytest.raises(ConfigError, match="annotations shape"):
        greedy(decoder, a[0])


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_decode_config_files_are_decode_config_fields(method: str) -> None:
    values = group_yaml(Path(__file__).parents[1] / "conf" / "decode" / f"{method}.yaml")
    assert set(values) <= {f.name for f in fields(DecodeConfig)}
    assert asdict(DecodeConfig(**values))["method"] == method
