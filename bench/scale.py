"""The real-format data path at growing size: prepare, first batch, loader throughput, feature cache.

    python bench/scale.py                                  # images at 1k/2k/4k, annotations only up to 123k
    python bench/scale.py --image-sizes 1000 --index-sizes 8000 --keep /tmp/scale   # quick look

Data: a synthetic COCO in Karpathy's ``dataset_coco.json`` layout (5 captions of 8-16 Zipf-drawn words
per image; 5k val and 5k test at full size) and 640x480 JPEGs (64 distinct pictures, each file its
own copy). Sizes with images run every stage on a real image-mode prepare. Index sizes prepare the
annotations only, then get a store whose index names every image but whose bytes are the 64 pictures
(the loader cannot tell), so start-up is measured on the full 123,287-image index without 123k files.

Each stage runs in its own process; the parent samples the resident memory of that process and its
children (DataLoader and prepare workers) every 50 ms: RSS summed (shared pages counted once per
process, as ``ps`` adds them up) and PSS (shared pages split between processes; what they really use).
The feature cache is filled by a cheap stand-in encoder with MobileNetV2's output (7x7x1280, fp16),
so it measures the pipeline around the CNN, whose own cost is per image. Loader rates use the
default augmentations of ``conf/data/coco.yaml``; "img/CPU-s" (0 workers: the main process does
everything) is the per-core rate, which depends less on how busy the shared machine was. Growth exponent: slope of
log(time) against log(N) (1 = linear). Prints a table, writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import Run, print_table
from PIL import Image, ImageDraw

COCO_AUGMENT = {
    "hflip": 0.5,
    "color_jitter": 0.1,
    "noise_std": 0.0,
    "optical_strength": 0.0,
    "crop_scale_min": 0.9,
}
BATCH = 64
PICTURES = 64
COCO_IMAGES = 123_287
RESULT = "RESULT "  # a stage's last stdout line: RESULT {json}


# --- synthetic data ---------------------------------------------------------------------------------


def pictures(n: int = PICTURES, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``n`` distinct JPEGs: a colour gradient with a few filled shapes, like a simple photo."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x = np.linspace(0, 1, size[0])[None, :, None]
        y = np.linspace(0, 1, size[1])[:, None, None]
        base = rng.uniform(0, 255, 3) * x + rng.uniform(0, 255, 3) * y
        image = Image.fromarray(np.clip(base / 2 + 60, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, size[0] - 60), rng.integers(0, size[1] - 60)
            box = (x0, y0, x0 + rng.integers(30, 300), y0 + rng.integers(30, 200))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def karpathy_json(path: Path, n: int) -> list[str]:
    """Write a Karpathy-layout dataset_coco.json of ``n`` images; returns their relative paths."""
    rng = np.random.default_rng(n)
    words = np.array([f"w{i}" for i in range(10_000)])
    held = min(5000, n // 20)  # Karpathy's 5k val and 5k test at full size
    images, files = [], []
    for i in range(n):
        split = "val" if i < held else "test" if i < 2 * held else "restval" if i % 4 == 0 else "train"
        folder = "val2014" if split in ("val", "test", "restval") else "train2014"
        name = f"COCO_{folder}_{i:012d}.jpg"
        lengths = rng.integers(8, 17, 5)
        ids = np.minimum(rng.zipf(1.3, int(lengths.sum())) - 1, len(words) - 1)
        cuts = np.cumsum(lengths)[:-1]
        sentences = [{"raw": " ".join(words[s]) + " ."} for s in np.split(ids, cuts)]
        images.append({"filepath": folder, "filename": name, "split": split, "sentences": sentences})
        files.append(f"{folder}/{name}")
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return files


def write_images(root: Path, files: list[str], jpegs: list[bytes]) -> None:
    """One JPEG file per image (cycling through the distinct pictures)."""
    for k, file in enumerate(files):
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).write_bytes(jpegs[k % len(jpegs)])


def index_only_store(out: Path, jpegs: list[bytes]) -> None:
    """An image store whose index names every prepared image but holds the few distinct pictures."""
    from captioner.data.records import ANNOTATIONS, IMAGES_BIN, IMAGES_INDEX

    small = []
    for data in jpegs:
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((341, 256), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        small.append(buf.getvalue())
    offsets = np.cumsum([0] + [len(b) for b in small])
    (out / IMAGES_BIN).write_bytes(b"".join(small))
    ids = [r["id"] for r in json.loads((out / ANNOTATIONS).read_text())["images"]]
    index = {
        i: [int(offsets[k % len(small)]), len(small[k % len(small)]), 341, 256] for k, i in enumerate(ids)
    }
    (out / IMAGES_INDEX).write_text(json.dumps(index))


# --- stages (each in its own process; only APIs that main had too, so `before` can run the same) -----


def stage_prepare(args: argparse.Namespace) -> dict:
    """Prepare the Karpathy json (images resized into the store, or annotations only)."""
    from captioner.data.prepare import prepare_dataset

    images = args.images == "yes"
    start = time.perf_counter()
    prepare_dataset(
        args.out,
        "karpathy",
        annotations=args.work / "dataset_coco.json",
        image_root=args.work / "images" if images else None,
        images=images,
        workers=len(os.sched_getaffinity(0)),
    )
    return {"time_s": time.perf_counter() - start}


def _loaders(root: Path, workers: int):
    from captioner.data.loaders import build_loaders
    from captioner.data.vocab import Vocab

    vocab = Vocab.load(root / "vocab.json")
    return build_loaders(root, vocab, BATCH, image_size=224, num_workers=workers, augment=COCO_AUGMENT)


def stage_first_batch(args: argparse.Namespace) -> dict:
    """What a training start does before step 1 (data side): vocab, annotations, loaders, one batch."""
    start = time.perf_counter()
    import captioner.data.loaders  # noqa: F401 - imports apart: on a busy machine they take seconds
    from captioner.data.store import ImageStore

    imports = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    train, _ = _loaders(args.out, 2)
    ImageStore(args.out)  # the loop keeps one for figures
    batch = next(iter(train))
    return {
        "time_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,  # the main process's share; the busy machine inflates time_s
        "import_s": imports,
        "batch": list(batch["images"].shape),
    }


def stage_loader(args: argparse.Namespace) -> dict:
    """Train-loader images/s at 0, 1 and 2 workers (first batch excluded); CPU ms per image at 0 workers.

    Only at 0 workers is the CPU time exactly the loader's (workers prefetch batches nobody takes).
    """
    rates = {}
    for workers in (0, 1, 2):
        train, _ = _loaders(args.out, workers)
        it = iter(train)
        next(it)
        cpu0 = time.process_time()
        start, n = time.perf_counter(), 0
        for _ in range(args.batches):
            n += len(next(it)["images"])
        wall = time.perf_counter() - start
        rates[workers] = {"img_s": n / wall}
        if workers == 0:
            rates[workers]["cpu_ms_per_img"] = 1000 * (time.process_time() - cpu0) / n
        del it, train
    return {"time_s": None, "rates": rates}


def stage_cache(args: argparse.Namespace) -> dict:
    """Build the frozen-encoder feature cache of every split with the loader's 2 workers."""
    import torch
    from torch import nn

    from captioner.data.features import FeatureCache
    from captioner.data.records import read_manifest

    class StandIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.proj = nn.Conv2d(3, 1280, 1).requires_grad_(False)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.proj(self.pool(images)).permute(0, 2, 3, 1)

    torch.manual_seed(0)
    splits = [s for s, c in read_manifest(args.out)["splits"].items() if c["images"]]
    cache = FeatureCache(args.out, {"name": "stand-in", "finetune": False}, 224, num_workers=2)
    start = time.perf_counter()
    cache.ensure(StandIn(), splits, batch_size=BATCH, progress=False)
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in cache.folder.glob("*.npy"))
    shutil.rmtree(cache.folder)
    return {"time_s": elapsed, "cache_gib": size / 2**30}


