"""Hard (stochastic) attention, paper Sec. 4.1: sampling follows alpha, REINFORCE's sign and baseline,
every decode method, and the expectation mode equal to soft attention."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2

from captioner.decode import beam_search, greedy, sample, sample_with_grad
from captioner.model import fast_decode
from captioner.model.decoder import Decoder
from captioner.model.hard_attention import location_loss, select_locations

VOCAB, D, L = 12, 24, 9


def hard_decoder(**kwargs: object) -> Decoder:
    torch.manual_seed(0)
    return Decoder(VOCAB, D, 16, 16, 16, dropout=0.0, attention="hard", **kwargs)


def test_sampled_location_follows_alpha() -> None:
    torch.manual_seed(0)
    alpha = torch.tensor([0.02, 0.08, 0.1, 0.3, 0.5])
    draws = 20_000
    weights, locations = select_locations(alpha.expand(draws, -1).clone(), "sample")
    assert torch.equal(weights.sum(-1), torch.ones(draws))  # one location per row
    counts = weights.sum(0)
    expected = alpha * draws
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(0.999, df=len(alpha) - 1), (counts, expected)
    chosen = weights.argmax(-1)
    assert torch.allclose(locations.log_prob, alpha.log()[chosen])
    assert torch.allclose(locations.entropy, -(alpha * alpha.log()).sum().expand(draws))


def _one_token_logits(log_likelihoods: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,1,V) and captions (B,2) whose single target word has log p rising with ``log_likelihoods``."""
    batch = log_likelihoods.shape[0]
    logits = torch.zeros(batch, 1, 4)
    logits[:, 0, 3] = log_likelihoods
    captions = torch.tensor([[1, 3]]).expand(batch, -1)
    return logits, captions


def test_reinforce_pushes_towards_locations_with_above_baseline_likelihood() -> None:
    theta = torch.zeros(3, requires_grad=True)
    log_alpha = theta.log_softmax(0)
    # Caption 0 looked at location 0 and explains its word well; caption 1 looked at 1 and did not.
    logits, captions = _one_token_logits(torch.tensor([5.0, -5.0]))
    loss, parts = location_loss(
        logits, captions, log_alpha[[0, 1]][:, None], torch.zeros(2, 1), torch.zeros(2), entropy=0.0
    )
    assert float(loss.detach()) == 0.0  # the surrogate's value is 0; only its gradient matters
    loss.backward()
    assert theta.grad[0] < 0 < theta.grad[1]  # descent raises p(location 0), lowers p(location 1)
    assert float(parts["location_baseline"]) == pytest.approx(float(parts["location_reward"]))


def test_entropy_bonus_flattens_alpha() -> None:
    theta = torch.tensor([2.0, 0.0, 0.0], requires_grad=True)
    alpha = theta.softmax(0)
    entropy = -(alpha * alpha.log()).sum()
    logits, captions = _one_token_logits(torch.zeros(1))
    loss, _ = location_loss(
        logits, captions, torch.zeros(1, 1), entropy.view(1, 1), torch.tensor([0.0, 1.0]), reinforce=0.0
    )
    loss.backward()
    assert theta.grad[0] > 0  # descent lowers the peaked location's score


def _gradients(baseline: torch.Tensor, decay: float, steps: int = 1500) -> torch.Tensor:
    """REINFORCE gradients on a 4-arm toy (one draw per step): reward log p(y|s) = s - 20."""
    torch.manual_seed(0)
    theta = torch.zeros(4, requires_grad=True)
    grads = []
    for _ in range(steps):
        log_alpha = theta.log_softmax(0)
        s = int(torch.multinomial(log_alpha.exp().detach(), 1))
        # With logits (0,0,0,x) the target's log p is x - log(e^x + 3): x = s - 20 ranks the arms.
        logits, captions = _one_token_logits(torch.tensor([float(s) - 20.0]))
        loss, _ = location_loss(
            logits, captions, log_alpha[s].view(1, 1), torch.zeros(1, 1), baseline, entropy=0.0, decay=decay
        )
        (grad,) = torch.autograd.grad(loss, theta)
        grads.append(grad)
    return torch.stack(grads)


