"""After the last epoch: reload the best weights, score the test splits, draw attention figures, show captions."""

from __future__ import annotations

import torch

from captioner.errors import SaveError
from captioner.evaluation import SplitResult, evaluate_split
from captioner.evaluation.report import sample_lines
from captioner.progress import log_line
from captioner.runtime import checkpoint as ckpt
from captioner.train.run import TrainingRun


def final_evaluation(run: TrainingRun) -> dict[str, dict[str, float]]:
    """Test metrics of the best weights per split (rank 0; ``{}`` elsewhere), logged with figures and captions.

    The metrics are logged at the run's optimiser step, so a run resumed with more epochs logs its new test
    metrics beside the earlier ones instead of over them."""
    from captioner.viz import attention_figure

    cfg, model, data, records, run_dir = run.cfg, run.model, run.data, run.records, run.run_dir
    device, dist_info, tracker = run.device, run.dist_info, run.tracker

    best = run_dir / "best.pt"
    if dist_info.enabled:  # rank 0 may still be writing best.pt: every rank must load the same weights
        torch.distributed.barrier()
    if best.exists():
        model.load_state_dict(ckpt.load_checkpoint(best, map_location=device)["model"])
    results: dict[str, SplitResult] = {}
    for split in ("test", "test_novel"):
        if split in data.eval:
            results[split] = evaluate_split(
                model,
                data.eval[split],
                run.vocab,
                records,
                cfg.decode,
                device,
                dist_info,
                run.autocast,
                metrics=tuple(cfg.trainer.test_metrics),
            )
    if not dist_info.is_main:
        return {}
    final = {split: r.metrics for split, r in results.items()}
    tracker.log_metrics(
        {f"{s}.{k}": v for s, m in final.items() for k, v in m.items()}, step=run.progress.step
    )
    shown = next(iter(results.values()), None)
    if shown is not None and shown.alphas:
        figures = run_dir / "figures"
        try:
            for image_id in sorted(shown.alphas)[: cfg.trainer.figures]:
                words = shown.captions[image_id]
                path = attention_figure(
                    data.image(image_id),
                    words,
                    shown.alphas[image_id],
                    shown.grid,
                    figures / f"{image_id}.png",
                    title=" ".join(words),
                )
                tracker.log_artifact(path, "figures")
        except SaveError as err:  # figures illustrate; the metrics computed above still get written
            log_line(f"attention figures skipped: {err}")
        first = sorted(shown.alphas)[0]
        if (figures / f"{first}.png").exists():
            log_line(f"attention figure: {figures / (first + '.png')}")
    if shown is not None:  # a few captions next to a reference: is the model right, not just scored?
        for line in sample_lines(shown, records):
            log_line(line)
    for split, m in final.items():
        log_line(f"{split}: " + " ".join(f"{k}={v:.4g}" for k, v in m.items()))
    log_line(f"checkpoints and metrics in {run_dir}")
    return final
