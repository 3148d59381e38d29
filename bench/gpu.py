"""GPU training speed side by side in one script (issue 29): eager vs the fast path on the demo and COCO
recipes, the tutorial's reference decoder, batched beam search, the data pipeline, operators per batch.

    python bench/gpu.py                                # every leg at full size: one H100, < 8 minutes
    python bench/gpu.py --quick                        # every leg at toy size, CPU is fine (a plumbing check)
    python bench/gpu.py --legs demo reference          # some legs, or patterns over ids: --legs 'coco-*/eager-*'
    python bench/gpu.py --budget-s 60 --total-s 300    # each measurement's hard limit, and the whole run's

A measurement (``leg/variant`` below) builds its model from the recipe's composed config, warms up
(torch.compile, CUDA-graph capture and cuDNN autotuning happen there: ``warmup_s``, reported apart from
the timing), then times a fixed number of training steps, the device synchronised around the clock.
A training step is the loop's (``captioner.train.epoch``): autocast forward + objective, GradScaler
backward, unscale, gradient clipping, optimiser step, on batches already on the device (the data
pipeline is its own leg). Batches cycle through a few caption lengths, as the bucket sampler gives.
On CUDA each training measurement then profiles a few steps: ``gpu_busy`` and the ops that take the
time (``profile``), what a missed target is explained by.
``fast`` is ``captioner.train.fast_path.make_fast(model, device)``, what ``trainer.compile=auto``
takes on CUDA; ``eager`` the plain module.

A measurement that fails or overruns its budget records its error and the next one runs; the JSON is
rewritten after each, so a run cut short keeps what it measured. They run in this order, the headline
figures first and the longest compile late: demo/eager-fp32, demo/eager-bf16, demo/fast-bf16,
coco-frozen/eager-bf16, coco-frozen/fast-bf16, reference/tutorial-bf16, coco-finetuned/eager-bf16,
beam/batched-k5, pipeline/workers, pipeline/nvjpeg, coco-finetuned/fast-bf16, demo/fast-fp16.

    demo            experiment=demo's step (SAT decoder + attend_word + coverage on cached 8x8x96 maps,
                    V=52, batch 32); each variant also counts the aten operators one batch dispatches
    coco-frozen     the COCO recipe on synthetic inputs: ResNet-101 (pretrained=false: same FLOPs, no
                    download) at 224 px, 14x14x2048 annotations, H=512, V=10,000, 64 images x 5
                    captions a batch, on cached features; captions/s, peak memory, GPU busy fraction
    coco-finetuned  the same with the whole ResNet-101 trained (images in, channels_last on CUDA)
    reference       the tutorial's decoder (bench/reference_decoder.py) with coco-frozen's weights,
                    shapes and batches: ours / its captions/s in the targets
    beam            batched beam search, k=5, over 64 images with the COCO decoder (random weights: every
                    caption runs to the maximum length)
    pipeline        JPEG decode + augmentation in DataLoader workers (one per core) into the device,
                    against the images/s coco-finetuned consumes; nvjpeg (decode_jpeg on CUDA) beside it

Writes bench/results/gpu.json (device, torch, commit, command; ``--quick``: only with ``--out``) and
prints the measurements and the issue's targets, met or missed. Run it on a lent GPU with
``bench/gpu_run.sh`` (a timeout, logs into docs/gpu/).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import gc
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import Run, add_quick_and_out, print_table
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from captioner.cache import compose_train_config
from captioner.data.records import ImageRecord
from captioner.data.vocab import END_ID, PAD_ID, SPECIALS, START_ID, Vocab
from captioner.model.build import build_model
from captioner.runtime.device import autocast_context

# Run order and each measurement's hard limit in seconds on one H100 (the headline figures first; the
# fast path's compile is most of its budget). The whole run is capped by --total-s as well.
MEASUREMENTS = {
    "demo/eager-fp32": 20,
    "demo/eager-bf16": 20,
    "demo/fast-bf16": 100,
    "coco-frozen/eager-bf16": 25,
    "coco-frozen/fast-bf16": 90,
    "reference/tutorial-bf16": 25,
    "coco-finetuned/eager-bf16": 30,
    "beam/batched-k5": 20,
    "pipeline/workers": 40,
    "pipeline/nvjpeg": 15,
    "coco-finetuned/fast-bf16": 150,  # ResNet-101's forward and backward compile too
    "demo/fast-fp16": 60,
}
TOTAL_S = 450  # measurements only: with imports and start-up the run stays under the 8 minutes
QUICK_BUDGET_S = 300  # --quick on a loaded 2-core CPU: a compile takes a minute or more

DEMO = ["experiment=demo", "encoder.pretrained=false"]  # cached frozen features: the weights never run
COCO = [
    "data=coco",
    "encoder=resnet101",
    "encoder.pretrained=false",
    "encoder.encoder_size=14",  # ResNet-101's 7x7 map at 224 px, upsampled to the 14x14 grid of SAT
    "decoder.embed_dim=512",
    "decoder.hidden_dim=512",
    "decoder.attention_dim=512",
    "data.loader.batch_size=320",  # captions: 64 images x 5
    "data.loader.group_by_image=true",
    "tf=always",
]
FINETUNE = ["encoder.finetune=true", "trainer.cache_features=false", "trainer.channels_last=true"]
# --quick: the same recipes, toy sizes (resnet18 at 64 px stands in for ResNet-101 at 224).
QUICK_DEMO = [
    "decoder.embed_dim=16",
    "decoder.hidden_dim=16",
    "decoder.attention_dim=16",
    "data.loader.batch_size=8",
]
QUICK_COCO = [
    "encoder=resnet18",
    "encoder.encoder_size=4",
    "decoder.embed_dim=16",
    "decoder.hidden_dim=16",
    "decoder.attention_dim=16",
    "data.loader.batch_size=10",
    "data.loader.image_size=64",
]
CAPTIONS_PER_IMAGE = 5


@dataclass(frozen=True)
class Sizes:
    """What --quick shrinks besides the recipes' config: vocabularies, caption lengths, step counts."""

    demo_vocab: int = 52  # data/shapes_demo/vocab.json
    demo_lengths: tuple[int, int] = (5, 16)  # its training captions, <start> and <end> included
    coco_vocab: int = 10_000  # conf/data/coco.yaml's vocab_max_size
    coco_lengths: tuple[int, int] = (8, 22)  # Karpathy COCO captions (11 words on average) + <start>/<end>
    lengths_per_leg: int = 3  # batches of distinct padded lengths that each leg cycles through
    warmup_rounds: int = 3  # over those batches: compile per length, then CUDA-graph recording
    demo_steps: int = 200
    frozen_steps: int = 60
    finetuned_steps: int = 15
    busy_steps: int = 3  # profiled steps for the GPU busy fraction
    beam_images: int = 64
    beam_max_len: int = 20
    beam_repeats: int = 3
    # 3 batches of 64 images per worker: all of them busy, none idle at the end
    pipeline_images_per_worker: int = 192
    pipeline_scenes: int = 128  # distinct JPEGs the pipeline's images cycle through
    pipeline_side: int = 256  # COCO's prepared images are stored at 256 px
    nvjpeg_batches: int = 10


