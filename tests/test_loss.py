"""Caption loss (cross-entropy + doubly stochastic attention) and temperature calibration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captioner.errors import ConfigError
from captioner.model import DecoderOutput, caption_loss, fit_temperature
from captioner.model.calibration import calibration_nll


def output_and_captions() -> tuple[DecoderOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    captions = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 4, 2]])
    logits = torch.randn(2, 5, 10, generator=g)
    alphas = torch.full((2, 5, 4), 0.25)
    return DecoderOutput(logits=logits, alphas=alphas), captions


def test_cross_entropy_counts_only_real_targets() -> None:
    out, captions = output_and_captions()
    total, parts = caption_loss(out, captions, att_gamma=0.0)
    targets = captions[:, 1:]
    keep = targets != 0
    manual = -F.log_softmax(out.logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)[keep].mean()
    assert torch.isclose(total, manual) and torch.isclose(parts["nll"], manual)
    # Changing logits at pad positions leaves the loss unchanged.
    out.logits[0, 3:] += 100.0
    assert torch.isclose(caption_loss(out, captions, att_gamma=0.0)[0], manual)


def test_label_smoothing_raises_xent_but_not_nll() -> None:
    out, captions = output_and_captions()
    _, plain = caption_loss(out, captions, smoothing=0.0)
    _, smooth = caption_loss(out, captions, smoothing=0.2)
    assert torch.isclose(plain["nll"], smooth["nll"]) and not torch.isclose(plain["xent"], smooth["xent"])


def test_doubly_stochastic_term_sums_over_real_steps() -> None:
    out, captions = output_and_captions()
    # Real steps: 3 for the first caption, 5 for the second; alpha = 1/4 everywhere.
    per_location = torch.tensor([(1 - 3 * 0.25) ** 2, (1 - 5 * 0.25) ** 2])
    _, summed = caption_loss(out, captions, att_reduction="sum")
    _, meaned = caption_loss(out, captions, att_reduction="mean")
    assert torch.isclose(summed["att"], (4 * per_location).mean())
    assert torch.isclose(meaned["att"], per_location.mean())
    total, parts = caption_loss(out, captions, att_gamma=2.0)
    assert torch.isclose(total, parts["xent"] + 2.0 * parts["att"])


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"att_reduction": "max"}, "sum, mean"),
        ({"smoothing": 1.0}, "smoothing=1.0"),
        ({"att_gamma": -1}, "att_gamma"),
    ],
)
def test_bad_loss_config(kwargs: dict, needle: str) -> None:
    out, captions = output_and_captions()
    with pytest.raises(ConfigError, match=needle):
        caption_loss(out, captions, **kwargs)


def test_fit_temperature_recovers_overconfidence() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4000, 12, generator=g) * 2
    base[:, 0] = -30.0  # the pad id is (practically) never a true target
    targets = torch.multinomial(base.softmax(-1), 1, generator=g).squeeze(-1)
    overconfident = base * 3.0
    temperature = fit_temperature(overconfident, targets)
    # Pad targets are ignored: extra pad rows with wild logits do not move the fit.
    padded = fit_temperature(
        torch.cat([overconfident, 50 * torch.randn(500, 12, generator=g)]),
        torch.cat([targets, torch.zeros(500, dtype=torch.long)]),
    )
    assert abs(padded - temperature) < 1e-3
    assert 2.6 < temperature < 3.4
    assert calibration_nll(overconfident, targets, temperature) < calibration_nll(overconfident, targets)
