"""What a scale=cpu sweep run costs, and what each lever on that cost buys (issue 12's 45-min budget).

    python bench/cpu_scale_cost.py            # every lever, 1 thread (as the sweeps run), ~3 min idle
    python bench/cpu_scale_cost.py --quick    # 2 steps of each, no compile or METEOR (plumbing check)

One train step of the sweeps' model at scale=cpu (decoder `small` + attend_word + coverage over a
cached 10x10x96 features.13 map, V=54, batch 32, smoothing 0.1, AdamW) on random annotations and
captions of 8-20 tokens, timed against the levers that would make a group cheaper:

    base         the scale as committed: 160 px -> 10x10 map, batch 32, fp32
    map_8x8      128 px -> 8x8 map (the train-step half of the lever; quality: see the README's notes)
    batch_16     batch 16: twice the optimiser steps per caption
    batch_64     batch 64
    bf16         torch.autocast(cpu, bfloat16): this Xeon has AMX-BF16
    compiled     torch.compile of the attention module (its warm-up compile is not timed)
    lstm_cell    the decoder's one-step LSTM through torch.lstm_cell (ATen's matmuls and fused gates)
                 instead of nn.LSTM, which on CPU runs every step as a oneDNN RNN primitive

Each lever on the base's shapes (same batch, same map) also says whether its weights after the
warm-up steps equal the base's bit for bit: a lever that changes them changes every committed
per-seed number, so taking it means re-running every group.

Variants run interleaved per round and the best round is kept (the VM is shared). A second table
times the final evaluation's text metrics on 600 generated captions (test + test_novel at scale=cpu)
with and without METEOR, the Java metric trainer.test_metrics leaves out at this scale.
Prints the tables, writes bench/results/cpu_scale_cost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import time
from collections.abc import Callable

import torch
from common import Run, add_quick_and_out, best_time, print_table
from torch import Tensor, nn
from train_speed import make_batch

from captioner.config import TEST_METRICS
from captioner.metrics import evaluate_captions, meteor_unavailable
from captioner.model.decoder import Decoder
from captioner.model.loss import caption_loss

VOCAB, ENCODER_DIM = 54, 96  # the shapes vocabulary, features.13's channels
LEVERS = {  # name: (locations, batch, precision, compiled attention, LSTM step)
    "base": (100, 32, "fp32", False, "nn.LSTM"),
    "map_8x8": (64, 32, "fp32", False, "nn.LSTM"),
    "batch_16": (100, 16, "fp32", False, "nn.LSTM"),
    "batch_64": (100, 64, "fp32", False, "nn.LSTM"),
    "bf16": (100, 32, "bf16", False, "nn.LSTM"),
    "compiled": (100, 32, "fp32", True, "nn.LSTM"),
    "lstm_cell": (100, 32, "fp32", False, "lstm_cell"),
}
WORDS = "a an the large small red green blue yellow orange purple square circle triangle star cross".split()


def lstm_cell_forward(
    lstm: nn.LSTM, x: Tensor, hx: tuple[Tensor, Tensor]
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``lstm(x, hx)`` for one step (x: (1,B,I)) of a one-layer LSTM, through torch.lstm_cell."""
    h, c = torch.lstm_cell(x[0], (hx[0][0], hx[1][0]), *lstm._flat_weights)
    return h.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0))


def train_step(
    locations: int, batch: int, precision: str, compiled: bool, lstm_step: str, steps: int
) -> tuple[Callable[[], None], nn.Module]:
    """``steps`` training steps of the cpu-scale model on one fixed random batch, as a timed function,
    and the model it trains."""
    torch.manual_seed(0)
    decoder = Decoder(
        VOCAB, ENCODER_DIM, 128, 128, 128, dropout=0.5, attend_word=True, coverage=True
    ).train()  # conf/decoder/small.yaml + the scale's attention options
    if compiled:
        decoder.attention = torch.compile(decoder.attention)
    if lstm_step == "lstm_cell":  # on this module only: an instance attribute shadows nn.LSTM.forward
        decoder.lstm.forward = functools.partial(lstm_cell_forward, decoder.lstm)
    annotations, captions, _ = make_batch(batch, locations, ENCODER_DIM, VOCAB, 8, 20)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )

    def run() -> None:
        for _ in range(steps):
            with autocast():
                loss = caption_loss(decoder(annotations, captions), captions, smoothing=0.1)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run, decoder


