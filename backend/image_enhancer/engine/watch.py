"""Progress and cancellation from inside one network call.

A single window of a large network runs for tens of seconds on a CPU (x4plus at 512²: about a
minute on two cores), longer than a user waits for a progress bar to move or for Cancel to act. The
tiler therefore opens a ``Watch`` around each call of a runtime, and the runtime, which alone knows
where it is inside the call (between layers, stages or strips, or while an asynchronous inference is
pending), asks ``current()`` for it: ``check()`` raises JobCancelled when the job was cancelled, and
``part_done(f)`` says that a fraction ``f`` of the call is done. The watch is a context variable, so a
runner shared by several jobs reports to the job that is running on this thread, and code that runs a
network outside a job (warm-up, calibration, tests) has no watch and pays nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

#: A caller sees a moving bar at least this often; reports in between are dropped (each may become a
#: message to a client).
REPORT_INTERVAL_S = 0.5


class JobCancelled(Exception):
    """The caller's ``cancelled()`` returned true; the work stopped at the next check."""


class Watch:
    """What a runtime may tell its caller, and ask it, during one call."""

    def __init__(
        self,
        cancelled: Callable[[], bool] | None,
        advance: Callable[[float], None] | None,
        interval: float = REPORT_INTERVAL_S,
    ) -> None:
        self._cancelled = cancelled
        self._advance = advance
        self._interval = interval
        self._last = time.monotonic()
        self._fraction = 0.0

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled."""
        if self._cancelled is not None and self._cancelled():
            raise JobCancelled("the job was cancelled")

    def part_done(self, fraction: float) -> None:
        """A fraction (0–1) of the call is done; passed on at most every ``interval`` seconds and never
        backwards (a time-based guess followed by an exact boundary may be lower)."""
        fraction = min(1.0, fraction)
        if self._advance is None or fraction <= self._fraction:
            return
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        self._fraction = fraction
        self._advance(fraction)


_current: ContextVar[Watch | None] = ContextVar("image_enhancer_watch", default=None)


def current() -> Watch | None:
    """The watch of the call running on this thread, if any."""
    return _current.get()


@contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    token = _current.set(watch)
    try:
        yield watch
    finally:
        _current.reset(token)


class Pace:
    """A runtime's measured seconds per input pixel of one call, so that a call in progress can say how
    far it has got from the time it has taken. Learned from finished calls; ``None`` until then."""

    def __init__(self) -> None:
        self.seconds_per_pixel: float | None = None

    def learn(self, pixels: int, seconds: float) -> None:
        rate = seconds / max(1, pixels)
        known = self.seconds_per_pixel
        # The newest call counts most (the machine's load changes), older ones steady it.
        self.seconds_per_pixel = rate if known is None else 0.5 * known + 0.5 * rate

    def fraction(self, pixels: int, elapsed: float) -> float | None:
        """How much of a call over ``pixels`` is done after ``elapsed`` seconds, capped below one: only
        the call's end says it is done."""
        if self.seconds_per_pixel is None:
            return None
        return min(0.95, elapsed / (self.seconds_per_pixel * max(1, pixels)))


def watch_layers(module: torch.nn.Module) -> torch.nn.Module:
    """Let a PyTorch network report to the job's watch before each convolution (where its work is):
    cancellation is then checked between layers, and progress is the share of convolution weights
    already run. Without a watch the hook returns at once (microseconds per layer). Idempotent."""
    if getattr(module, "_image_enhancer_watched", False):
        return module
    convolutions = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    total = sum(m.weight.numel() for m in convolutions) or 1
    running = 0
    for layer in convolutions:
        # Kept on the layer, not in the hook, so that a deep copy of the network reports the same way.
        layer._image_enhancer_share_before = running / total  # type: ignore[attr-defined]
        running += layer.weight.numel()
        layer.register_forward_pre_hook(_before_layer)
    module._image_enhancer_watched = True  # type: ignore[attr-defined]
    return module


def _before_layer(layer: torch.nn.Module, _inputs: object) -> None:
    job = current()
    if job is not None:
        job.check()
        job.part_done(layer._image_enhancer_share_before)
