"""The face pass's networks on PyTorch against OpenVINO, on this machine's CPU.

Detection (MTCNN's three networks, ``FaceDetector``) on scikit-image's astronaut at 512² and enlarged
to 1024²; restoration of her aligned 512² face crop by random-weight GFPGAN (the released 1.3/1.4
layout, ``tests/face_models.py``: the real weights have the same graph and cost) and RestoreFormer.
The runtimes take turns, so other work on the machine slows both alike; each figure is the best and
the median of the repeats. "load" is building the network for its runtime with the OpenVINO cache
already filled (the first use converts once: GFPGAN about 2 min on two cores, MTCNN 10 s); "max
diff" is the largest difference of the OpenVINO result from PyTorch's, in 8-bit levels.

    python bench/bench_faces.py                      # detection ×5, GFPGAN ×3, RestoreFormer ×2
    python bench/bench_faces.py --skip restoreformer
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
RUNTIMES = ("pytorch", "openvino")


def timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def figures(seconds: list[float]) -> str:
    return f"{min(seconds):.2f} s (median {statistics.median(seconds):.2f} s)"


def bench_detection(repeats: int) -> None:
    from PIL import Image
    from skimage import data

    from image_enhancer.faces.detect import FaceDetector
    from image_enhancer.faces.face_pass import find_faces

    astronaut = data.astronaut()
    images = {
        "512²": astronaut,
        "1024²": np.asarray(Image.fromarray(astronaut).resize((1024, 1024), Image.BICUBIC)),
    }
    detectors = {}
    for runtime in RUNTIMES:
        load, detectors[runtime] = timed(lambda runtime=runtime: FaceDetector(runtime))
        print(f"detector on {runtime}: load {load:.2f} s, runs on {detectors[runtime].runtimes}")
    print("| image | PyTorch | OpenVINO | faces (PyTorch / OpenVINO) |\n|---|---|---|---|")
    for name, image in images.items():
        times: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
        found = {}
        for _ in range(repeats):
            for runtime in RUNTIMES:
                seconds, found[runtime] = timed(lambda r=runtime, i=image: find_faces(detectors[r], i))
                times[runtime].append(seconds)
        counts = " / ".join(str(len(found[runtime])) for runtime in RUNTIMES)
        print(f"| {name} | {figures(times['pytorch'])} | {figures(times['openvino'])} | {counts} |")


def face_crop(size: int) -> torch.Tensor:
    from skimage import data

    from image_enhancer.engine import pixels
    from image_enhancer.faces import geometry
    from image_enhancer.faces.detect import FaceDetector
    from image_enhancer.faces.face_pass import find_faces

    astronaut = data.astronaut()
    face = find_faces(FaceDetector("pytorch"), astronaut)[0]
    to_crop = geometry.similarity(face.landmarks, geometry.template(size))
    crop = geometry.warp(pixels.to_tensor(astronaut), geometry.invert(to_crop), size, size, "reflection")
    return crop.clamp(0, 1)[None]


def bench_restorer(name: str, state: dict[str, torch.Tensor], repeats: int) -> None:
    from image_enhancer.faces.restorer import load_restorer

    restorers, crop = {}, None
    for runtime in RUNTIMES:
        restorers[runtime] = load_restorer(state, runtime)
        load, chosen = timed(restorers[runtime].network.prepare)
        print(f"{name} on {runtime}: load {load:.2f} s, runs on {chosen}")
        crop = face_crop(restorers[runtime].size) if crop is None else crop
    times: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
    out = {}
    for _ in range(repeats):
        for runtime in RUNTIMES:
            seconds, out[runtime] = timed(lambda runtime=runtime: restorers[runtime].run(crop))
            times[runtime].append(seconds)
    levels = float((out["openvino"] - out["pytorch"]).abs().max()) * 255
    print(f"| {name} per face | {figures(times['pytorch'])} | {figures(times['openvino'])} | "
          f"max diff {levels:.3f} levels |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=0, help="repeats of every case (default: per case)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["detection", "gfpgan", "restoreformer"])
    args = parser.parse_args()
    from face_models import random_gfpgan, random_restoreformer

    from image_enhancer.runtimes.cpu import cpu_features, cpu_name

    print(f"CPU: {cpu_name()} ({cpu_features()}), {torch.get_num_threads()} threads, "
          f"PyTorch {torch.__version__}")
    if "detection" not in args.skip:
        bench_detection(args.repeats or 5)
    if "gfpgan" not in args.skip:
        bench_restorer("GFPGAN", random_gfpgan(), args.repeats or 3)
    if "restoreformer" not in args.skip:
        bench_restorer("RestoreFormer", random_restoreformer(), args.repeats or 2)


if __name__ == "__main__":
    main()
