"""One evaluation path: the loop's test metrics equal evaluate.py's on the same checkpoint, and under
torchrun every test image is decoded by exactly one rank.

Training scores its test split with the best weights, on the fp16 feature cache when the encoder is
frozen (or fine-tuned from a block: the cache holds the frozen prefix, the tail runs on it) and on
freshly encoded images when it is fine-tuned whole. evaluate.py goes through the same
loaders, the same cache, the same precision and the same batch size (``captioner.evaluation``), so
the numbers are equal, not merely close. Before this path was shared, evaluate.py encoded a frozen
encoder's images in fp32 while training scored fp16 cached features; the two could differ in any
metric whenever a rounded feature changed a decoded word.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import test_train
from test_train import ENV, REPO, run_train

shapes_data = test_train.shapes_data  # the session's generated data (a fixture)
DDP_SCRIPT = Path(__file__).with_name("ddp_eval_script.py")


def _nan_as_null(metrics: dict) -> dict:
    # Undefined metrics (no object mentioned): the loop's metrics.json keeps NaN, evaluate.py writes null.
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def _evaluate_cli(checkpoint: Path, out: Path) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"checkpoint={checkpoint}",
            "split=test",
            "decode=greedy",  # what the training run decoded with (test_train.fast_overrides)
            f"out={out}",
            "logger=none",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "encoder",
    [
        pytest.param([], id="frozen-cached"),
        pytest.param(["encoder.finetune=true"], id="finetuned-uncached"),
        # the fine-tuned tail (stage4, conv5) runs on the cached stage3 maps, in training and here
        pytest.param(["encoder.finetune=true", "encoder.finetune_from=stage4"], id="partial-cached"),
    ],
)
def test_loop_and_evaluate_py_give_equal_test_metrics(shapes_data: Path, tmp_path: Path, encoder: list[str]):
    run = tmp_path / "run"
    proc = run_train(shapes_data, run, *encoder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cached = "training on cached frozen-encoder features" in proc.stdout
    assert cached == ("encoder.finetune=true" not in encoder or any("finetune_from" in o for o in encoder))
    loop = _nan_as_null(json.loads((run / "metrics.json").read_text())["test"])
    evaluated = _evaluate_cli(run / "best.pt", tmp_path / "eval")["test"]
    assert evaluated == loop  # every metric, bit for bit (JSON floats round-trip exactly)


@pytest.mark.slow
def test_ddp_evaluation_decodes_each_image_once_and_scores_like_one_rank(shapes_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = run_train(shapes_data, run, "trainer.epochs=1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, str(DDP_SCRIPT), str(run / "best.pt"), str(single)],
        cwd=REPO, env=ENV, check=True, timeout=300,
    )  # fmt: skip
    two = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(DDP_SCRIPT),
        str(run / "best.pt"),
        str(two),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one = json.loads((single / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    decoded = [r["decoded"] for r in ranks]
    assert len(one["decoded"]) == test_train.SMALL["n_test"] == len(set(one["decoded"]))
    assert decoded[0] and decoded[1]  # both ranks worked
    assert not set(decoded[0]) & set(decoded[1])  # no image twice
    assert sorted(decoded[0] + decoded[1]) == sorted(one["decoded"])  # every image once
    assert ranks[1]["metrics"] == {}  # scored once, on rank 0
    assert ranks[0]["metrics"] == one["metrics"]
