"""Speed per pixel against the size of one window, per CPU runtime: what the runtime table's timing on
one small window (at most 256²) says about a job whose windows are larger.

    python bench/bench_windows.py --model realesr-animevideov3 --runtimes openvino ncnn --sides 256 512 1024

Each side runs as one window (tile = side) through our engine forced to the runtime, in fp32, after one
untimed run; the best of `--repeats` counts. Figures are nanoseconds per pixel the network makes (input
pixels × scale²), so windows of different sizes compare directly.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--runtimes", nargs="+", default=["openvino", "ncnn"])
    parser.add_argument("--sides", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.request import EnhanceOptions
    from image_enhancer.runtimes.cpu import cpu_features, cpu_name
    from image_enhancer.weights.store import ModelStore

    store = ModelStore()
    print(f"CPU: {cpu_name()} ({cpu_features()}); model {args.model}, fp32, one window per run")
    print("| runtime | window | seconds | ns per network pixel |\n|---|---|---|---|")
    for runtime in args.runtimes:
        enhancer = Enhancer(store, device="cpu", runtime=runtime, precision="fp32")
        for side in args.sides:
            image = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
            options = EnhanceOptions(model=args.model, tile=side)
            enhancer.enhance(image, options)  # compiles and allocates for this shape
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                enhancer.enhance(image, options)
                best = min(best, time.perf_counter() - started)
            network_pixels = side * side * enhancer.tile_settings(side, side, options).scale ** 2
            print(f"| {runtime} | {side}² | {best:.3f} | {best / network_pixels * 1e9:.0f} |", flush=True)


if __name__ == "__main__":
    main()
