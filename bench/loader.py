"""Train-loader throughput: 224 px images with augmentation from the image store vs cached features.

    python bench/loader.py                          # 200 shapes images x 5 captions, workers 0 and 2
    python bench/loader.py --images 100 --workers 0

Data: the shapes generator at 256 px (``captioner.data.shapes``), else random-noise JPEGs. The feature
cache is filled by a cheap stand-in encoder with MobileNetV2's output size (7x7x1280, fp16 on disk),
so (b) measures reading the cache, not running a CNN. Prints a table, writes bench/results/loader.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from captioner.data.annotations import write_annotations
from captioner.data.features import FeatureCache
from captioner.data.loaders import build_loaders
from captioner.data.pipeline import NO_AUGMENT
from captioner.data.records import MANIFEST, ImageRecord, content_hash, write_json_atomic
from captioner.data.store import ImageStoreWriter
from captioner.data.vocab import Vocab, tokenize

# The seed's frozen-encoder recipe: flip, colour jitter, noise; plus its weak crop and optical 0.2.
AUGMENT = {
    "hflip": 0.5,
    "color_jitter": 0.1,
    "noise_std": 0.05,
    "optical_strength": 0.2,
    "crop_scale_min": 0.9,
}


class StandIn(nn.Module):
    """Frozen, cheap encoder with MobileNetV2's annotation shape: (B, 7, 7, 1280)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.proj = nn.Conv2d(3, 1280, 1).requires_grad_(False)
        self.out_dim = 1280

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(images)).permute(0, 2, 3, 1)


def make_data(root: Path, images: int) -> str:
    """Prepared folder of ``images`` train + 20 val images at 256 px; returns what generated it."""
    try:
        from captioner.data.shapes import generate_dataset
    except ImportError:
        generate_dataset = None
    if generate_dataset is not None:
        generate_dataset(root, n_train=images, n_val=20, n_test=0, n_test_novel=0, image_size=256)
        return "shapes"
    rng = np.random.default_rng(0)
    records = []
    with ImageStoreWriter(root) as store:
        for i in range(images + 20):
            split = "train" if i < images else "val"
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            store.add_pil(f"img{i}", Image.fromarray(pixels))
            captions = [f"a random picture number {i % 7} with {'many ' * (k % 4)}dots" for k in range(5)]
            records.append(
                ImageRecord(f"img{i}", split, f"img{i}", captions, [tokenize(c) for c in captions])
            )
    write_annotations(root, records)
    Vocab.build(t for r in records for t in r.tokens).save(root / "vocab.json")
    write_json_atomic(
        root / MANIFEST, {"source": {"format": "random"}, "content_hash": content_hash(records)}
    )
    return "random JPEGs"


def epoch_rate(loader) -> tuple[float, int]:
    """Captions per second over one epoch (after the first batch: worker start-up excluded)."""
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["image_ids"])
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="train images (5 captions each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        source = make_data(root, args.images)
        generate_s = time.perf_counter() - start
        vocab = Vocab.load(root / "vocab.json")

        start = time.perf_counter()
        reader = FeatureCache(root, {"name": "stand-in 7x7x1280"}, image_size=224).ensure(
            StandIn(), ["train", "val"], batch_size=32, progress=False
        )
        cache_s = time.perf_counter() - start
        cache_mb = sum(f.stat().st_size for f in reader.folder.glob("*.npy")) / 2**20

        for mode in ("images 224px + augment", "cached features"):
            for workers in args.workers:
                cached = mode == "cached features"
                train, _ = build_loaders(
                    root,
                    vocab,
                    args.batch_size,
                    image_size=224,
                    num_workers=workers,
                    augment=NO_AUGMENT if cached else AUGMENT,
                    features=reader if cached else None,
                )
                rate, n = epoch_rate(train)
                rows.append(
                    {"mode": mode, "workers": workers, "captions_per_s": round(rate, 1), "captions": n}
                )
                del train

    print(f"data: {source}, {args.images} train images x 5 captions, batch {args.batch_size}")
    print(
        f"generated in {generate_s:.1f} s; feature cache built in {cache_s:.1f} s ({cache_mb:.0f} MiB fp16)"
    )
    print(f"{'mode':<26}{'workers':>8}{'captions/s':>12}")
    for r in rows:
        print(f"{r['mode']:<26}{r['workers']:>8}{r['captions_per_s']:>12.1f}")

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    result = {
        "benchmark": "loader",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "load_average": os.getloadavg(),
        "data": {"source": source, "train_images": args.images, "captions_per_image": 5, "image_side": 256},
        "batch_size": args.batch_size,
        "feature_cache": {
            "build_s": round(cache_s, 2),
            "size_mib": round(cache_mb, 1),
            "shape": [7, 7, 1280],
        },
        "rows": rows,
    }
    out = Path(__file__).parent / "results" / "loader.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
