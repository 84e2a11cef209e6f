"""How far each reduced precision this CPU computes natively strays from fp32, per model, on the photos
shipped for calibration: the figures behind ``--precision auto``'s bound (``precision.BOUND``).

    python bench/bench_precision.py
    python bench/bench_precision.py --models realesrgan-x4plus --crops out/precision

Each photo runs whole (one window: no tiles, so only the precision differs) through our engine on one
runtime, in fp32 and in each precision the runtime computes natively here (bf16 with AVX512_BF16 or
AMX, fp16 on ARM CPUs with fp16 arithmetic), plus int8 where the runtime has a version of the network.
Printed per model and precision: the mean and largest difference from fp32 on the 8-bit results, the
PSNR against fp32, the share of pixels more than 2 levels off, the time against fp32 (the best of two
runs), and whether ``auto`` may take it. ``--crops DIR`` writes, per model and precision, fp32 beside
the reduced precision beside their difference ×16, from the photo it strays most on, to look at.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

MODELS = ("realesrgan-x4plus", "realesr-animevideov3", "ie-compact-x4-psnr", "ie-compact-x4-gan")
AMPLIFY = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--runtime", default="openvino")
    parser.add_argument("--crops", type=Path, help="write fp32 | reduced | difference ×16 crops here")
    args = parser.parse_args()

    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.engine.precision import BOUND, SHIPPED_PHOTOS, Difference
    from image_enhancer.request import EnhanceOptions
    from image_enhancer.runtimes import get
    from image_enhancer.runtimes.cpu import cpu_features, cpu_name
    from image_enhancer.weights.store import ModelStore

    store = ModelStore()
    runtime = get(args.runtime)
    reduced = [*runtime.native_precisions(), "int8"]
    photos = {name: _photo(name) for name in SHIPPED_PHOTOS}
    print(f"CPU: {cpu_name()} ({cpu_features()}); runtime {args.runtime}; bound: mean ≤ "
          f"{BOUND.mean_levels} levels and PSNR ≥ {BOUND.min_psnr_db:.0f} dB")  # fmt: skip
    print("| model | precision | photo | mean | largest | PSNR | > 2 levels | time vs fp32 | within |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        results = {}
        for precision in ["fp32", *reduced]:
            enhancer = Enhancer(store, device="cpu", runtime=args.runtime, precision=precision)
            chosen = enhancer.job_choice(16, 16, EnhanceOptions(model=model)).precision
            if chosen != precision:  # e.g. no int8 version of this architecture
                continue
            results[precision] = {name: _run(enhancer, model, photo) for name, photo in photos.items()}
        for precision in reduced:
            if precision not in results:
                continue
            means = {}
            for name in SHIPPED_PHOTOS:
                (fp32, fp32_s), (other, other_s) = results["fp32"][name], results[precision][name]
                d = Difference.between(other / 255.0, fp32 / 255.0)
                means[name] = d.mean_levels
                off = float((np.abs(other.astype(np.int16) - fp32).max(axis=2) > 2).mean())
                print(f"| {model} | {precision} | {name} | {d.mean_levels:.2f} | {d.max_levels:.0f} | "
                      f"{d.psnr_db:.1f} dB | {off:.1%} | {fp32_s / other_s:.2f}× | "
                      f"{'yes' if d.within() else 'no'} |", flush=True)  # fmt: skip
            if args.crops:
                worst = max(means, key=means.__getitem__)
                _write_crop(args.crops / f"{model}_{precision}.png", results["fp32"][worst][0],
                            results[precision][worst][0])  # fmt: skip


def _photo(name: str) -> np.ndarray:
    from importlib import resources

    from PIL import Image

    shipped = resources.files("image_enhancer.weights") / "calibration" / name
    with resources.as_file(shipped) as path, Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _run(enhancer, model: str, photo: np.ndarray) -> tuple[np.ndarray, float]:
    """The 8-bit result of one whole window (after an untimed run that compiles) and its best time."""
    from image_enhancer.request import EnhanceOptions

    options = EnhanceOptions(model=model, tile=max(photo.shape[:2]))
    result = enhancer.enhance(photo, options)
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        result = enhancer.enhance(photo, options)
        best = min(best, time.perf_counter() - started)
    return result, best


def _write_crop(path: Path, fp32: np.ndarray, other: np.ndarray) -> None:
    """fp32 | reduced | |difference| × AMPLIFY, a 256² crop from the centre of each."""
    from PIL import Image

    side = min(256, *fp32.shape[:2])
    top, left = (fp32.shape[0] - side) // 2, (fp32.shape[1] - side) // 2
    crop = (slice(top, top + side), slice(left, left + side))
    difference = np.abs(other.astype(np.int16) - fp32) * AMPLIFY
    panel = np.concatenate([fp32[crop], other[crop], np.clip(difference, 0, 255).astype(np.uint8)[crop]], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(path)
    print(f"  crop: {path}")


if __name__ == "__main__":
    main()
