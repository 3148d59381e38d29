"""Batched beam search vs. one image at a time, same function, same random SAT decoder, on CPU.

Also times the common tutorial's per-image beam search (sgrvinod's ``caption_image_beam_search``,
``ReferenceDecoder.beam_search_one``: per-step re-projection of the annotations, shrinking k) with the
same weights, where it can mirror the decoder: that is what batching replaces in most SAT code.

    python bench/beam.py                       # both model sizes, 64 images, k=5
    python bench/beam.py --sizes sat --images 32
    python bench/beam.py --device cuda         # adds a "cuda" record beside the "cpu" one
    python bench/beam.py --trained none        # skip the trained-model row

Prints a table and writes the run's record under its device key ("cpu", "cuda") of
bench/results/beam.json, keeping the other devices' records. Weights are random, so captions rarely end early:
both paths run all ``max_len`` steps, which keeps the comparison like for like (the main table).
When ``--trained`` (default runs/quality/soft/best.pt) and its data's cached test features
exist, an extra row decodes them with that trained decoder: captions end at different lengths,
so it shows what dropping finished images from the batch buys.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from reference_decoder import ReferenceDecoder

from captioner.data.vocab import PAD_ID
from captioner.decode import beam_search
from captioner.model.decoder import Decoder

ROOT = Path(__file__).resolve().parent.parent
# The paper-sized model (MobileNetV2-like 1280-d annotations on a 7x7 grid) and a small one.
SIZES = {
    "sat": dict(
        encoder_dim=1280, locations=49, hidden_dim=512, embed_dim=512, attention_dim=512, vocab_size=3000
    ),
    "small": dict(
        encoder_dim=256, locations=49, hidden_dim=256, embed_dim=256, attention_dim=256, vocab_size=3000
    ),
}


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def random_decoder(name: str, images: int, device: torch.device) -> tuple[str, Decoder, torch.Tensor]:
    """A randomly initialised SAT decoder of size ``name`` and random annotations for it."""
    size = SIZES[name]
    torch.manual_seed(0)
    decoder = Decoder(
        vocab_size=size["vocab_size"],
        encoder_dim=size["encoder_dim"],
        embed_dim=size["embed_dim"],
        hidden_dim=size["hidden_dim"],
        attention_dim=size["attention_dim"],
        num_layers=1,
        dropout=0.0,
        deep_output=True,
        beta_gate="scalar",
    )
    annotations = torch.rand(images, size["locations"], size["encoder_dim"])
    model = (
        f"{name}: D={size['encoder_dim']} L={size['locations']} H={size['hidden_dim']} V={size['vocab_size']}"
    )
    return model, decoder.to(device).eval(), annotations.to(device)


def trained_decoder(
    checkpoint: Path, images: int, device: torch.device
) -> tuple[str, Decoder, torch.Tensor] | None:
    """The checkpoint's decoder and the first test images' cached features, or None if either is missing."""
    if not checkpoint.is_file():
        return None
    from captioner.model.load import load_captioner

    loaded = load_captioner(checkpoint)
    root = ROOT / loaded.config["data"]["root"]
    # The feature cache folder written for this checkpoint's (frozen) encoder config.
    for meta in sorted(root.glob("features/*/meta.json")):
        info = json.loads(meta.read_text())
        if info.get("encoder") == loaded.config["encoder"] and "test" in info.get("splits", []):
            features = np.load(meta.parent / "test.npy", mmap_mode="r")[:images]
            annotations = torch.from_numpy(features.astype(np.float32)).flatten(1, 2)
            break
    else:
        return None
    decoder = loaded.model.decoder
    model = (
        f"trained: {checkpoint.parent.name} D={decoder.encoder_dim} L={annotations.shape[1]} "
        f"H={decoder.hidden_dim} V={decoder.vocab_size}"
    )
    return model, decoder.to(device).eval(), annotations.to(device)


def tutorial_reference(decoder: Decoder) -> ReferenceDecoder | None:
    """The tutorial design with ``decoder``'s weights, where it can mirror it (paper attention only)."""
    mirrorable = decoder.context == "soft" and not decoder.attend_word and not decoder.coverage
    try:
        return (
            ReferenceDecoder.from_decoder(decoder).to(next(decoder.parameters()).device).eval()
            if mirrorable
            else None
        )
    except ValueError:  # not a 1-layer deep-output decoder with a beta gate
        return None


