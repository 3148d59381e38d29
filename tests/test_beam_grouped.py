"""Grouped decoding: beams/samples share their image's annotations, finished images leave the batch."""

from __future__ import annotations

import pytest
import torch

from captioner.data.vocab import END_ID, START_ID, UNK_ID
from captioner.decode import beam_search, greedy, sample
from captioner.model import fast_decode
from captioner.model.decoder import Decoder

V, D, L = 24, 8, 6


def make_decoder(context: str = "soft") -> Decoder:
    """Float64 with peaky words and a likely <end>, as in test_decode: captions end at varied lengths."""
    torch.manual_seed(0)
    dec = Decoder(
        vocab_size=V,
        encoder_dim=D,
        embed_dim=12,
        hidden_dim=12,
        attention_dim=10,
        dropout=0.0,
        beta_gate="scalar",
        context=context,
    ).double()
    with torch.no_grad():
        dec.embedding.weight.mul_(10.0)
        dec.L_o.weight.mul_(4.0)
        dec.L_o.bias[END_ID] += 2.0
        dec.L_o.bias[UNK_ID] += 1.0
    return dec.eval()


def annotations(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, L, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("context", ["soft", "mean", "blind"])
def test_grouped_step_equals_the_step_on_repeated_annotations(context: str, fast: bool) -> None:
    """n rows per image broadcast against its annotations; ``fast`` (Eq. 4 via a sigmoid) agrees in float64."""
    dec, a, n = make_decoder(context), annotations(4), 3
    projected = dec.project(a)
    state = dec.init_state(a).map(
        lambda s: s.repeat_interleave(n, dim=1) + 0.1 * torch.randn_like(s.repeat_interleave(n, dim=1))
    )
    words = torch.randint(4, V, (4 * n,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        grouped = dec.step(words, state, a, projected, fast=fast)
        repeated = dec.step(words, state, a.repeat_interleave(n, 0), projected.repeat_interleave(n, 0))
    for got, want in zip(grouped[:2] + tuple(grouped[2]), repeated[:2] + tuple(repeated[2]), strict=True):
        if want is None:  # no coverage
            assert got is None
            continue
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_one_row_per_image_keeps_the_training_attention_exactly() -> None:
    """n=1 (training, greedy, export) runs Eq. 4-6 as written: tanh energies, bit for bit."""
    dec = make_decoder()
    a, h = annotations(5), torch.randn(5, 12, dtype=torch.float64)
    att = dec.attention
    with torch.no_grad():
        context, alpha = att(a, att.project(a), h)
        energy = att.score(torch.tanh(att.project(a) + att.hidden_proj(h).unsqueeze(1))).squeeze(-1)
    assert torch.equal(alpha, energy.softmax(-1))
    assert torch.equal(context, torch.bmm(alpha.unsqueeze(1), a).squeeze(1))


def test_attention_rows_must_be_a_multiple_of_the_images() -> None:
    dec = make_decoder()
    a = annotations(4)
    with pytest.raises(ValueError, match="rows must be a multiple"):
        dec.attention(a, dec.project(a), torch.zeros(6, 12, dtype=torch.float64))


def test_fast_attention_is_inference_only() -> None:
    dec = make_decoder()
    a = annotations(2)
    with pytest.raises(ValueError, match="inference_mode"):
        dec.attention(a, dec.project(a), torch.zeros(4, 12, dtype=torch.float64), fast=True)


def test_finished_images_leave_the_batch_and_results_stay_per_image() -> None:
    dec, a, k = make_decoder(), annotations(16, seed=3), 4
    rows: list[int] = []
    attend = dec.attend

    def counting_attend(feats, projected, state, emb, **kwargs):  # noqa: ANN001, ANN202, ANN003 - a spy
        assert emb.shape[0] % feats.shape[0] == 0 and len(projected) == feats.shape[0]
        rows.append(emb.shape[0])
        return attend(feats, projected, state, emb, **kwargs)

    dec.attend = counting_attend  # every step attends once, folded (this decoder folds) or not
    try:
        batched = beam_search(dec, a, k=k, n_best=k, max_len=15)
    finally:
        del dec.attend
    assert rows[0] == 16 and rows[1] == 16 * k  # one row per image until the first word splits beams
    assert all(r % k == 0 for r in rows[1:]) and rows[1:] == sorted(rows[1:], reverse=True)
    assert rows[-1] < rows[1], "some images should finish early and leave the batch"
    # Images still decoding at step t are those whose own decode ran more than t steps.
    steps_alone = [
        beam_search(dec, a[i : i + 1], k=k, n_best=k, max_len=15).lengths[0].max().item() for i in range(16)
    ]
    assert rows[1:] == [k * sum(s > t for s in steps_alone) for t in range(1, len(rows))]
    for i in range(16):
        alone = beam_search(dec, a[i : i + 1], k=k, n_best=k, max_len=15)
        t = alone.tokens.shape[-1]
        assert (
            torch.equal(alone.tokens[0], batched.tokens[i, :, :t]) and (batched.tokens[i, :, t:] == 0).all()
        )
        # Same decisions; numbers equal to rounding (GEMMs of other batch shapes sum in other orders).
        torch.testing.assert_close(alone.scores[0], batched.scores[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(alone.alphas[0], batched.alphas[i, :, :t], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("context", ["mean", "blind"])
def test_controls_decode_with_several_rows_per_image(context: str) -> None:
    dec, a = make_decoder(context), annotations(6, seed=4)
    best = greedy(dec, a, max_len=10)
    two = sample(dec, a, n=2, top_k=1, max_len=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(two.tokens[:, 0], best.tokens[:, 0]) and torch.equal(
        two.tokens[:, 1], best.tokens[:, 0]
    )
    beams = beam_search(dec, a, k=3, n_best=3, max_len=10)
    assert beams.tokens.shape[:2] == (6, 3) and (beams.tokens[..., 0] != START_ID).all()
    assert torch.allclose(beams.alphas.sum(-1)[beams.tokens != 0], torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("deep_output", [True, False])
@pytest.mark.parametrize("beta_gate", ["scalar", "none"])
def test_folded_context_step_equals_the_plain_step(deep_output: bool, beta_gate: str) -> None:
    """Beams fold W z_t into sum_i alpha_ti (W a_i): the same logits, attention and state."""
    torch.manual_seed(0)
    kwargs = dict(vocab_size=20, encoder_dim=16, embed_dim=6, hidden_dim=7, attention_dim=5, dropout=0.0)
    dec = Decoder(**kwargs, deep_output=deep_output, beta_gate=beta_gate, attend_word=True, coverage=True)
    dec = dec.double().eval()
    a = torch.rand(3, 4, 16, dtype=torch.float64)
    words = torch.tensor([4, 5, 6, 7, 8, 9])
    with torch.inference_mode():
        assert fast_decode.can_fold(dec, 4)
        plain = dec.project(a)
        folded = fast_decode.fold(dec, a, plain)
        assert torch.equal(folded.projected, plain)
        assert folded.per_location.shape == (3, 4, 4 * 7 + (6 if deep_output else 0))
        state = dec.init_state(a).repeat(2)
        for _ in range(3):  # a few steps, so coverage and the state carry through
            logits, alpha, next_state = dec.step(words, state, a, plain)
            logits_f, alpha_f, state_f = fast_decode.folded_step(dec, words, state, a, folded, fast=True)
            for got, want in zip((logits_f, alpha_f, *state_f), (logits, alpha, *next_state), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)  # float64: rounding only
            state, words = next_state, logits.argmax(-1)
        # No fold where it would not be exact or not cheaper.
        assert not fast_decode.can_fold(Decoder(**kwargs, beta_gate="channel").eval(), 4)
        assert not fast_decode.can_fold(dec, 32)  # L >= D
        assert not fast_decode.can_fold(dec.train(), 4)  # the written-out step has no dropout
    assert not fast_decode.can_fold(dec.eval(), 4)  # nor under autograd (training)
