"""Wall time of the pruning stages (calibration capture, layer forwards, Gram accumulation, scoring,
selection, repair, surgery, save).

The pipeline marks its stages with ``stage(name)``; nothing is measured unless a ``StageTimer`` is active:

    with StageTimer() as timer:
        plan = prune_(model, ratio=0.5, calibration=calib)
    timer.seconds  # {"capture": ..., "forward": ..., "gram": ..., ...}; also in plan.timing as stage_*_seconds

Stages nest and their times are exclusive: a ``gram`` inside a ``forward`` is counted once, as ``gram``, and
the ``forward`` gets the rest. Without an active timer ``stage`` returns a shared no-op context (one global
read), so an untimed run pays nothing measurable. On CUDA the device is synchronised at every stage boundary
while a timer is active (asynchronous kernels would otherwise be charged to the next stage).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

STAGES = ("capture", "forward", "gram", "score", "select", "repair", "surgery", "sequential_forward", "save")

_NOOP: AbstractContextManager[None] = nullcontext()
_active: StageTimer | None = None


class StageTimer:
    """Accumulates exclusive wall time per stage name while active (``with StageTimer() as t``)."""

    def __init__(self, sync_cuda: bool = True, clock: Callable[[], float] = time.perf_counter) -> None:
        """``clock``: wall time by default; ``time.process_time`` (CPU time of this process) measures
        single-threaded CPU runs on a shared machine without the time other processes take."""
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[str] = []
        self._last = 0.0
        self._sync = sync_cuda and torch.cuda.is_available()
        self._outer: StageTimer | None = None

    def __enter__(self) -> StageTimer:
        global _active
        self._outer, _active = _active, self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._outer

    def _charge(self) -> None:
        if self._sync:
            torch.cuda.synchronize()
        now = self.clock()
        if self._stack:
            name = self._stack[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge()  # the enclosing stage's time up to here
        self._stack.append(name)
        self.calls[name] = self.calls.get(name, 0) + 1
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def as_timing(self) -> dict[str, float]:
        """``stage_<name>_seconds`` for every stage that ran (the keys ``PruningPlan.timing`` records)."""
        return {f"stage_{name}_seconds": s for name, s in sorted(self.seconds.items())}


def active() -> StageTimer | None:
    """The innermost active timer, or None."""
    return _active


def recorded() -> dict[str, float]:
    """The active timer's ``stage_*_seconds`` so far (empty without one): what ``apply_plan_`` puts in the plan."""
    return {} if _active is None else _active.as_timing()


def stage(name: str) -> AbstractContextManager[None]:
    """Context that charges its wall time to ``name`` in the active timer (a no-op without one)."""
    timer = _active
    return _NOOP if timer is None else timer.stage(name)
