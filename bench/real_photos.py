"""Real-photo quality: train the seed's best setup on Flickr8k or COCO and score the Karpathy test split.

    python bench/real_photos.py flickr8k [--epochs 30] [-- extra train.py overrides]

Needs the photos (a user's or a GPU machine): `python -m captioner.data.download flickr8k --dest
data/raw` first, and the data config pointed at them. Without them it stops at the prepare step with
its one-line message naming what is missing. Writes bench/results/real_<dataset>.json with the SAT
paper's rows beside ours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import Run, print_table

REPO = Path(__file__).resolve().parents[1]
# Xu et al. 2015, Table 1 (BLEU-1..4, METEOR), for the printed comparison.
PAPER = {
    "flickr8k": {"soft": (67.0, 44.8, 29.9, 19.5, 18.93), "hard": (67.0, 45.7, 31.4, 21.3, 20.30)},
    "coco": {"soft": (70.7, 49.2, 34.4, 24.3, 23.90), "hard": (71.8, 50.4, 35.7, 25.0, 23.04)},
}
KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor")


def step(what: str, cmd: list[str]) -> None:
    """Run one command of the pipeline; on failure show its last line (our one-line errors) and stop."""
    print(f"[{what}] {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        sys.exit(f"bench/real_photos: the {what} step failed: {last}")


def main() -> None:
    """Prepare -> train (experiment=seed_best) -> evaluate on test -> table against the paper."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=sorted(PAPER))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = p.parse_args()
    run = Run(f"real_{args.dataset}")
    root = REPO / "data" / args.dataset
    manifest = root / "manifest.json"
    if not manifest.exists() or not json.loads(manifest.read_text()).get("images"):
        step("prepare", [sys.executable, "-m", "captioner.prepare", f"data={args.dataset}"])
    run_dir = f"runs/real_{args.dataset}"
    step(
        "train",
        [
            sys.executable,
            "train.py",
            "experiment=seed_best",
            f"data={args.dataset}",
            f"trainer.epochs={args.epochs}",
            f"hydra.run.dir={run_dir}",
            *args.overrides,
        ],
    )
    out = f"{run_dir}/eval_test"
    step(
        "evaluate",
        [
            sys.executable,
            "evaluate.py",
            f"checkpoint={run_dir}/best.pt",
            "split=test",
            "decode=beam",
            "decode.k=3",
            f"out={out}",
        ],
    )
    ours = json.loads((REPO / out / "metrics.json").read_text())["test"]
    rows = [{"model": "captioner (seed_best)", **{k: ours.get(k) for k in KEYS}}]
    rows += [
        {"model": f"SAT paper, {kind}", **dict(zip(KEYS, vals))} for kind, vals in PAPER[args.dataset].items()
    ]
    print_table(rows, [("model", "model"), *((k, k) for k in KEYS)], title=f"{args.dataset} Karpathy test")
    run.write({"dataset": args.dataset, "checkpoint": f"{run_dir}/best.pt", "rows": rows})


if __name__ == "__main__":
    main()
