"""Teacher-forcing schedules: epsilon at the epochs the seed's formulas pin down."""

import math
from pathlib import Path

import pytest
from conftest import group_yaml
from omegaconf import OmegaConf

from captioner.errors import ConfigError
from captioner.train.teacher_forcing import SCHEDULES, build_schedule

E = 10  # total epochs


def test_always_and_none_are_constant() -> None:
    for epoch in (0, 3.5, E):
        assert build_schedule("always", E).epsilon(epoch) == 1.0
        assert build_schedule("none", E).epsilon(epoch) == 0.0


@pytest.mark.parametrize("k", [0.5, 1.0, 1.2])
def test_inv_sigmoid_crosses_half_at_k_times_epochs(k: float) -> None:
    schedule = build_schedule("inv_sigmoid", E, k=k)
    assert schedule.epsilon(0) == pytest.approx(0.999, abs=1e-12)
    assert schedule.epsilon(k * E) == 0.5
    assert schedule.epsilon(2 * k * E) == pytest.approx(0.001, abs=1e-12)
    # Bengio et al.'s form c / (c + exp(e / s)) with c = 999, s = k*E / ln(c)
    e = 0.37 * E
    assert schedule.epsilon(e) == pytest.approx(999 / (999 + math.exp(e * math.log(999) / (k * E))))
    values = [schedule.epsilon(e / 4) for e in range(4 * E + 1)]
    assert all(a > b for a, b in zip(values, values[1:]))  # fractional epochs, strictly decreasing
    assert build_schedule("inv_sigmoid", E, k=k).epsilon(1e6) == 0.0  # no overflow far past the end


def test_inv_sigmoid_k1_is_half_at_last_epoch_and_respects_floor() -> None:
    assert build_schedule("inv_sigmoid", E, k=1.0).epsilon(E) == 0.5
    assert build_schedule("inv_sigmoid", E, k=0.5, floor=0.2).epsilon(E) == 0.2


def test_linear_reaches_floor_at_k_times_epochs() -> None:
    schedule = build_schedule("linear", E, k=0.5, floor=0.25)
    assert schedule.epsilon(0) == 1.0
    assert schedule.epsilon(0.25 * E) == pytest.approx(0.625)
    assert schedule.epsilon(0.5 * E) == pytest.approx(0.25)
    assert schedule.epsilon(E) == 0.25


def test_exp_is_gamma_power_epoch_with_floor() -> None:
    schedule = build_schedule("exp", E, gamma=0.8, floor=0.3)
    assert schedule.epsilon(0) == 1.0
    assert schedule.epsilon(2.5) == pytest.approx(0.8**2.5)
    assert schedule.epsilon(E) == 0.3  # 0.8**10 = 0.107 < floor


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "cosine"}, "always, none, linear, exp, inv_sigmoid"),
        ({"name": "linear", "floor": 1.0}, "tf.floor=1.0"),
        ({"name": "linear", "floor": -0.1}, "tf.floor=-0.1"),
        ({"name": "inv_sigmoid", "k": 0}, "tf.k=0"),
        ({"name": "exp", "gamma": 1.0}, "tf.gamma=1.0"),
        ({"name": "exp", "epochs": 0}, "tf.epochs=0"),
    ],
)
def test_bad_values_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_schedule(**{"epochs": E, **kwargs})


def test_yaml_files_build_every_schedule() -> None:
    conf = Path(__file__).resolve().parents[1] / "conf" / "tf"
    names = set()
    for path in sorted(conf.glob("*.yaml")):
        cfg = OmegaConf.merge({"trainer": {"epochs": E}}, {"tf": group_yaml(path)})
        schedule = build_schedule(**cfg.tf)
        assert schedule.name == path.stem and schedule.epochs == E
        names.add(schedule.name)
    assert names == set(SCHEDULES)