def bench_decoder(
    model: str,
    decoder: Decoder,
    annotations: torch.Tensor,
    k: int,
    max_len: int,
    repeats: int,
    device: torch.device,
) -> list[dict]:
    """Time batched and per-image beam search of ``annotations`` with ``decoder``."""
    images = annotations.shape[0]
    beam_search(decoder, annotations[:2], k=k, max_len=3)  # warm-up: allocator, kernels

    def batched():
        return beam_search(decoder, annotations, k=k, max_len=max_len)

    def per_image():
        return [beam_search(decoder, annotations[i : i + 1], k=k, max_len=max_len) for i in range(images)]

    # Best of `repeats`: the machine is shared, the minimum is the least disturbed run.
    t_batched, hyp = min((timed(batched, device) for _ in range(repeats)), key=lambda r: r[0])
    t_single, singles = min((timed(per_image, device) for _ in range(repeats)), key=lambda r: r[0])
    same = sum(
        torch.equal(s.tokens[0, 0], hyp.tokens[i, 0, : s.tokens.shape[-1]]) for i, s in enumerate(singles)
    )
    timings = [("per-image", t_single), ("batched", t_batched)]
    tutorial = tutorial_reference(decoder)
    if tutorial is not None:

        def tutorial_per_image():
            return [tutorial.beam_search_one(annotations[i : i + 1], k, max_len) for i in range(images)]

        t_tutorial, captions = min(
            (timed(tutorial_per_image, device) for _ in range(repeats)), key=lambda r: r[0]
        )
        timings.insert(0, ("tutorial per-image", t_tutorial))
        best = [[w for w in row.tolist() if w != PAD_ID] for row in hyp.tokens[:, 0]]
        same_tutorial = sum(words == best[i] for i, (words, _) in enumerate(captions))
    rows = []
    for method, seconds in timings:
        rows.append(
            {
                "model": model,
                "method": method,
                "images": images,
                "k": k,
                "max_len": max_len,
                "steps": int(hyp.tokens.shape[-1]),
                "mean_length": round(float(hyp.lengths[:, 0].float().mean()), 2),
                "seconds": round(seconds, 4),
                "images_per_s": round(images / seconds, 2),
                "speedup": round(t_single / seconds, 2),
                "speedup_vs_tutorial": round(t_tutorial / seconds, 2) if tutorial is not None else None,
                "same_best_caption": same if method == "batched" else None,
                "same_as_batched": same_tutorial if method == "tutorial per-image" else None,
            }
        )
    return rows


def main() -> None:
    """Run the benchmark, print the table, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--trained",
        default="runs/quality/soft/best.pt",
        help="checkpoint (relative to the repo) for the trained-model row; 'none' skips it",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "beam.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    setups = [random_decoder(name, args.images, device) for name in args.sizes]
    if args.trained != "none":
        trained = trained_decoder(ROOT / args.trained, args.images, device)
        if trained is None:
            print(f"no trained row: {args.trained} or its cached test features are missing")
        else:
            setups.append(trained)
    rows = [
        r
        for model, decoder, annotations in setups
        for r in bench_decoder(model, decoder, annotations, args.k, args.max_len, args.repeats, device)
    ]
    print(
        f"{'model':<48} {'method':<18} {'images':>6} {'steps':>5} {'mean len':>8} {'seconds':>8} "
        f"{'images/s':>9} {'vs per-image':>12} {'vs tutorial':>11}"
    )
    for r in rows:
        tutorial = f"{r['speedup_vs_tutorial']:>10.2f}x" if r["speedup_vs_tutorial"] else f"{'':>11}"
        print(
            f"{r['model']:<48} {r['method']:<18} {r['images']:>6} {r['steps']:>5} {r['mean_length']:>8.2f} "
            f"{r['seconds']:>8.3f} {r['images_per_s']:>9.2f} {r['speedup']:>11.2f}x {tutorial}"
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = {
        "benchmark": "beam search, batched over images and beams vs one image per call (same function), "
        "and vs the tutorial's per-image beam search with the same weights (bench/reference_decoder.py)",
        "commit": commit or None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        # Shared machine: the 1/5/15-minute load average tells how disturbed the timings may be.
        "load": os.getloadavg(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(out.read_text()) if out.is_file() else {}
    records[device.type] = record
    out.write_text(json.dumps(records, indent=2) + "\n")
    print(f"wrote {out} [{device.type}]")


if __name__ == "__main__":
    main()
