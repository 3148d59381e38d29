"""Counting the operators a step dispatches (``torch.profiler``): the training fast path's measure on any device."""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile


def count_dispatched_ops(step_fn: Callable[[], object]) -> int:
    """How many ``aten::`` operators one call of ``step_fn`` dispatches, counting only outermost calls.

    An op that another op calls inside itself (``linear`` -> ``addmm``) is part of that op's one dispatch;
    ops run by the autograd engine in backward count like those of the forward. Kernels that compiled
    code launches itself (inductor's fused kernels, CUDA graph replays) dispatch no aten op, which is the
    point. Call it after a warm-up call: compilation dispatches far more than a step.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in events if not _inside_aten(e))


def _inside_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False