STAGES = {
    "prepare": stage_prepare,
    "first_batch": stage_first_batch,
    "loader": stage_loader,
    "cache": stage_cache,
}


# --- the parent: run each stage in a process, sample the tree's memory ------------------------------


def _tree(root_pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += parents.get(pid, [])
    return pids


def _memory_mb(pids: list[int]) -> tuple[float, float]:
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def measure(stage: str, work: Path, out: Path, **extra: str) -> dict:
    """Run one stage in a child process; its result plus wall time and the tree's peak RSS/PSS."""
    cmd = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--out", str(out)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0.0
    while proc.poll() is None:
        rss, pss = _memory_mb(_tree(proc.pid))
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed ({proc.returncode}): {stdout[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1].removeprefix(RESULT))
    return {"stage": stage, "wall_s": wall, "peak_rss_mb": peak_rss, "peak_pss_mb": peak_pss, **result}


def exponent(rows: list[dict], stage: str, key: str = "time_s") -> float | None:
    """Slope of log(key) against log(N) over the rows of one stage (1 = linear)."""
    points = [(r["n"], r[key]) for r in rows if r["stage"] == stage and r.get(key)]
    if len(points) < 2:
        return None
    n, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return round(float(np.polyfit(n, t, 1)[0]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-sizes", type=int, nargs="*", default=[1000, 2000, 4000])
    parser.add_argument("--index-sizes", type=int, nargs="*", default=[16_000, 40_000, COCO_IMAGES])
    parser.add_argument("--batches", type=int, default=15, help="loader batches timed per worker count")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    parser.add_argument("--label", default="after", help="key of this run in the JSON (e.g. before)")
    parser.add_argument("--out-json", type=Path, help="default bench/results/scale.json")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--images", choices=["yes", "no"], default="yes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # a child: run one stage, print its result
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        print(RESULT + json.dumps(STAGES[args.stage](args)), flush=True)
        return

    run = Run("scale")
    jpegs = pictures()
    base = args.keep or Path(tempfile.mkdtemp(prefix="captioner-scale-"))
    rows: list[dict] = []
    try:
        for n, images in [*((n, True) for n in args.image_sizes), *((n, False) for n in args.index_sizes)]:
            work = base / f"{n}-{'images' if images else 'index'}"
            shutil.rmtree(work, ignore_errors=True)
            (work / "images").mkdir(parents=True)
            files = karpathy_json(work / "dataset_coco.json", n)
            if images:
                write_images(work / "images", files, jpegs)
            out = work / "prepared"
            kind = "images" if images else "index"
            done = [measure("prepare", work, out, images="yes" if images else "no")]
            if not images:
                index_only_store(out, jpegs)
            done.append(measure("first_batch", work, out))
            if images:
                done.append(measure("loader", work, out, batches=args.batches))
                done.append(measure("cache", work, out))
            for row in done:
                row.update(n=n, kind=kind)
                rates = row.pop("rates", None)
                if rates:
                    for w, r in rates.items():
                        row[f"img_s_w{w}"] = r["img_s"]
                        if "cpu_ms_per_img" in r:
                            row[f"cpu_ms_w{w}"] = r["cpu_ms_per_img"]
                            row["img_per_cpu_s"] = 1000 / r["cpu_ms_per_img"]
                print(json.dumps(row), flush=True)
            rows += done
            if not args.keep:
                shutil.rmtree(work)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    growth = {
        "prepare_images": exponent([r for r in rows if r["kind"] == "images"], "prepare"),
        "prepare_index": exponent([r for r in rows if r["kind"] == "index"], "prepare"),
        "first_batch": exponent(rows, "first_batch"),
        "cache": exponent(rows, "cache"),
    }
    columns = [
        ("stage", "stage"),
        ("kind", "data"),
        ("n", "N"),
        ("time_s", "time s"),
        ("cpu_s", "CPU s"),
        ("import_s", "imports s"),
        ("wall_s", "process s"),
        ("peak_rss_mb", "tree RSS MB"),
        ("peak_pss_mb", "tree PSS MB"),
        ("img_s_w0", "img/s w0"),
        ("img_s_w1", "img/s w1"),
        ("img_s_w2", "img/s w2"),
        ("img_per_cpu_s", "img/CPU-s w0"),
    ]
    print_table(rows, columns, title=f"data path at scale ({args.label}); load average {os.getloadavg()}")
    print("growth exponents (log time vs log N):", growth)
    run.write(
        {"label": args.label, "rows": rows, "growth_exponent": growth}, key=args.label, out=args.out_json
    )


if __name__ == "__main__":
    main()
