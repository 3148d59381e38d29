"""Entry-point behaviour: the composed config on demand, one-line errors for bad overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import run_script

from captioner.cli import CONF_DIR, check_group_choices, check_value_overrides
from captioner.config import register


def test_cfg_job_prints_the_composed_config() -> None:
    proc = run_script("--cfg", "job", "trainer.epochs=3", "encoder=resnet18")
    assert proc.returncode == 0, proc.stderr
    assert "epochs: 3" in proc.stdout and "arch: resnet18" in proc.stdout
    assert "tracking_uri:" in proc.stdout and "hydra:" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["tf=nope"],
            "error: tf=nope: no such tf config; valid choices: always, exp, inv_sigmoid, linear, none",
        ),
        (
            ["trainer.epochs=ten"],
            "error: trainer.epochs=ten: Value 'ten' of type 'str' could not be converted",
        ),
        (
            ["trainer.epoch=3"],
            "error: trainer.epoch=3: Key 'epoch' not in 'TrainerConfig'; valid keys: trainer.epochs",
        ),
    ],
)
def test_bad_override_is_one_line_error_naming_the_key(args: list[str], expected: str) -> None:
    proc = run_script(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(expected)


def test_check_group_choices_lists_valid_choices(tmp_path: Path) -> None:
    (tmp_path / "tf").mkdir()
    for name in ("base_tf", "linear", "exp"):
        (tmp_path / "tf" / f"{name}.yaml").write_text("{}\n")
    assert (
        check_group_choices(["tf=nope"], tmp_path) == "tf=nope: no such tf config; valid choices: exp, linear"
    )
    for ok in (
        ["tf=linear"],
        ["tf=null"],
        ["tf=linear,exp"],
        ["tf.floor=2"],
        ["nothere=1"],
        ["--cfg", "job"],
    ):
        assert check_group_choices(ok, tmp_path) is None, ok
    assert check_group_choices(["scheduler=nope"], CONF_DIR).startswith("scheduler=nope: no such scheduler")


def test_check_value_overrides_against_the_schemas() -> None:
    register()
    assert "Key 'foo' not in 'EarlyStopConfig'" in check_value_overrides(["trainer.early_stop.foo=1"])
    assert "decoder.dropout=abc" in check_value_overrides(["decoder.dropout=abc"])
    valid = [
        "trainer.epochs=3",
        "trainer.resume=null",
        "data.prepare.n_train=5",  # free-form kwargs of prepare_dataset
        "trainer.epochs=1,2",  # a sweep: Hydra checks each value
        "hydra.run.dir=/tmp/x",
        "+trainer.new=1",
    ]
    for arg in valid:
        assert check_value_overrides([arg]) is None, arg