def same_weights(base: nn.Module, other: nn.Module) -> bool:
    """Whether two trained models' weights are bitwise equal."""
    a, b = base.state_dict(), other.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metric_seconds(n: int, metrics: tuple[str, ...]) -> float:
    """Wall seconds to score ``n`` generated captions against 5 references each with ``metrics``."""
    rng = random.Random(0)
    caption = lambda: [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]  # noqa: E731
    hypotheses = [caption() for _ in range(n)]
    references = [[caption() for _ in range(5)] for _ in range(n)]
    start = time.perf_counter()
    evaluate_captions(hypotheses, references, metrics)
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark, print the tables, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--steps", type=int, default=8, help="train steps per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="1: as each of the sweep's 2 workers runs")
    parser.add_argument("--captions", type=int, default=600, help="captions scored (test + test_novel)")
    add_quick_and_out(parser, "cpu_scale_cost", "2 steps, 1 round, no compile or METEOR")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run("cpu_scale_cost")
    levers = [k for k in args.levers if not (args.quick and LEVERS[k][3])]
    if args.quick:
        args.steps, args.repeats, args.captions = 2, 1, 20

    built = {name: train_step(*LEVERS[name], steps=args.steps) for name in levers}
    steps = {name: run_steps for name, (run_steps, _) in built.items()}
    for name in levers:
        steps[name]()  # warm-up: oneDNN primitives, the allocator, torch.compile
    # A separate base model, trained as many steps from the same seed and batch: does each lever end
    # with its weights (the base itself must: a determinism check)? None: another batch or map, so
    # other data and other numbers anyway.
    reference_steps, reference = train_step(*LEVERS["base"], steps=args.steps)
    reference_steps()
    same = {
        name: same_weights(reference, built[name][1]) if LEVERS[name][:2] == LEVERS["base"][:2] else None
        for name in levers
    }
    best = {name: float("inf") for name in levers}
    for _ in range(args.repeats):
        for name in levers:
            best[name] = min(best[name], best_time(steps[name], repeats=1, warmup=0))
    rows = []
    for name in levers:
        locations, batch, precision, compiled, lstm_step = LEVERS[name]
        per_caption = best[name] / (args.steps * batch)
        rows.append(
            {
                "lever": name,
                "locations": locations,
                "batch": batch,
                "precision": precision,
                "compiled_attention": compiled,
                "lstm_step": lstm_step,
                "weights_equal_base": same.get(name),
                "ms_per_caption": round(1000 * per_caption, 3),
                "captions_per_s": round(1 / per_caption, 1),
                "cost_vs_base": round(per_caption / (best["base"] / (args.steps * LEVERS["base"][1])), 2)
                if "base" in best
                else None,
            }
        )
    print_table(
        rows,
        [
            ("lever", "lever"),
            ("locations", "L"),
            ("batch", "batch"),
            ("precision", "precision"),
            ("captions_per_s", "captions/s"),
            ("cost_vs_base", "cost vs base"),
            ("weights_equal_base", "same numbers as base (blank: other data)"),
        ],
        title=f"train step at scale=cpu, {args.threads} thread(s), best of {args.repeats} x {args.steps} steps:",
    )
    metric_rows = []
    with_meteor = TEST_METRICS  # train.py's default final evaluation
    without = tuple(m for m in TEST_METRICS if m != "meteor")  # scale=cpu's trainer.test_metrics
    for label, metrics in (("without METEOR", without), ("with METEOR", with_meteor)):
        if "meteor" in metrics and args.quick:
            continue  # a Java start-up: not a plumbing check
        if "meteor" in metrics and meteor_unavailable():
            print(meteor_unavailable())
            continue
        seconds = metric_seconds(args.captions, metrics)
        metric_rows.append({"metrics": label, "captions": args.captions, "seconds": round(seconds, 2)})
    print_table(
        metric_rows,
        [("metrics", "final evaluation's text metrics"), ("captions", "captions"), ("seconds", "wall s")],
        title="\nscoring the final evaluation's captions:",
    )
    if args.quick and args.out is None:
        return  # a plumbing check must not overwrite the measured record
    run.write(
        {
            "setup": {
                "model": "decoder small + attend_word + coverage, D=96, V=54, smoothing 0.1, AdamW",
                "caption_tokens": [8, 20],
                "steps_per_round": args.steps,
                "repeats": args.repeats,
                "threads": args.threads,
            },
            "rows": rows,
            "metrics": metric_rows,
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
