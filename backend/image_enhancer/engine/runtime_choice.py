"""The CPU runtime and precision ``auto`` runs a network with, measured on this machine.

Which runtime is fastest depends on the CPU as much as on the network: OpenVINO led on an AVX-512 Xeon in
fp32, ncnn ran x4plus faster on an AMD EPYC, and where the CPU computes bf16 natively (AVX512_BF16, AMX)
OpenVINO in bf16 is about twice its fp32. So the first time a network's graph is used on the CPU, every
installed runtime × precision that can run it is timed on a window of a shipped photo (a few seconds at
most), the reduced precisions are compared with the fp32 result on windows of every shipped photo
(``precision.BOUND``; the worst photo counts), and the timings are kept in the user cache per graph, CPU
model and features, thread count and runtime versions (unless other work took much of the CPU while they
were timed: then they serve this process only, and the next measures again). ``auto`` then takes the
fastest within the bound; ``--precision fp32`` the fastest in fp32; ``--runtime`` still forces a runtime.
``image-enhancer devices --benchmark`` prints the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from image_enhancer import runtimes
from image_enhancer.engine.precision import SHIPPED_PHOTOS, Difference, calibration_photo
from image_enhancer.engine.tiling import DEFAULT_OVERLAP, auto_tile, context_pad, plan_tiles
from image_enhancer.paths import user_home
from image_enhancer.runtimes.base import Runner
from image_enhancer.runtimes.cpu import cpu_features, cpu_name
from image_enhancer.runtimes.memory import memory_budget
from image_enhancer.safe_json import JsonFileError, load_json
from image_enhancer.weights.integrity import write_atomically

if TYPE_CHECKING:
    from image_enhancer.models.descriptor import LoadedModel

log = logging.getLogger(__name__)

TABLE_FILE = "runtime_choice.json"
#: Part of every key: timings measured by an older rule are measured again (4: none kept that were
#: timed under load; 5: reduced precisions judged on every shipped photo, not the forest alone; 6:
#: RRDBNet's residual sums kept in fp32 in a reduced precision on OpenVINO; 7: and a sixth of its blocks
#: at each end in fp32; 8: judged on a soft picture too; 9: ncnn sizes its windows by its first stage;
#: 10: timed on windows up to 512², the photo mirrored).
TABLE_VERSION = 10
TABLE_MAX_BYTES = 1 << 20
#: The shipped photo the timing window is cut from (a real photo: reduced precision errs most on real
#: detail); a reduced precision's difference from fp32 is the worst of windows of every shipped photo.
PHOTO = "forest_256.png"
#: The window is sized for a reference run of about REFERENCE_S: large enough that per-call overheads
#: are small against the work (they favour the runtime with the least of them, which is not the
#: fastest on the large windows of real jobs) and that a fast network's cost per pixel is that of a
#: real job's window (the compact model on PyTorch: 1.96 µs a pixel at 256², 3.14 at 768², on
#: OpenVINO 1.64 and 1.80: timed at 256², `--precision fp32` ran a 1024² job on PyTorch in 3.45 s
#: instead of OpenVINO's 2.11), small enough that timing all takes seconds. The photo is mirrored
#: beyond its own size.
MIN_SIDE, MAX_SIDE = 48, 512
REFERENCE_S = 0.4
#: The smallest window a reduced precision is judged on: a GAN model's invented detail, which a reduced
#: precision makes differently, needs room to show (x4plus in bf16 on the soft forest: 0.21 levels off
#: fp32 at 48², 1.06 at 96², 1.11 at 144²).
JUDGE_MIN_SIDE = 96
#: Timed runs per candidate after its first (which compiles and allocates); the best one counts.
REPEATS = 2
#: Other processes' share of the CPU while the runtimes were timed above which the timings are not
#: kept. Runtimes slow down unequally when they share the cores: x4plus timed beside two other jobs had
#: OpenVINO at 2.7× its quiet time and ncnn at 1.5×, and that table chose the runtime 2.6× slower on
#: small images for good.
BUSY_SHARE = 0.25


@dataclass(frozen=True)
class Candidate:
    runtime: str  # a runtime's name (``runtimes.Runtime.name``)
    precision: str  # "fp32", "bf16", "fp16"


@dataclass(frozen=True)
class Timing:
    """One candidate measured on the window: seconds per input pixel and its difference from fp32."""

    runtime: str
    precision: str
    seconds_per_pixel: float
    mean_levels: float = 0.0
    max_levels: float = 0.0
    psnr_db: float = float("inf")
    #: The largest tile core this runtime's working memory lets it run within the memory limit, and
    #: the context each window adds on each side: a job's windows compute that context twice, which a
    #: small timing window alone does not show (x4plus: ncnn's memory allowed cores of 152, OpenVINO's
    #: 528 — 2× and 1.3× the work on a large photo; on a 256² one, 3× and none). 0: no tiles.
    core: int = 0
    pad: int = 0

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.runtime, self.precision)

    def work(self, size: tuple[int, int] | None = None) -> float:
        """The pixels this runtime's windows compute for an image of ``size`` (None: a large one), per
        pixel of the image: where two windows meet, each computes the other's context."""
        if self.core <= 0:
            return 1.0
        if size is None:
            return ((self.core + 2 * self.pad) / self.core) ** 2
        plan = plan_tiles(0, 0, *size, self.core, DEFAULT_OVERLAP, self.pad, widen=True)  # as a job is
        return sum(t.y.window_size * t.x.window_size for t in plan) / (size[0] * size[1])

    def seconds_per_job_pixel(self, size: tuple[int, int] | None = None) -> float:
        """Seconds per pixel of a job on an image of ``size`` (None: a large one), context included."""
        return self.seconds_per_pixel * self.work(size)

    def within(self) -> bool:
        return Difference(self.mean_levels, self.max_levels, self.psnr_db).within()


