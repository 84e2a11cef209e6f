"""What a job will cost, said before it starts (the command line's estimate, the server's EstimateTime),
and the model to start with.

The estimate comes from the measured speed of the model on this device: the last jobs per model, runtime
and precision, fitted to a fixed part plus a part per pixel (``server.model_speed.fit``). The network
always works at its own scale: a ×2 or ×3 request on a ×4 model costs what ×4 costs (the result is shrunk
tile by tile afterwards), and tiles also compute their context. So a job's work is counted in *network
pixels* (``Enhancer.network_pixels``: every window of the tile plan at the model's scale, once per pass; a
varying alpha is a second pass), and kept per runtime and precision the job runs with (the CPU's are
chosen by measurement, per image size, and may change when they are measured again; x4plus on ncnn and
on OpenVINO differ by 1.5×). A combination never measured here is first timed on windows growing towards
the job's (from 256²: about 10 s for x4plus on two CPU cores, a fraction of a second for the compact
models) with the job's runtime, and that is recorded; every finished job is recorded as well (the
command line's and the server's, in one file per user), so later estimates follow this machine.

The speed the server lists per model (``server.model_speed``, in result pixels, for clients older than
EstimateTime) is kept apart. When the job would take more than a few minutes on a CPU and a faster model
is installed, the command line's estimate names it with the time it would take.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from image_enhancer.engine.bands import ResultRows
from image_enhancer.engine.enhancer import Enhancer, Progress
from image_enhancer.paths import user_home
from image_enhancer.request import EnhanceOptions
from image_enhancer.server.model_speed import ModelSpeeds, fit, suggested_model

Cancelled = Callable[[], bool]
Size = tuple[int, int]  # (height, width)

#: In the user cache: measured network pixels per second, per device and model.
SPEEDS_FILE = "network_speed.json"
#: Above this many seconds on a CPU, a faster model is named ("more than a few minutes").
SLOW_JOB_SECONDS = 180.0
SLOW_JOB_ENV = "IMAGE_ENHANCER_SLOW_JOB_SECONDS"  # overrides SLOW_JOB_SECONDS
#: The calibration window is the job's own window, at most this many input pixels a side: large enough
#: that the per-call overhead is small against the work (x4plus at 64² is two thirds overhead on two
#: CPU cores), small enough to cost seconds (x4plus: about 10 s at 256² on two cores).
CALIBRATION_MAX_SIDE = 256
#: Jobs at least this long tell the rate; shorter ones mostly tell the fixed part.
MEASURED_SECONDS = 1.0
#: A fast model's small window costs more per pixel than the job's large ones (the compact models at
#: 256² about 2.5× on two cores, which put a 12-megapixel job at twice its time), so the window is
#: doubled towards the job's own while the next one should take at most this long (judged at the last
#: one's cost per pixel, which only overstates it).
GROWN_BUDGET_SECONDS = 6.0


def seconds_for(speed: tuple[float, float], pixels: int) -> float | None:
    """Seconds for ``pixels`` network pixels at (pixels per second, fixed seconds); None if unmeasured."""
    rate, fixed = speed
    return fixed + pixels / rate if rate > 0 else None


def duration_words(seconds: float) -> str:
    if seconds < 10:
        return "a few seconds"
    if seconds < 90:
        return f"about {round(seconds / 5) * 5:.0f} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def slow_job_seconds() -> float:
    value = os.environ.get(SLOW_JOB_ENV)
    try:
        return float(value) if value else SLOW_JOB_SECONDS
    except ValueError:
        return SLOW_JOB_SECONDS


class NetworkSpeeds(ModelSpeeds):
    """``ModelSpeeds`` in network pixels. The planner prepares a model before the timed part of a job
    begins, so unlike the server's first job of a model, the first one here is a fair measurement. Jobs
    shorter than MEASURED_SECONDS are kept but not used: their time is mostly the fixed part and noise,
    and a rate taken from them would put a big photo at ten times its real time."""

    def prepared(self, model: str) -> None:
        self._warm.add(model)

    def _measured(self, model: str) -> list[tuple[int, float]]:
        return [(p, s) for p, s in self._jobs.get(model, []) if s >= MEASURED_SECONDS]

    def measured(self, model: str) -> bool:
        with self._lock:
            return bool(self._measured(model))

    def speed(self, model: str) -> tuple[float, float]:
        """From the jobs long enough to tell; from all when there are none (on a fast GPU)."""
        with self._lock:
            return fit(self._measured(model) or self._jobs.get(model, []))


@dataclass(frozen=True)
class JobShape:
    """What the cost of a job depends on besides its options: the image's size, channels and how many
    times the network passes over it (a varying alpha the model upscales is a second pass). A server
    estimates from this alone, before any pixel is sent."""

    height: int
    width: int
    channels: int = 3
    passes: int = 1

    @classmethod
    def of(cls, image: np.ndarray, options: EnhanceOptions) -> JobShape:
        channels = 1 if image.ndim == 2 else image.shape[2]
        return cls(image.shape[0], image.shape[1], channels, _passes(image, options))

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


@dataclass
class Planner:
    """Chooses the model, estimates each job before it runs, and records what it took."""

    enhancer: Enhancer
    speeds: NetworkSpeeds
    slow_seconds: float
    calibrated: set[str] = field(default_factory=set)  # in this process

    @classmethod
    def for_enhancer(cls, enhancer: Enhancer) -> Planner:
        speeds = NetworkSpeeds(enhancer.compute.describe(), user_home() / SPEEDS_FILE)
        return cls(enhancer, speeds, slow_job_seconds())

    @property
    def on_gpu(self) -> bool:
        return self.enhancer.compute.key != "cpu"

    def default_model(self) -> str:
        """The model the dialog suggests on this device: the fast pair on a CPU, the manifest's on a GPU."""
        return suggested_model(self.enhancer.store, on_gpu=self.on_gpu)  # type: ignore[arg-type]

    def _work(self, shape: JobShape, options: EnhanceOptions, chosen_for: Size | None = None) -> int:
        height, width, channels, passes = shape.height, shape.width, shape.channels, shape.passes
        return self.enhancer.network_pixels(height, width, options, channels, passes, chosen_for)

    def speed_key(self, shape: JobShape, options: EnhanceOptions) -> str:
        """Under what the speed of the job is kept: its model, runtime and precision."""
        choice = self.enhancer.job_choice(shape.height, shape.width, options)
        return f"{options.model} ({choice.runtime}, {choice.precision})"

    def _speed(
        self, model: str, shape: JobShape, options: EnhanceOptions, cancelled: Cancelled | None
    ) -> tuple[float, float]:
        key = self.speed_key(shape, options)
        if not self.speeds.measured(key) and key not in self.calibrated:
            self.calibrate(model, shape, options, cancelled)
            self.calibrated.add(key)
        return self.speeds.speed(key)

    def calibrate(
        self, model: str, shape: JobShape, options: EnhanceOptions, cancelled: Cancelled | None = None
    ) -> None:
        """Time windows growing towards the job's (after one tiny run that loads and prepares the model),
        with the job's runtime, and record them: per pixel the largest costs about what the job's windows
        will. ``cancelled`` as in ``Enhancer.enhance``."""
        size = shape.size
        settings = self.enhancer.tile_settings(size[0], size[1], options)
        job_window = min(settings.tile + 2 * settings.pad, max(size))
        plain = EnhanceOptions(model=model)
        key = self.speed_key(shape, plain)
        self.enhancer.enhance(np.zeros((32, 32, 3), np.uint8), plain, cancelled=cancelled, chosen_for=size)
        self.speeds.prepared(key)
        window = min(job_window, CALIBRATION_MAX_SIDE)
        seconds = self._time_window(key, window, size, plain, cancelled)
        while window < job_window:
            grown = min(job_window, 2 * window)
            if seconds * (grown / window) ** 2 > GROWN_BUDGET_SECONDS:
                break
            window, seconds = grown, self._time_window(key, grown, size, plain, cancelled)

    def _time_window(
        self, key: str, side: int, size: tuple[int, int], plain: EnhanceOptions, cancelled: Cancelled | None
    ) -> float:
        """Seconds of one job on a ``side``² noise window (within ``size``, run as a job of that size
        would run), recorded under ``key``."""
        shape = (min(side, size[0]), min(side, size[1]), 3)
        noise = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
        started = time.perf_counter()
        self.enhancer.enhance(noise, plain, cancelled=cancelled, chosen_for=size)
        seconds = time.perf_counter() - started
        self.speeds.record(key, self._work(JobShape(*shape[:2]), plain, size), seconds)
        return seconds

    def estimate(
        self, model: str, shape: JobShape, options: EnhanceOptions, cancelled: Cancelled | None = None
    ) -> float | None:
        """Seconds the job will take on this device once its model is loaded (None if the model cannot be
        timed here); a runtime never timed for jobs like it is timed first (``calibrate``)."""
        options = replace(options, model=model)
        return seconds_for(self._speed(model, shape, options, cancelled), self._work(shape, options))

    def announce(self, shape: JobShape, options: EnhanceOptions) -> str:
        """One or two lines for the person waiting: how long, and a faster model when it is slow."""
        seconds = self.estimate(options.model, shape, options)
        where = "this GPU" if self.on_gpu else "this CPU"
        if seconds is None:
            return f"estimated time: unknown for {options.model} on {where}"
        text = f"estimated time: {duration_words(seconds)} with {options.model} on {where}"
        fast = self.default_model()
        if self.on_gpu or seconds <= self.slow_seconds or fast == options.model:
            return text
        faster = self.estimate(fast, shape, replace(options, model=fast, strength=None))
        if faster is None or faster >= seconds / 2:
            return text
        return f"{text}; {fast} would take {duration_words(faster)} (-m {fast})"

    def run(
        self,
        image: np.ndarray,
        options: EnhanceOptions,
        progress: Callable[[Progress], None] | None = None,
        rows: ResultRows | None = None,
        cancelled: Cancelled | None = None,
    ) -> np.ndarray | None:
        """Enhance ``image`` and record the time the model worked (from the end of loading); ``rows``,
        ``cancelled`` and the result as in ``Enhancer.enhance``."""
        ready: list[float] = []

        def watch(event: Progress) -> None:
            if event.stage == "loading model" and event.done == event.total and not ready:
                ready.append(time.perf_counter())
            if progress is not None:
                progress(event)

        shape = JobShape.of(image, options)
        result = self.enhancer.enhance(image, options, progress=watch, cancelled=cancelled, rows=rows)
        if ready:
            key = self.speed_key(shape, options)
            self.speeds.prepared(key)  # by announce (network_pixels) or by an earlier job
            self.speeds.record(key, self._work(shape, options), time.perf_counter() - ready[0])
        return result


def _passes(image: np.ndarray, options: EnhanceOptions) -> int:
    """Network passes over the image: a second one for a varying alpha the model upscales."""
    if image.ndim != 3 or image.shape[2] not in (2, 4) or options.alpha_mode != "model":
        return 1
    alpha = image[:, :, -1]
    return 1 if bool((alpha == alpha.flat[0]).all()) else 2