def test_moving_average_baseline_reduces_variance_and_keeps_the_mean() -> None:
    plain = _gradients(torch.tensor([0.0, 1.0]), decay=1.0)  # b stays 0: plain REINFORCE
    averaged = _gradients(torch.zeros(2), decay=0.9)  # b_k = 0.9 b_{k-1} + 0.1 log p(y|s_k)
    assert averaged.var(0).sum() < 0.05 * plain.var(0).sum()
    # Both estimate the true gradient of -E[log p(y|s)] (the baseline only uses past draws).
    x = torch.arange(4.0) - 20.0
    reward = x - torch.log(x.exp() + 3)
    alpha = torch.full((4,), 0.25)
    true = -alpha * (reward - (alpha * reward).sum())
    for grads in (plain, averaged):
        stderr = grads.std(0) / len(grads) ** 0.5
        assert bool(((grads.mean(0) - true).abs() < 4 * stderr + 1e-3).all())
    assert averaged.mean(0).argmin() == 3  # descent raises the best arm


@pytest.mark.parametrize("how", ["argmax", "expectation"])
def test_every_decode_method_runs_with_hard_attention(how: str) -> None:
    decoder = hard_decoder(hard_inference=how).eval()
    annotations = torch.randn(3, L, D)
    results = {
        "greedy": greedy(decoder, annotations, max_len=6),
        "beam": beam_search(decoder, annotations, k=3, n_best=2, max_len=6),
        "sample": sample(decoder, annotations, n=2, max_len=6, generator=torch.Generator().manual_seed(0)),
    }
    for name, hyp in results.items():
        n = 1 if name == "greedy" else 2
        assert hyp.tokens.shape[:2] == (3, n), name
        assert hyp.alphas.shape[:2] == (3, n) and hyp.alphas.shape[-1] == L, name
        real = hyp.alphas[hyp.tokens != 0]  # the attention of every emitted word
        assert torch.allclose(real.sum(-1), torch.ones(len(real)), atol=1e-5), name
        one_hot = bool((real.max(-1).values == 1).all())
        assert one_hot == (how == "argmax"), name  # figures show the location looked at


def test_argmax_beam_folded_equals_unfolded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = hard_decoder(hard_inference="argmax").eval()
    annotations = torch.randn(2, L, D)
    with torch.no_grad():
        # beam k > 1 folds W a per location: the one-hot alpha picks W a_s
        assert fast_decode.can_fold(decoder, L)
    folded = beam_search(decoder, annotations, k=3, max_len=6)
    monkeypatch.setattr(fast_decode, "can_fold", lambda decoder, num_locations: False)
    unfolded = beam_search(decoder, annotations, k=3, max_len=6)
    assert torch.equal(folded.tokens, unfolded.tokens)
    assert torch.equal(folded.alphas, unfolded.alphas)


def test_expectation_mode_is_soft_attention() -> None:
    hard = hard_decoder(hard_inference="expectation").eval()
    torch.manual_seed(0)
    soft = Decoder(VOCAB, D, 16, 16, 16, dropout=0.0).eval()
    soft.load_state_dict(hard.state_dict(), strict=False)  # all but the REINFORCE baseline buffer
    annotations = torch.randn(2, L, D)
    assert torch.equal(
        greedy(hard, annotations, max_len=6).tokens, greedy(soft, annotations, max_len=6).tokens
    )


def test_training_forward_samples_or_uses_the_expectation() -> None:
    annotations, captions = torch.randn(4, L, D), torch.randint(4, VOCAB, (4, 5))
    sampled = hard_decoder(hard_expected_prob=0.0).train()(annotations, captions)
    assert sampled.location_log_probs.shape == sampled.location_entropy.shape == (4, 4)
    assert bool((sampled.alphas.max(-1).values == 1).all())
    expected = hard_decoder(hard_expected_prob=1.0).train()(annotations, captions)
    assert expected.location_log_probs is None and bool((expected.alphas.max(-1).values < 1).all())


def test_sample_with_grad_adds_location_log_probs() -> None:
    decoder = hard_decoder().train()
    rollout = sample_with_grad(decoder, torch.randn(2, L, D), n=3, max_len=5)
    assert rollout.tokens.shape == rollout.log_probs.shape == rollout.mask.shape
    assert rollout.log_probs.requires_grad
    # each real step's log-prob holds log p(word) + log p(location) <= each of them
    assert bool((rollout.log_probs[rollout.mask] < 0).all())
    (-rollout.log_probs.sum()).backward()
    assert decoder.attention.score.weight.grad is not None


def test_bad_hard_settings_are_one_line_errors() -> None:
    from captioner.errors import ConfigError

    with pytest.raises(ConfigError, match="decoder.attention='firm'"):
        Decoder(VOCAB, D, attention="firm")
    with pytest.raises(ConfigError, match="needs decoder.context=soft"):
        Decoder(VOCAB, D, attention="hard", context="mean")
    with pytest.raises(ConfigError, match="hard_inference"):
        Decoder(VOCAB, D, attention="hard", hard_inference="mode")