REFERENCE = Candidate(runtimes.REFERENCE.name, "fp32")


def candidates(architecture: str) -> list[Candidate]:
    """What can run this architecture here; fp32 on the reference runtime first. Reduced precisions
    only where the CPU computes them natively: emulated they are slower than fp32."""
    found = [REFERENCE]
    for runtime in runtimes.installed():
        if runtime is not runtimes.REFERENCE and runtime.supports(architecture):
            found += [Candidate(runtime.name, p) for p in ("fp32", *runtime.native_precisions())]
    return found


def graph_key(loaded: LoadedModel, threads: int) -> str:
    """What the timings hold for: the network's graph (names and shapes, not values: two strengths of a
    pair run alike), this CPU, the thread count and the runtimes' versions."""
    return loaded.key(f"runtime-choice-{threads}", lambda: _graph_key(loaded, threads))


def _graph_key(loaded: LoadedModel, threads: int) -> str:
    digest = hashlib.sha256(f"{TABLE_VERSION}{loaded.descriptor.architecture}".encode())
    for name, tensor in sorted(loaded.module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
    versions = [_version(runtime.package) for runtime in runtimes.ALL]
    digest.update(json.dumps([cpu_name(), cpu_features(), threads, versions]).encode())
    return digest.hexdigest()[:32]


@cache  # reading a package's metadata takes milliseconds, and every job asks for the key
def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


#: Makes a runner for a candidate (the tiler's op, which also tells its working memory per pixel).
RunnerFactory = Callable[[Candidate], Runner]


def measure(loaded: LoadedModel, make_runner: RunnerFactory, pad: int, budget: int) -> list[Timing]:
    """Time every candidate on a window of the shipped photo; candidates that fail are left out. The
    candidates run in turns, best of REPEATS each, so a machine busy for a moment slows all alike.
    ``pad`` and ``budget`` (the working memory a job's windows get) give each candidate's tile core."""
    photo = _with_channels(torch.from_numpy(calibration_photo(PHOTO)), loaded.descriptor.in_channels)
    reference_op = make_runner(REFERENCE)
    small = photo[..., :MIN_SIDE, :MIN_SIDE]
    reference_op(small)  # a first run allocates: the window is sized from a second one
    started = time.perf_counter()
    reference_op(small)
    per_pixel = (time.perf_counter() - started) / MIN_SIDE**2
    side = min(MAX_SIDE, max(MIN_SIDE, 16 * round(math.sqrt(REFERENCE_S / max(per_pixel, 1e-12)) / 16)))
    window = _mirrored(photo, side)[..., :side, :side].contiguous()
    reference = reference_op(window)
    ops: dict[Candidate, tuple[Runner, Difference]] = {}
    cores: dict[Candidate, int] = {}
    for candidate in candidates(loaded.descriptor.architecture):
        try:
            op = reference_op if candidate == REFERENCE else make_runner(candidate)
            output = op(window)  # the first run compiles and allocates: not timed
        except Exception as why:  # a runtime that cannot run this graph here is simply not chosen
            log.warning("%s %s was not timed: %s", candidate.runtime, candidate.precision, why)
            continue
        ops[candidate] = (op, Difference.between(output.cpu().numpy(), reference.cpu().numpy()))
        cores[candidate] = auto_tile(budget, op.bytes_per_pixel(), pad)
    best = dict.fromkeys(ops, float("inf"))
    for _ in range(REPEATS):
        for candidate, (op, _) in ops.items():
            started = time.perf_counter()
            op(window)
            best[candidate] = min(best[candidate], time.perf_counter() - started)
    _judge_on_every_photo(ops, reference_op, side, loaded)
    pixels = side * side
    return [
        Timing(c.runtime, c.precision, best[c] / pixels, **asdict(d), core=cores[c], pad=pad)
        for c, (_, d) in ops.items()
    ]


def _judge_on_every_photo(
    ops: dict[Candidate, tuple[Runner, Difference]], reference_op: Runner, side: int, loaded: LoadedModel
) -> None:
    """Each reduced precision's difference from fp32 made the worst of the timing window's and of a
    window from the centre of every shipped photo, at least JUDGE_MIN_SIDE on a side (after the timing: a
    new window shape may compile again). x4plus: about 3 s a photo, on a CPU with native bf16 only."""
    reduced = [candidate for candidate in ops if candidate.precision != "fp32"]
    if not reduced:
        return
    photos = [_with_channels(torch.from_numpy(calibration_photo(name)), loaded.descriptor.in_channels)
              for name in SHIPPED_PHOTOS]  # fmt: skip
    side = min(max(side, JUDGE_MIN_SIDE), *(length for photo in photos for length in photo.shape[-2:]))
    windows = [_centre(photo, side) for photo in photos]
    references = [reference_op(window).cpu().numpy() for window in windows]
    for candidate in reduced:
        op, difference = ops[candidate]
        outputs = [op(window).cpu().numpy() for window in windows]
        others = [Difference.between(out, fp32) for out, fp32 in zip(outputs, references, strict=True)]
        ops[candidate] = (op, Difference.worst([difference, *others]))


def _mirrored(photo: torch.Tensor, side: int) -> torch.Tensor:
    """``photo`` with mirror images of itself beside and below it until it is ``side`` on each side."""
    while photo.shape[-1] < side:
        photo = torch.cat([photo, photo.flip(-1)], dim=-1)
    while photo.shape[-2] < side:
        photo = torch.cat([photo, photo.flip(-2)], dim=-2)
    return photo


def _centre(photo: torch.Tensor, side: int) -> torch.Tensor:
    height, width = photo.shape[-2:]
    top, left = (height - side) // 2, (width - side) // 2
    return photo[..., top : top + side, left : left + side].contiguous()


def _with_channels(photo: torch.Tensor, channels: int) -> torch.Tensor:
    """The RGB photo as the network takes it: gray for one channel, channels repeated for more."""
    if channels == 1:
        return photo.mean(dim=1, keepdim=True)
    return photo.repeat(1, -(-channels // 3), 1, 1)[:, :channels].contiguous()


def best(timings: list[Timing], precision: str, size: tuple[int, int] | None = None) -> Timing:
    """The fastest timing for ``precision`` ("auto": any within the bound; otherwise that precision) on
    a job of ``size`` (None: a large one): with its windows' context, which depends on the job."""
    allowed = [t for t in timings if (t.within() if precision == "auto" else t.precision == precision)]
    return min(allowed or timings[:1], key=lambda t: t.seconds_per_job_pixel(size))


class OtherCpuUse:
    """How much of the CPU other processes use from now on (Linux's ``/proc/stat``; elsewhere unknown,
    taken as none): all cores' busy time less this process's own, over the cores' time."""

    def __init__(self) -> None:
        self._busy, self._own, self._wall = _busy_seconds(), time.process_time(), time.perf_counter()

    def share(self) -> float:
        busy, own, wall = _busy_seconds(), time.process_time(), time.perf_counter()
        if busy is None or self._busy is None or wall <= self._wall:
            return 0.0
        others = (busy - self._busy) - (own - self._own)
        return max(0.0, others / ((wall - self._wall) * (os.cpu_count() or 1)))


def _busy_seconds() -> float | None:
    """Seconds all cores have spent busy since boot, or None where the system does not say."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and waiting for I/O
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user … steal; guest is inside user


class RuntimeTable:
    """The measured timings per graph key, kept in the user cache (``TABLE_FILE``); timings taken while
    other work loaded the CPU (``BUSY_SHARE``) are held for this process only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or user_home() / TABLE_FILE
        self._lock = threading.Lock()
        self._not_kept: dict[str, list[Timing]] = {}
        self._parsed: tuple[tuple[int, int, int], dict] | None = None

    def get(self, key: str) -> list[Timing] | None:
        entry = self._read().get(key)
        if not isinstance(entry, list):
            return None
        try:
            return [Timing(**item) for item in entry]
        except TypeError:  # written by another version: measured again
            return None

    def put(self, key: str, timings: list[Timing]) -> None:
        with self._lock:
            table = self._read()
            table[key] = [asdict(t) for t in timings]
            write_atomically(self.path, json.dumps(table, indent=1).encode())

    def timings(
        self, loaded: LoadedModel, make_runner: RunnerFactory, threads: int, again: bool = False
    ) -> list[Timing]:
        """The timings of ``loaded``'s graph, measured now when unknown (or when ``again``)."""
        key = graph_key(loaded, threads)
        known = None if again else self._not_kept.get(key) or self.get(key)
        if known is None:
            started = time.perf_counter()
            budget = memory_budget(torch.device("cpu"))  # what a job's windows get, as the engine sizes them
            others = OtherCpuUse()
            known = measure(loaded, make_runner, context_pad(loaded.descriptor), budget)
            busy = others.share()
            log.info(
                "timed the CPU runtimes for this %s network in %.1f s",
                loaded.descriptor.architecture, time.perf_counter() - started,
            )  # fmt: skip
            if busy > BUSY_SHARE:
                log.warning(
                    "other work used %.0f%% of the CPU while the runtimes were timed: %s", 100 * busy,
                    "kept as asked, but the choice may be off" if again  # devices --benchmark
                    else "they serve this process only and are timed again next time",
                )  # fmt: skip
            if busy > BUSY_SHARE and not again:
                self._not_kept[key] = known
            else:
                self._not_kept.pop(key, None)
                self.put(key, known)
        return known

    def _read(self) -> dict:
        """The table as the file holds it now (a copy: ``put`` adds to it); parsed again only when the
        file changed, which every job would otherwise pay for."""
        try:
            stat = self.path.stat()
        except OSError:
            return {}
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rewrite replaces the file
        if self._parsed is None or self._parsed[0] != stamp:
            try:
                table = load_json(self.path, TABLE_MAX_BYTES)
            except (JsonFileError, OSError):
                return {}  # damaged: measured again and rewritten
            self._parsed = (stamp, table if isinstance(table, dict) else {})
        return dict(self._parsed[1])
