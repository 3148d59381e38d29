"""Which encoder layer still knows each object's colour and shape? A linear probe per layer on shapes.

    make bench-probe                               # mobilenet_v2, default layers, 1500 train / 300 val images
    python bench/probe_layers.py --layers features.13 features.18 --train-images 500

For every object of a prepared shapes set (``python -m captioner.prepare``, or any ``train.py`` run on
``data=shapes``), the frozen ImageNet encoder's feature at the object's centre (bilinear, from each
layer's map) feeds a logistic regression for its shape and one for its colour, fitted on train images
and scored on val. High accuracy means the annotations at that layer carry what a caption must name;
this chose ``encoder.layer=features.13`` for ``experiment=quality``. Writes bench/results/probe_layers.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import Run, print_table
from torchvision.models.feature_extraction import create_feature_extractor

from captioner.data.annotations import read_annotations
from captioner.data.store import ImageStore
from captioner.errors import CaptionerError, DataError
from captioner.model.encoder import IMAGENET_MEAN, IMAGENET_STD, load_classifier

DEFAULT_LAYERS = [
    "features.6",
    "features.10",
    "features.13",
    "features.14.conv.0",
    "features.17",
    "features.18",
]


def centre_features(
    extractor: torch.nn.Module, store: ImageStore, records: list, layers: list[str], image_size: int
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Per object: each layer's feature at its centre, and its shape and colour names."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    feats: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    shapes, colours = [], []
    for i in range(0, len(records), 50):
        batch = records[i : i + 50]
        x = torch.stack([store.tensor(r.id) for r in batch]).float() / 255
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            maps = extractor((x - mean) / std)
        for j, rec in enumerate(batch):
            width, height = rec.meta["image_size"]
            for obj in rec.meta["objects"]:
                cx, cy = obj["center"]
                grid = torch.tensor([[[[cx / width * 2 - 1, cy / height * 2 - 1]]]])
                for layer in layers:
                    feats[layer].append(
                        F.grid_sample(maps[layer][j : j + 1], grid, align_corners=False).flatten()
                    )
                shapes.append(obj["shape"])
                colours.append(obj["color"])
    return {k: torch.stack(v) for k, v in feats.items()}, shapes, colours


def probe_accuracy(x_train: torch.Tensor, y_train: list[str], x_val: torch.Tensor, y_val: list[str]) -> float:
    """Val accuracy of a standardised logistic regression (full-batch Adam, 300 steps, seeded)."""
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    yt = torch.tensor([index[c] for c in y_train])
    yv = torch.tensor([index.get(c, -1) for c in y_val])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_val = (x_train - mu) / sd, (x_val - mu) / sd
    torch.manual_seed(0)
    linear = torch.nn.Linear(x_train.shape[1], len(classes))
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(linear(x_train), yt).backward()
        opt.step()
    with torch.no_grad():
        return float((linear(x_val).argmax(1) == yv).float().mean())


def main() -> None:
    """Encode, probe every layer, print the table, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data/shapes", help="a prepared shapes folder")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-images", type=int, default=1500)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run("probe_layers")
    try:
        root = Path(args.data_root)
        if not (root / "manifest.json").is_file():
            raise DataError(
                f"{root} is not a prepared dataset; run `python -m captioner.prepare data=shapes` "
                "(or any train.py run on data=shapes) first, or pass --data-root"
            )
        records = read_annotations(root)
        if not all("objects" in (r.meta or {}) for r in records[:1]):
            raise DataError(f"{root} has no object ground truth; the probe needs a shapes dataset")
        train = [r for r in records if r.split == "train"][: args.train_images]
        val = [r for r in records if r.split == "val"][: args.val_images]
        extractor = create_feature_extractor(
            load_classifier(args.arch, pretrained=True).eval(), {layer: layer for layer in args.layers}
        )
        store = ImageStore(root)
        start = time.perf_counter()
        ft, st, ct = centre_features(extractor, store, train, args.layers, args.image_size)
        fv, sv, cv = centre_features(extractor, store, val, args.layers, args.image_size)
        encode_s = time.perf_counter() - start
    except (CaptionerError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    rows = []
    for layer in args.layers:
        rows.append(
            {
                "layer": layer,
                "channels": int(ft[layer].shape[1]),
                "shape_acc": round(probe_accuracy(ft[layer], st, fv[layer], sv), 4),
                "colour_acc": round(probe_accuracy(ft[layer], ct, fv[layer], cv), 4),
            }
        )
    print(
        f"{args.arch} ImageNet weights, {args.image_size} px; {len(st)} train / {len(sv)} val objects "
        f"({len(train)} / {len(val)} images), encoded in {encode_s:.0f} s"
    )
    print_table(
        rows,
        [
            ("layer", "layer"),
            ("channels", "channels"),
            ("shape_acc", "shape acc"),
            ("colour_acc", "colour acc"),
        ],
    )
    run.write(
        {
            "setup": {
                "data_root": str(root),
                "arch": args.arch,
                "image_size": args.image_size,
                "train_objects": len(st),
                "val_objects": len(sv),
                "probe": "feature at the object's centre (bilinear), standardised, logistic regression",
            },
            "rows": rows,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
