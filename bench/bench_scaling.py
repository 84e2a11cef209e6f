"""Time and peak memory against output size: a photo enlarged ×2 to 1, 4, 12 and 48 megapixels.

Each case runs in a fresh process, as the command line runs a file: decode a JPEG, ``Enhancer.enhance``
at ×2 with every engine setting at its default (the ×4 network's tiles are shrunk to ×2 one by one),
encode the JPEG. Printed per case:

- ``time``: the enhance call (after the model is loaded and prepared); ``tiles × tile``: the time of one
  plain forward pass over one full window of the job's plan, measured in the same process just before
  the job, times the plan's work in such windows (its cores are evened out below the tile size), i.e.
  the work the job cannot avoid; and their ratio, the engine's overhead (blending, shrinking, colour,
  conversion), also in CPU time, which other work on the machine disturbs less;
- ``estimate``: what the command line would print before the job (``image_enhancer.estimate``, from the
  speed measured on this device), and actual time / estimate;
- ``peak RSS``: the process's high-water mark (VmHWM), everything included (Python, the runtime, the
  decoded photo, the result, the encoder); ``tile phase``: the most the process held while tiles were
  running.

``--max-tiles N`` stops a job after N tiles (it is cancelled, as a GIMP user cancels): the time is
then extrapolated (N tiles measured, the rest at the mean tile time) and only the tile phase's peak is
real, which for a big x4plus job on two cores is the honest way to see its memory in minutes rather
than an hour. The canvas of the result is allocated with the first tile but the pages of a zeroed
allocation only count once written, so a cancelled job shows the part of the canvas its tiles wrote.

    python bench/bench_scaling.py                                # compact pair 1–48 MP, x4plus 1–4 MP
    python bench/bench_scaling.py --cases realesrgan-x4plus:12:4  # x4plus 12 MP, cancelled after 4 tiles
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "forest_256.png"
SCALE = 2.0
# MODEL:OUTPUT_MEGAPIXELS[:MAX_TILES]. x4plus does about 1 output megapixel per 9 s at ×2 on two cores
# (its network works at ×4), so its big cases only run a few tiles.
DEFAULT_CASES = [
    "ie-compact-x4-gan:1", "ie-compact-x4-gan:4", "ie-compact-x4-gan:12", "ie-compact-x4-gan:48",
    "realesrgan-x4plus:1", "realesrgan-x4plus:4", "realesrgan-x4plus:48:2",
]


def photo(height: int, width: int) -> np.ndarray:
    """The test photo enlarged to the input size, with a little noise so the JPEG is photo-like."""
    from PIL import Image

    with Image.open(PHOTO) as im:
        base = np.asarray(im.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-6, 7, base.shape, dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def input_size(megapixels: float) -> tuple[int, int]:
    """A 4:3 input whose ×2 result has about ``megapixels``."""
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5 / SCALE)
    return round(width * 3 / 4), width


class Sampler:
    """Resident memory sampled every 20 ms, with the peak of the phase the job is in."""

    def __init__(self) -> None:
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.02):
            with open("/proc/self/statm", encoding="ascii") as statm:
                rss = int(statm.read().split()[1]) * page
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def child(model: str, megapixels: float, max_tiles: int, folder: Path) -> None:
    from image_enhancer.engine.enhancer import Enhancer, JobCancelled
    from image_enhancer.engine.tiling import Tiler
    from image_enhancer.estimate import JobShape, Planner
    from image_enhancer.imagefiles import ImageFile, read_image, write_image
    from image_enhancer.request import EnhanceOptions

    height, width = input_size(megapixels)
    source = folder / f"photo-{height}x{width}.jpg"
    if not source.exists():
        write_image(source, ImageFile(photo(height, width)))
    sampler = Sampler()
    enhancer = Enhancer(_store())
    options = EnhanceOptions(model=model, scale=SCALE)
    planner = Planner.for_enhancer(enhancer)
    image = read_image(source).pixels
    estimate = planner.estimate(model, JobShape.of(image, options), options)

    # One plain forward pass over one window of the job's plan, after one untimed pass.
    import torch

    settings = enhancer.tile_settings(height, width, options)
    runner, _ = enhancer._runner(enhancer.store.get(model), (height, width))
    tiles = Tiler(runner, settings).count_tiles(height, width)
    window = settings.tile + 2 * settings.pad
    shape = (1, 3, min(window, height), min(window, width))
    batch = torch.rand(settings.batch_size, *shape[1:])
    # The plan's cores are evened out below the tile size: its work in windows of the probe's size.
    windows = enhancer.network_pixels(height, width, options) / (shape[2] * shape[3] * settings.scale**2)
    runner(batch)
    started, cpu_started = time.perf_counter(), time.process_time()
    runner(batch)
    tile_time = (time.perf_counter() - started) / settings.batch_size
    tile_cpu = (time.process_time() - cpu_started) / settings.batch_size

    done_at: list[float] = []

    def progress(event) -> None:
        loaded = event.stage == "loading model" and event.done == event.total
        sampler.phase = "tiles" if event.stage == "enhancing" or loaded else event.stage
        if event.stage == "enhancing" and event.done:
            done_at.append(time.perf_counter())

    started, cpu_started = time.perf_counter(), time.process_time()
    cancelled = False
    try:
        result = enhancer.enhance(
            image, options, progress=progress, cancelled=lambda: bool(max_tiles) and len(done_at) >= max_tiles
        )
        took, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        sampler.phase = "writing"
        write_image(folder / "result.jpg", ImageFile(result))
        out_mp = result.shape[0] * result.shape[1] / 1e6
    except JobCancelled:
        cancelled = True
        measured = done_at[-1] - started
        took = measured + (tiles - len(done_at)) * measured / len(done_at)
        cpu = (time.process_time() - cpu_started) * tiles / len(done_at)
        out_mp = round(height * SCALE) * round(width * SCALE) / 1e6
    sampler.stop()
    print(json.dumps({
        "input": f"{width}×{height}", "out_mp": out_mp, "tiles": tiles, "tile_time": tile_time, "time": took,
        "tile_cpu": tile_cpu, "cpu": cpu, "windows": windows,
        "estimate": estimate, "cancelled_after": len(done_at) if cancelled else 0, "peak": peak_rss(),
        "tile_peak": sampler.peaks.get("tiles", 0), "tile": settings.tile,
    }))


def _store():
    from image_enhancer.weights.store import ModelStore

    return ModelStore()


def measure(model: str, megapixels: float, max_tiles: int, folder: Path) -> dict:
    command = [sys.executable, __file__, "--child", model, str(megapixels), str(max_tiles), str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"skipped": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="MODEL:OUTPUT_MP[:MAX_TILES]")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, megapixels, max_tiles, folder = args.child
        child(model, float(megapixels), int(max_tiles), Path(folder))
        return

    from image_enhancer.engine.devices import choose_device
    from image_enhancer.runtimes.cpu import cpu_features, cpu_name

    print(f"machine: {cpu_name()} ({cpu_features()}), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; {choose_device('auto').describe()}")
    print("| model | output | input | tiles (core) | time | tiles × tile | overhead (CPU time) | estimate "
          "| actual/est. | peak RSS | tile phase |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            model, megapixels, *rest = case.split(":")
            r = measure(model, float(megapixels), int(rest[0]) if rest else 0, Path(folder))
            if "skipped" in r:
                print(f"| {model} | {megapixels} MP | {' | '.join('–' * 9)} | {r['skipped']} |", flush=True)
                continue
            work = r["windows"] * r["tile_time"]
            note = f" (extrapolated from {r['cancelled_after']} tiles)" if r["cancelled_after"] else ""
            estimate = f"{r['estimate']:.0f} s" if r["estimate"] else "–"
            ratio = f"{r['time'] / r['estimate']:.2f}" if r["estimate"] else "–"
            peak = "–" if r["cancelled_after"] else f"{r['peak'] / 2**30:.2f} GB"
            print(f"| {model} | {r['out_mp']:.1f} MP | {r['input']} | {r['tiles']} ({r['tile']}) "
                  f"| {r['time']:.1f} s{note} | {work:.1f} s | {r['time'] / work:.2f} "
                  f"({r['cpu'] / (r['windows'] * r['tile_cpu']):.2f}) | {estimate} | {ratio} "
                  f"| {peak} | {r['tile_peak'] / 2**30:.2f} GB |", flush=True)


if __name__ == "__main__":
    main()