QUICK = Sizes(
    demo_vocab=20,
    demo_lengths=(5, 8),
    coco_vocab=50,
    coco_lengths=(5, 8),
    lengths_per_leg=1,
    warmup_rounds=1,
    demo_steps=2,
    frozen_steps=2,
    finetuned_steps=1,
    busy_steps=1,
    beam_images=2,
    beam_max_len=4,
    beam_repeats=1,
    pipeline_images_per_worker=4,
    pipeline_scenes=4,
    pipeline_side=64,
    nvjpeg_batches=2,
)


# --------------------------------------------------------------------------------------------- guards


class Overrun(Exception):
    """A measurement ran past its budget (raised from SIGALRM, between Python bytecodes)."""


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Overrun` in this (main) thread once ``seconds`` have passed."""

    def fire(signum: int, frame: Any) -> None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            # Never break a CUDA-graph capture: its stream would stay in capture mode for every later leg.
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            return
        raise Overrun(f"stopped at its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Clock:
    """Wall time that waits for the device first, so queued kernels count where they were launched."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        """Wait for every kernel queued on the device (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """Seconds, after the device has caught up."""
        self.sync()
        return time.perf_counter()


# ------------------------------------------------------------------------------------------- recipes


@dataclass
class Setup:
    """A recipe built for timing: its config, model, objective and a few batches on the device."""

    cfg: DictConfig
    model: torch.nn.Module
    objective: Any
    batches: list[dict[str, Any]]
    features: bool  # inputs are cached feature maps (else images)
    eps: float  # teacher forcing of the recipe's schedule at its start


def random_captions(
    n: int, length: int, shortest: int, vocab: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``n`` captions <start> w... <end> <pad>... padded to ``length``, lengths in [shortest, length]; one is
    ``length`` long (a bucket's batch is padded to its longest caption)."""
    lengths = torch.randint(shortest, length + 1, (n,), generator=generator)
    lengths[0] = length
    captions = torch.full((n, length), PAD_ID, dtype=torch.long)
    words = torch.randint(len(SPECIALS), vocab, (n, length), generator=generator)
    for i, m in enumerate(lengths.tolist()):
        captions[i, 1 : m - 1] = words[i, 1 : m - 1]
        captions[i, 0], captions[i, m - 1] = START_ID, END_ID
    return captions, lengths


def bucket_bounds(lo: int, hi: int, buckets: int) -> list[tuple[int, int]]:
    """``buckets`` (shortest, longest) caption-length ranges splitting [lo, hi], longest last."""
    edges = torch.linspace(lo - 1, hi, buckets + 1).round().long().tolist()
    return [(edges[i] + 1, edges[i + 1]) for i in range(buckets)]


def build_setup(
    overrides: list[str], vocab_size: int, lengths: tuple[int, int], buckets: int, device: torch.device
) -> Setup:
    """The recipe's model, objective and ``buckets`` batches of random inputs on ``device``, one per range
    of caption lengths splitting ``lengths``."""
    from captioner.data.pipeline import uses_feature_cache
    from captioner.train.objective import build_objective
    from captioner.train.teacher_forcing import build_schedule

    cfg = compose_train_config(overrides)
    torch.manual_seed(cfg.trainer.seed)
    vocab = Vocab([*SPECIALS, *(f"w{i}" for i in range(vocab_size - len(SPECIALS)))])
    model = build_model(cfg.encoder, cfg.decoder, vocab).to(device)
    channels_last = cfg.trainer.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    features = uses_feature_cache(OmegaConf.to_container(cfg, resolve=True))
    loader = cfg.data.loader
    side = loader.image_size
    grouped = loader.group_by_image
    images = max(1, loader.batch_size // CAPTIONS_PER_IMAGE) if grouped else loader.batch_size
    n_captions = images * CAPTIONS_PER_IMAGE if grouped else images
    g = torch.Generator().manual_seed(0)
    if features:  # the cache's map shape: the encoder's frozen prefix on one image
        with torch.no_grad():
            prefix = model.encoder.encode_prefix(torch.zeros(1, 3, side, side, device=device)).shape[1:]
    batches = []
    for shortest, longest in bucket_bounds(*lengths, buckets):
        captions, caption_lengths = random_captions(n_captions, longest, shortest, vocab_size, g)
        if features:
            inputs = torch.rand(images, *prefix, generator=g)
        else:
            inputs = torch.rand(images, 3, side, side, generator=g)
        inputs = inputs.to(device)
        if channels_last and not features:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        batch = {"inputs": inputs, "captions": captions.to(device), "lengths": caption_lengths.to(device)}
        if grouped:
            index = torch.arange(images).repeat_interleave(CAPTIONS_PER_IMAGE)
            batch["image_index"] = index.to(device)
        batches.append(batch)
    objective = build_objective(cfg, model, vocab, {})
    eps = build_schedule(**cfg.tf).epsilon(0.0)
    return Setup(cfg, model, objective, batches, features, eps)


def training_step(
    setup: Setup, train_model: torch.nn.Module, precision: str, device: torch.device
) -> Callable[[dict[str, Any]], None]:
    """One optimiser step on a batch, as ``captioner.train.epoch.train_one_epoch`` takes it."""
    from captioner.train.optim import build_optimizer, clip_gradients

    t = setup.cfg.trainer
    optimizer = build_optimizer(setup.model, **setup.cfg.optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = autocast_context(device, precision)

    def step(batch: dict[str, Any]) -> None:
        with autocast:
            loss, _ = setup.objective(train_model, batch["inputs"], batch, setup.eps, setup.features)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        clip_gradients(setup.model.parameters(), t.grad_clip, t.clip_value)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------------------- timing


def time_calls(
    fn: Callable[[int], Any], calls: int, warmup: int, clock: Clock, stop_at: float
) -> tuple[int, float, float]:
    """``fn(0..warmup-1)`` untimed, then ``fn(i)`` for up to ``calls`` more (fewer once perf_counter passes
    ``stop_at``): (timed calls, their seconds, warm-up seconds), the device synchronised at each reading."""
    start = clock.now()
    for i in range(warmup):
        fn(i)
    warm = clock.now()
    done = 0
    while done < calls:
        fn(done)
        done += 1
        if time.perf_counter() > stop_at:  # no sync here: the final clock.now() waits for what is queued
            break
    return done, clock.now() - warm, warm - start


def time_steps(
    step: Callable[[dict[str, Any]], None],
    batches: list[dict[str, Any]],
    steps: int,
    warmup_rounds: int,
    clock: Clock,
    stop_at: float,
) -> dict[str, Any]:
    """Warm up over every batch ``warmup_rounds`` times, then time up to ``steps`` steps cycling through
    them; captions/s, images/s, step ms, warm-up seconds."""
    done, seconds, warmup_s = time_calls(
        lambda i: step(batches[i % len(batches)]), steps, warmup_rounds * len(batches), clock, stop_at
    )
    timed = [batches[i % len(batches)] for i in range(done)]
    return {
        "captions_per_s": round(sum(len(b["captions"]) for b in timed) / seconds, 1),
        "images_per_s": round(sum(len(b["inputs"]) for b in timed) / seconds, 1),
        "step_ms": round(1000 * seconds / done, 3),
        "steps": done,
        "warmup_s": round(warmup_s, 2),
    }


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: kernels overlapping on streams count once."""
    busy, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy


def device_profile(
    step: Callable[[dict[str, Any]], None], batches: list[dict[str, Any]], n: int, step_ms: float
) -> dict[str, Any]:
    """Where a step's time goes on CUDA, from torch.profiler over ``n`` steps: ``gpu_busy``, the device's
    work per step (kernels, copies; the union of their intervals) over the unprofiled wall time per step
    ``step_ms``; and the ops with the most device and host time per step (name, calls, ms)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(batches[i % len(batches)])
        torch.cuda.synchronize()
    spans = [
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        # device-side user annotations span whole ranges of kernels: not work of their own
        if e.device_type == DeviceType.CUDA
        and not getattr(e, "is_user_annotation", False)
        and "annotation" not in str(getattr(e, "activity_type", "")).lower()
    ]
    device_ms = busy_seconds(spans) / 1000 / n  # microseconds in the trace

    def top(field: str, count: int = 8) -> list[list[Any]]:
        ranked = sorted(prof.key_averages(), key=lambda a: getattr(a, field, 0), reverse=True)[:count]
        return [[a.key, round(a.count / n, 1), round(getattr(a, field, 0) / 1000 / n, 3)] for a in ranked]

    return {
        "gpu_busy": round(device_ms / step_ms, 3),
        "device_ms_per_step": round(device_ms, 3),
        "top_device_ops": top("self_device_time_total"),
        "top_host_ops": top("self_cpu_time_total"),
    }


def attempt(result: dict[str, Any], key: str, figure: Callable[[], Any]) -> None:
    """``result[key] = figure()``, or ``result[key + "_error"]`` if it raises: an extra figure that fails
    must not cost the measurement its timing."""
    try:
        result[key] = figure()
    except Overrun:
        raise
    except Exception as err:  # noqa: BLE001 - recorded in the JSON beside the timing
        result[f"{key}_error"] = _one_line(err)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]


def peak_memory_gib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset, GiB; None on CPU (no per-measurement peak)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def release(device: torch.device) -> None:
    """Free the previous measurement's compiled graphs, CUDA-graph pools and cached blocks."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------------------------- legs


@dataclass
class Context:
    """What every measurement reads: device, sizes, the rows so far (later legs use earlier ones)."""

    device: torch.device
    sizes: Sizes
    quick: bool
    rows: list[dict[str, Any]]
    clock: Clock
    stop_at: float = 0.0  # soft deadline of the running measurement (perf_counter)

    def row(self, ident: str) -> dict[str, Any] | None:
        """The ok row of measurement ``ident`` in this run, if any."""
        return next((r for r in self.rows if r["id"] == ident and r["status"] == "ok"), None)


def recipe(leg: str, ctx: Context) -> tuple[list[str], int, tuple[int, int]]:
    """Overrides, vocabulary size and caption lengths of a leg's recipe."""
    s = ctx.sizes
    if leg == "demo":
        return DEMO + (QUICK_DEMO if ctx.quick else []), s.demo_vocab, s.demo_lengths
    coco = COCO + (QUICK_COCO if ctx.quick else [])
    return coco + (FINETUNE if leg == "coco-finetuned" else []), s.coco_vocab, s.coco_lengths


def train_leg(leg: str, path: str, precision: str, ctx: Context) -> dict[str, Any]:
    """demo / coco-frozen / coco-finetuned: one recipe's training step, eager or fast, at one precision."""
    device, s = ctx.device, ctx.sizes
    setup = build_setup(*recipe(leg, ctx), s.lengths_per_leg, device)
    train_model = setup.model
    if path == "fast":  # imported here: the eager legs run whatever state the fast path is in
        from captioner.train.fast_path import make_fast

        train_model = make_fast(setup.model, device)
    step = training_step(setup, train_model, precision, device)
    steps = {"demo": s.demo_steps, "coco-frozen": s.frozen_steps, "coco-finetuned": s.finetuned_steps}[leg]
    result = time_steps(step, setup.batches, steps, s.warmup_rounds, ctx.clock, ctx.stop_at)
    result["peak_memory_gib"] = peak_memory_gib(device)
    result["captions_per_batch"] = len(setup.batches[-1]["captions"])
    result["caption_tokens"] = [int(b["captions"].shape[1]) for b in setup.batches]
    if leg == "demo":
        attempt(result, "ops_per_batch", lambda: count_ops(lambda: step(setup.batches[-1])))
    if device.type == "cuda":
        profile_on_cuda(result, step, setup.batches, s.busy_steps)
    return result


def count_ops(step: Callable[[], None]) -> int:
    """The aten operators one call of ``step`` dispatches, counted as the fast path's own tests count them."""
    from captioner.runtime.profiling import count_dispatched_ops

    return count_dispatched_ops(step)


def profile_on_cuda(
    result: dict[str, Any], step: Callable[[dict[str, Any]], None], batches: list[dict[str, Any]], n: int
) -> None:
    """Add :func:`device_profile` to a timed measurement's ``result``, its busy fraction at the top level."""
    attempt(result, "profile", lambda: device_profile(step, batches, n, result["step_ms"]))
    result["gpu_busy"] = result.get("profile", {}).get("gpu_busy")


def reference_leg(ctx: Context) -> dict[str, Any]:
    """The tutorial's decoder on coco-frozen's shapes, batches and weights, bf16 like ours."""
    from reference_decoder import ReferenceDecoder

    from captioner.model.loss import caption_loss
    from captioner.train.optim import clip_gradients

    device, s = ctx.device, ctx.sizes
    setup = build_setup(*recipe("coco-frozen", ctx), s.lengths_per_leg, device)
    ref = ReferenceDecoder.from_decoder(setup.model.decoder).to(device).train()
    t, o = setup.cfg.trainer, setup.cfg.optimizer
    optimizer = torch.optim.AdamW(ref.parameters(), lr=o.decoder_lr, weight_decay=o.weight_decay)
    autocast = autocast_context(device, "bf16")
    loss_kwargs = setup.objective.loss_kwargs

    def step(batch: dict[str, Any]) -> None:
        # The tutorial decodes each caption with its own copy of the image's annotations.
        annotations = batch["inputs"].flatten(1, 2).index_select(0, batch["image_index"])
        with autocast:
            out, order = ref(annotations, batch["captions"], batch["lengths"])
            # Trimmed to the longest caption: the reference runs only that many steps.
            target = batch["captions"][order, : out.logits.shape[1] + 1]
            loss = caption_loss(out, target, **loss_kwargs)[0]
        loss.backward()
        clip_gradients(ref.parameters(), t.grad_clip, t.clip_value)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = time_steps(step, setup.batches, s.frozen_steps, s.warmup_rounds, ctx.clock, ctx.stop_at)
    result["peak_memory_gib"] = peak_memory_gib(device)
    result["captions_per_batch"] = len(setup.batches[-1]["captions"])
    if device.type == "cuda":
        profile_on_cuda(result, step, setup.batches, s.busy_steps)
    return result


def beam_leg(ctx: Context) -> dict[str, Any]:
    """Batched beam search, k=5, with the COCO decoder over ``beam_images`` images (bf16 on CUDA)."""
    from captioner.decode import beam_search

    device, s = ctx.device, ctx.sizes
    overrides, vocab, _ = recipe("coco-frozen", ctx)
    setup = build_setup(overrides, vocab, (5, 6), 1, device)
    decoder = setup.model.decoder.eval()
    fmap = setup.batches[0]["inputs"]
    annotations = fmap.flatten(1, 2).repeat(-(-s.beam_images // len(fmap)), 1, 1)[: s.beam_images]
    precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = autocast_context(device, precision)

    def search(_: int) -> None:
        with torch.no_grad(), autocast:
            beam_search(decoder, annotations, k=5, max_len=s.beam_max_len)

    done, seconds, warmup_s = time_calls(search, s.beam_repeats, 1, ctx.clock, ctx.stop_at)
    return {
        "images_per_s": round(done * s.beam_images / seconds, 1),
        "step_ms": round(1000 * seconds / done, 3),
        "steps": done,
        "warmup_s": round(warmup_s, 2),
        "peak_memory_gib": peak_memory_gib(device),
        "precision": precision,
        "images": s.beam_images,
        "max_len": s.beam_max_len,
    }


def scenes(root: Path, n: int, side: int) -> list[tuple[bytes, ImageRecord]]:
    """``n`` generated shapes scenes as stored JPEGs at ``side`` px (textured backgrounds: about 20 KB at
    256 px, near a COCO photo's size there), with their records."""
    from captioner.data.annotations import load_annotations
    from captioner.data.shapes import generate_dataset
    from captioner.data.store import ImageStore

    generate_dataset(root, n_train=n, n_val=0, n_test=0, n_test_novel=0, image_size=side)
    store = ImageStore(root)
    return [(store.read_bytes(r.id), r) for r in load_annotations(root).values()]


def pipeline_folder(root: Path, images: int, distinct: int, side: int) -> Path:
    """A prepared folder of ``images`` train images (5 captions each) cycling through ``distinct``
    generated scenes: the decoding cost of many images without generating them all."""
    from captioner.data.annotations import write_annotations
    from captioner.data.records import MANIFEST, content_hash, write_json_atomic
    from captioner.data.store import ImageStoreWriter

    source = scenes(root / "scenes", distinct, side)
    folder = root / "coco_like"
    records = []
    with ImageStoreWriter(folder) as writer:
        for i in range(images):
            data, r = source[i % len(source)]
            writer.add(f"img{i}", data, side, side)
            records.append(ImageRecord(f"img{i}", "train", f"img{i}", r.captions, r.tokens))
    write_annotations(folder, records)
    Vocab.build(t for r in records for t in r.tokens).save(folder / "vocab.json")
    write_json_atomic(
        folder / MANIFEST, {"source": {"format": "bench"}, "content_hash": content_hash(records)}
    )
    return folder


def pipeline_leg(ctx: Context) -> dict[str, Any]:
    """The COCO recipe's train loader (JPEG decode + augmentation, one worker per core, pinned memory),
    images/s delivered to the device, against what the COCO fine-tuning step consumes."""
    from captioner.data.loaders import build_loaders
    from captioner.data.transforms import as_float

    device, s = ctx.device, ctx.sizes
    cfg = compose_train_config(recipe("coco-finetuned", ctx)[0])
    loader = cfg.data.loader
    workers = len(os.sched_getaffinity(0))  # the cores this process may use
    images_per_batch = max(1, loader.batch_size // CAPTIONS_PER_IMAGE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        images = workers * s.pipeline_images_per_worker
        folder = pipeline_folder(root, images, s.pipeline_scenes, s.pipeline_side)
        data_s = time.perf_counter() - start
        train, _ = build_loaders(
            folder,
            Vocab.load(folder / "vocab.json"),
            loader.batch_size,
            image_size=loader.image_size,
            max_len=loader.max_len,
            num_workers=workers,
            group_by_image=True,
            augment=dict(cfg.data.augment),
            eval_splits=[],
        )

        def epoch(loader: torch.utils.data.DataLoader) -> int:
            n = 0
            for batch in loader:
                as_float(batch["images"].to(device, non_blocking=True))
                n += len(batch["images"])
            return n

        warm_start = time.perf_counter()
        epoch(train)  # starts the (persistent) workers
        warm = ctx.clock.now()
        delivered = epoch(train)
        seconds = ctx.clock.now() - warm
        del train
    rate = delivered / seconds
    return {
        "images_per_s": round(rate, 1),
        "workers": workers,
        "images_per_batch": images_per_batch,
        "images": delivered,
        "jpeg_side": s.pipeline_side,
        "warmup_s": round(warm - warm_start, 2),
        "data_s": round(data_s, 2),
    }


def nvjpeg_leg(ctx: Context) -> dict[str, Any]:
    """torchvision.io.decode_jpeg on the device (nvjpeg), a batch of the COCO recipe's images at a time (the
    pipeline leg's scenes), then a flip and a resize to the recipe's side as batched ops: images/s."""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    device, s = ctx.device, ctx.sizes
    cfg = compose_train_config(recipe("coco-finetuned", ctx)[0])
    images = max(1, cfg.data.loader.batch_size // CAPTIONS_PER_IMAGE)
    with tempfile.TemporaryDirectory() as tmp:
        encoded = [
            torch.frombuffer(bytearray(data), dtype=torch.uint8)
            for data, _ in scenes(Path(tmp), images, s.pipeline_side)
        ]
    flips = torch.rand(images, generator=torch.Generator().manual_seed(0)) < 0.5

    def decode(_: int) -> Tensor:
        batch = torch.stack(decode_jpeg(encoded, device=device))
        batch = torch.where(flips.to(device)[:, None, None, None], batch.flip(-1), batch)
        size = cfg.data.loader.image_size
        return F.interpolate(batch.float() / 255, size=(size, size), mode="bilinear", antialias=True)

    done, seconds, warmup_s = time_calls(decode, s.nvjpeg_batches, 1, ctx.clock, ctx.stop_at)
    return {
        "images_per_s": round(done * images / seconds, 1),
        "images_per_batch": images,
        "jpeg_kib": round(sum(len(e) for e in encoded) / len(encoded) / 1024, 1),
        "warmup_s": round(warmup_s, 2),
    }


def run_measurement(ident: str, ctx: Context) -> dict[str, Any]:
    """The figures of one measurement id (raises on failure)."""
    leg, variant = ident.split("/")
    if leg in ("demo", "coco-frozen", "coco-finetuned"):
        path, precision = variant.split("-")
        return train_leg(leg, path, precision, ctx)
    return {
        "reference": reference_leg,
        "beam": beam_leg,
        "pipeline": pipeline_leg if variant == "workers" else nvjpeg_leg,
    }[leg](ctx)


def skip_reason(ident: str, device: torch.device) -> str | None:
    """Why a measurement cannot run on ``device``, or None."""
    if device.type != "cuda" and (ident.endswith("-fp16") or ident == "pipeline/nvjpeg"):
        return "skipped: CUDA only"
    return None


# ------------------------------------------------------------------------------------------ targets


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if a is None or b is None or not b.get(key):
        return None
    return round(a[key] / b[key], 3)


def targets(ctx: Context) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures: met, missed, or not applicable on a CPU.

    Ratios take the fast path's row where this run measured it, else the eager one (the figure says which).
    """
    row, cuda = ctx.row, ctx.device.type == "cuda"

    def ours(leg: str) -> tuple[str, dict | None]:
        fast = row(f"{leg}/fast-bf16")
        return ("fast", fast) if fast else ("eager", row(f"{leg}/eager-bf16"))

    def figure(ident: str, key: str) -> float | None:
        return (row(ident) or {}).get(key)

    frozen_path, frozen = ours("coco-frozen")
    tuned_path, tuned = ours("coco-finetuned")
    table = [
        # figure, before, target (>= or <=), value, applies on a CPU
        (
            "demo recipe, training captions/s (fast bf16)",
            "~1,000 (fp16)",
            (">=", 20_000),
            figure("demo/fast-bf16", "captions_per_s"),
            False,
        ),
        (
            "COCO recipe, frozen encoder, captions/s (fast bf16)",
            "unmeasured",
            (">=", 30_000),
            figure("coco-frozen/fast-bf16", "captions_per_s"),
            False,
        ),
        (
            "COCO recipe, frozen encoder, GPU busy (fast bf16)",
            "unmeasured",
            (">=", 0.8),
            figure("coco-frozen/fast-bf16", "gpu_busy"),
            False,
        ),
        (
            "COCO recipe, fine-tuned ResNet-101, captions/s (fast bf16)",
            "unmeasured",
            (">=", 5_000),
            figure("coco-finetuned/fast-bf16", "captions_per_s"),
            False,
        ),
        (
            f"ours ({frozen_path} bf16) / the reference decoder, COCO frozen, same run",
            "unmeasured",
            (">=", 5.0),
            _ratio(frozen, row("reference/tutorial-bf16"), "captions_per_s"),
            False,
        ),
        (
            f"data pipeline, CPU workers / images the COCO fine-tuning step ({tuned_path} bf16) consumes",
            "unmeasured",
            (">=", 1.2),
            _ratio(row("pipeline/workers"), tuned, "images_per_s"),
            False,
        ),
        (
            f"or GPU JPEG decode (nvjpeg) / images the COCO fine-tuning step ({tuned_path} bf16) consumes",
            "unmeasured",
            (">=", 1.2),
            _ratio(row("pipeline/nvjpeg"), tuned, "images_per_s"),
            False,
        ),
        (
            "operators dispatched per demo training batch, fast / eager (bf16)",
            "1",
            ("<=", 0.2),
            _ratio(row("demo/fast-bf16"), row("demo/eager-bf16"), "ops_per_batch"),
            True,
        ),
    ]
    out = []
    for figure, today, (op, bound), value, on_cpu in table:
        if value is None:
            verdict = "not measured"
        elif not (cuda or on_cpu):
            verdict = "n/a on CPU"
        else:
            verdict = "met" if (value >= bound if op == ">=" else value <= bound) else "missed"
        out.append(
            {
                "figure": figure,
                "today": today,
                "target": f"{op} {bound:,g}",
                "value": value,
                "verdict": verdict,
            }
        )
    return out


# --------------------------------------------------------------------------------------------- main

ROW_COLUMNS = [
    ("id", "measurement"),
    ("status", "status"),
    ("captions_per_s", "captions/s"),
    ("images_per_s", "images/s"),
    ("step_ms", "step ms"),
    ("steps", "steps"),
    ("warmup_s", "warm-up s"),
    ("peak_memory_gib", "peak GiB"),
    ("gpu_busy", "GPU busy"),
    ("ops_per_batch", "ops/batch"),
    ("error", "error"),
]
TARGET_COLUMNS = [
    ("figure", "figure"),
    ("today", "today"),
    ("target", "target"),
    ("value", "this run"),
    ("verdict", ""),
]


def auto_takes_fast_path(device: torch.device) -> bool | str:
    """Whether ``trainer.compile=auto`` takes the fast path on ``device`` (the error, if that cannot be read)."""
    try:
        from captioner.train.fast_path import use_fast_path

        return use_fast_path("auto", device)
    except Exception as err:  # noqa: BLE001 - the record says why; the measurements still run
        return _one_line(err)


def selected(patterns: list[str] | None) -> list[str]:
    """Measurement ids in run order that a leg name (``demo``) or an id pattern (``coco-*/fast-*``) picks."""
    if not patterns:
        return list(MEASUREMENTS)
    picked = [i for i in MEASUREMENTS if any(i.split("/")[0] == p or fnmatch.fnmatch(i, p) for p in patterns)]
    unknown = [
        p for p in patterns if not any(i.split("/")[0] == p or fnmatch.fnmatch(i, p) for i in MEASUREMENTS)
    ]
    if unknown:
        legs = sorted({i.split("/")[0] for i in MEASUREMENTS})
        raise SystemExit(
            f"error: --legs {' '.join(unknown)} matches no measurement; use a leg ({', '.join(legs)}) "
            f"or a pattern over the ids: {', '.join(MEASUREMENTS)}"
        )
    return picked


def main() -> None:
    """Run the measurements, print the tables, write the JSON record after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--legs", nargs="+", help="legs or id patterns to run (default: all, in the order above)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        help="every measurement's hard limit in seconds (default: its own, in MEASUREMENTS)",
    )
    parser.add_argument(
        "--total-s", type=float, help=f"the whole run's limit in seconds (default {TOTAL_S}; --quick: none)"
    )
    add_quick_and_out(parser, "gpu", "every leg at toy size, CPU included: checks the plumbing")
    args = parser.parse_args()
    ids = selected(args.legs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.quick:
        raise SystemExit("error: bench/gpu.py at full size needs a CUDA device; on a CPU run it with --quick")
    run = Run("gpu")
    sizes = QUICK if args.quick else Sizes()
    ctx = Context(device, sizes, args.quick, [], Clock(device))
    setup = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
        "compile_auto_takes_fast_path": auto_takes_fast_path(device),
        "recipes": {"demo": DEMO, "coco-frozen": COCO, "coco-finetuned": COCO + FINETUNE},
        "quick_overrides": {"demo": QUICK_DEMO, "coco": QUICK_COCO} if args.quick else None,
        "sizes": vars(sizes),
        "notes": (
            "steps on batches already on the device; warmup_s holds compile, CUDA-graph capture and "
            "cuDNN autotuning; gpu_busy = the device's work per step under torch.profiler (the union of "
            "its kernel and copy intervals) / the unprofiled wall time per step, and profile lists the ops "
            "with the most device and host ms per step [name, calls, ms]; peak_memory_gib = "
            "torch.cuda.max_memory_allocated since the measurement began (null on CPU)"
        ),
    }
    total_s = args.total_s or (float("inf") if args.quick else TOTAL_S)
    started = time.perf_counter()

    def write() -> None:
        if args.quick and args.out is None:
            return  # a plumbing check must not overwrite the measured record
        run.write({"setup": setup, "rows": ctx.rows, "targets": targets(ctx)}, out=args.out)

    for ident in ids:
        leg, variant = ident.split("/")
        row: dict[str, Any] = {"id": ident, "leg": leg, "variant": variant}
        left = total_s - (time.perf_counter() - started)
        budget = min(args.budget_s or (QUICK_BUDGET_S if args.quick else MEASUREMENTS[ident]), left)
        reason = skip_reason(ident, device)
        if reason is None and budget < 5:
            reason = f"skipped: the run's {total_s:.0f} s were spent"
        if reason is not None:
            row.update(status="skipped", error=reason)
        else:
            print(f"{ident} (budget {budget:.0f} s) ...", flush=True)
            t0 = time.perf_counter()
            ctx.stop_at = t0 + 0.7 * budget  # stop timing early; profiling and counting come after
            try:
                with hard_limit(budget):
                    release(device)
                    row.update(run_measurement(ident, ctx))
                row["status"] = "ok"
            except Exception as err:  # noqa: BLE001 - one try on a lent GPU: record it, run the next
                row.update(status="error", error=_one_line(err))
            row["seconds"] = round(time.perf_counter() - t0, 1)
        ctx.rows.append(row)
        figures = ", ".join(f"{k} {row[k]}" for k, _ in ROW_COLUMNS[2:-1] if row.get(k) is not None)
        print(f"  {ident} {row['status']}: {row.get('error') or figures}", flush=True)
        write()
    print_table(ctx.rows, ROW_COLUMNS, title=f"\n{setup['device']}, torch {torch.__version__}:")
    print_table(
        targets(ctx),
        TARGET_COLUMNS,
        title="\nissue 29's targets (one H100, bf16; the ops ratio on any device):",
    )
    write()


if __name__ == "__main__":
    main()
