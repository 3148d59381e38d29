"""Score a checkpoint's test split, recording which image ids this rank decoded (for test_eval_path.py).

`python tests/ddp_eval_script.py CHECKPOINT OUT` (one process) or under `torchrun --nproc_per_node=2`;
writes OUT/rank<r>.json = {"decoded": [image ids], "metrics": {...} (rank 0 only)}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import captioner.evaluation.checkpoint as evaluation
from captioner.model.load import load_captioner
from captioner.runtime.distributed import cleanup, init_distributed


def main(checkpoint: str, out: str) -> None:
    torch.set_num_threads(1)
    dist_info = init_distributed("cpu")
    decoded: list[str] = []
    build = evaluation.build_eval_loader

    def recording_loader(*args, **kwargs):
        loader = build(*args, **kwargs)

        class Recording:
            def __iter__(self):
                for batch in loader:
                    decoded.extend(batch["image_ids"])
                    yield batch

        return Recording()

    evaluation.build_eval_loader = recording_loader  # the real loader, observed
    device = torch.device("cpu")
    loaded = load_captioner(checkpoint, device)
    root = evaluation.resolve_data_root(loaded, None, dist_info)
    decode = {"method": "greedy", "max_len": 20}
    results = evaluation.evaluate_checkpoint(
        loaded, root, ["test"], decode, device, metrics=("bleu", "rouge_l", "cider_d"), dist_info=dist_info
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    record = {"decoded": decoded, "metrics": results["test"].metrics}
    (Path(out) / f"rank{dist_info.rank}.json").write_text(json.dumps(record))
    cleanup(dist_info)


if __name__ == "__main__":
    main(*sys.argv[1:3])
