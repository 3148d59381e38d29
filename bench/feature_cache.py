"""Epoch time training on cached frozen-encoder features vs running the encoder on images every step.

    python bench/feature_cache.py                  # 200 shapes train images x 5 captions at 224 px
    python bench/feature_cache.py --images 50      # quicker
    python bench/feature_cache.py --quick          # 16 images, a few seconds, writes nothing

Same model both ways: frozen MobileNetV2 (ImageNet weights when ``make weights`` put them in
$TORCH_HOME, else random: the speed is the same) + the ``decoder/sat`` config's Decoder, built by
``captioner.model.build.build_model``. Same data: the generated shapes set through the project's
``build_loaders`` (no augmentation either way, so only the encoder differs). Each train step is what
the training loop does on CPU: forward (teacher forcing 1.0), caption_loss, backward, gradient-norm
clip, AdamW step. The one-off cache build (``FeatureCache.ensure``) is timed separately and not
counted in the cached epoch. Prints a table, writes bench/results/feature_cache.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import Run, print_table

from captioner.data.features import FeatureCache
from captioner.data.loaders import build_loaders
from captioner.data.pipeline import NO_AUGMENT
from captioner.data.shapes import generate_dataset
from captioner.data.transforms import as_float
from captioner.data.vocab import Vocab
from captioner.model.build import build_model
from captioner.model.loss import caption_loss
from captioner.runtime.hub_weights import pretrained_weights
from captioner.train.optim import build_optimizer, clip_gradients

# conf/decoder/sat.yaml (the default decoder), as build_model receives it.
DECODER = dict(
    embed_dim=256,
    hidden_dim=256,
    attention_dim=256,
    num_layers=1,
    dropout=0.5,
    deep_output=True,
    beta_gate="scalar",
    tie_weights=False,
    embed_max_norm=None,
    pretrained_embeddings=None,
    freeze_embeddings=False,
)


def weights_available(arch: str = "mobilenet_v2") -> bool:
    """Whether ``pretrained=true`` would load offline (the file is already in $TORCH_HOME)."""
    file = pretrained_weights(arch).url.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / file).is_file()


def train_epoch(model: torch.nn.Module, loader, optimizer, cached: bool) -> tuple[float, int]:
    """Seconds and captions for one pass over ``loader``, one optimiser step per batch."""
    model.train()
    key = "features" if cached else "images"
    captions_seen = 0
    start = time.perf_counter()
    for batch in loader:
        captions = batch["captions"]
        out = model(as_float(batch[key]), captions, teacher_forcing=1.0, features=cached)
        loss, _ = caption_loss(out, captions, smoothing=0.1)
        loss.backward()
        clip_gradients(model.parameters(), "norm", 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        captions_seen += captions.shape[0]
    return time.perf_counter() - start, captions_seen


def warm_up(model: torch.nn.Module, loader, cached: bool) -> None:
    """One forward/backward on the first batch, untimed: allocator and oneDNN primitive caches."""
    batch = next(iter(loader))
    key = "features" if cached else "images"
    out = model(batch[key].float(), batch["captions"], features=cached)
    caption_loss(out, batch["captions"])[0].backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    """Run the benchmark, print the table, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="train images (5 captions each)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (2 shared cores: 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="16 images, writes nothing: a plumbing check")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/feature_cache.json)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.image_size, args.batch_size = 16, 64, 16
    torch.set_num_threads(args.threads)
    run = Run("feature_cache")
    pretrained = weights_available()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate_dataset(
            root, n_train=args.images, n_val=0, n_test=0, n_test_novel=0, image_size=args.image_size
        )
        generate_s = time.perf_counter() - start
        vocab = Vocab.load(root / "vocab.json")
        encoder_cfg = {"arch": "mobilenet_v2", "pretrained": pretrained}
        loader_kw = dict(
            batch_size=args.batch_size,
            image_size=args.image_size,
            num_workers=args.workers,
            augment=NO_AUGMENT,
            eval_splits=[],
        )

        torch.manual_seed(0)
        model = build_model(encoder_cfg, DECODER, vocab)
        optimizer = build_optimizer(model)
        images_loader, _ = build_loaders(root, vocab, **loader_kw)
        warm_up(model, images_loader, cached=False)
        images_s, n_captions = train_epoch(model, images_loader, optimizer, cached=False)

        start = time.perf_counter()
        cache = FeatureCache(root, encoder_cfg, image_size=args.image_size, num_workers=args.workers)
        reader = cache.ensure(model.encoder, ["train"], batch_size=64, progress=False)
        build_s = time.perf_counter() - start
        cache_mib = sum(f.stat().st_size for f in reader.folder.glob("*.npy")) / 2**20

        torch.manual_seed(0)
        model = build_model(encoder_cfg, DECODER, vocab)  # fresh weights and optimiser: same work
        optimizer = build_optimizer(model)
        cached_loader, _ = build_loaders(root, vocab, features=reader, **loader_kw)
        warm_up(model, cached_loader, cached=True)
        cached_s, n_cached = train_epoch(model, cached_loader, optimizer, cached=True)

    saved = images_s - cached_s
    rows = [
        {"mode": "images, encoder every step", "epoch_s": images_s, "captions_per_s": n_captions / images_s},
        {"mode": "cached features", "epoch_s": cached_s, "captions_per_s": n_cached / cached_s},
    ]
    speedup = images_s / cached_s
    print(
        f"shapes: {args.images} train images x 5 captions at {args.image_size} px, generated in {generate_s:.1f} s; "
        f"batch {args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads; "
        f"mobilenet_v2 frozen ({'ImageNet' if pretrained else 'random'} weights), decoder/sat (V={len(vocab)})"
    )
    print_table(rows, [("mode", "mode"), ("epoch_s", "epoch s"), ("captions_per_s", "captions/s")])
    print(
        f"speed-up {speedup:.1f}x; cache build {build_s:.1f} s ({cache_mib:.1f} MiB fp16), "
        f"paid back after {build_s / saved if saved > 0 else float('inf'):.2f} epochs"
    )
    if args.quick and args.out is None:
        return  # a plumbing check must not overwrite the measured record
    run.write(
        {
            "setup": {
                "data": "shapes (captioner.data.shapes.generate_dataset)",
                "train_images": args.images,
                "captions": n_captions,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "encoder": {**encoder_cfg, "frozen": True},
                "decoder": DECODER,
                "vocab_size": len(vocab),
                "step": "forward (tf 1.0) + caption_loss + backward + clip_grad_norm 5 + AdamW",
                "augment": "none (both modes)",
            },
            "rows": [
                {**r, "epoch_s": round(r["epoch_s"], 2), "captions_per_s": round(r["captions_per_s"], 1)}
                for r in rows
            ],
            "speedup": round(speedup, 2),
            "cache_build_s": round(build_s, 2),
            "cache_mib": round(cache_mib, 1),
            "break_even_epochs": round(build_s / saved, 3) if saved > 0 else None,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
