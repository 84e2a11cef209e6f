"""Engine throughput and peak memory against a Real-ESRGAN-style reference loop (and ncnn), side by side.

Prints, for one model and input size on the current device, output megapixels per second and peak
memory (process RSS on CPU, ``max_memory_allocated`` on CUDA) of:

- ``ours``: ``Enhancer.enhance`` (batched, blended tiles, auto or given tile size);
- ``reference``: the usual per-tile loop, written the way Real-ESRGAN's ``RealESRGANer.tile_process``
  works: the whole padded image moved to the device first, one tile at a time with ``tile_pad`` context
  clamped to the image, padded tiles' centres pasted without blending; fp16 on CUDA, fp32 on CPU;
- ``ncnn`` (with ``--ncnn-param``/``--ncnn-bin``): the same loop on the ncnn runtime with Real-ESRGAN's
  original ``.param``/``.bin`` files, what the popular desktop upscalers ship.

and the largest difference between the outputs, in 8-bit levels. Every variant runs in its own process
so that its memory peak is its own. ``--sweep`` adds the CPU knobs: threads, batch size, tile size and
channels_last.

    python bench/bench_engine.py --model realesr-animevideov3 --size 256
    python bench/bench_engine.py --model realesrgan-x4plus --size 128 --warmup 0 \\
        --ncnn-param models/realesrgan-x4plus.param --ncnn-bin models/realesrgan-x4plus.bin
    python bench/bench_engine.py --model realesr-animevideov3 --size 256 --sweep
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "forest_256.png"


def test_image(size: int) -> np.ndarray:
    """A real photo resized to ``size × size`` (RGB, uint8)."""
    from PIL import Image

    return np.asarray(Image.open(PHOTO).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


# --- the variants, each run in a child process -----------------------------------------------------------


def run_ours(config: dict, image: np.ndarray, store) -> np.ndarray:
    from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer

    enhancer = Enhancer(
        store,
        device=config["device"],
        precision=config["precision"],
        threads=config["threads"],
        batch_size=config["batch"],
        channels_last=config["channels_last"],
    )
    options = EnhanceOptions(model=config["model"], tile=config["tile"])
    store.get(config["model"])  # read and verify the weights outside the timing, as the other variants do
    for _ in range(config["warmup"]):
        enhancer.enhance(image, options)
    return lambda: enhancer.enhance(image, options)


def reference_loop(
    op, image, scale: int, tile: int, tile_pad: int = 10, pre_pad: int = 10, multiple: int = 1, device=None
):
    """Real-ESRGAN's tile loop: whole image on the device, per-tile forward, centres pasted, no blending."""
    import torch
    import torch.nn.functional as F

    img = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None].to(device)
    img = F.pad(img, (0, pre_pad, 0, pre_pad), mode="reflect")
    mod_h, mod_w = (-img.shape[2]) % multiple, (-img.shape[3]) % multiple
    img = F.pad(img, (0, mod_w, 0, mod_h), mode="reflect")
    _, channels, height, width = img.shape
    output = torch.zeros(1, channels, height * scale, width * scale, device=device)
    for y in range(math.ceil(height / tile)):
        for x in range(math.ceil(width / tile)):
            x0, y0 = x * tile, y * tile
            x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
            px0, py0 = max(x0 - tile_pad, 0), max(y0 - tile_pad, 0)
            px1, py1 = min(x1 + tile_pad, width), min(y1 + tile_pad, height)
            out = op(img[:, :, py0:py1, px0:px1])
            ox0, oy0 = (x0 - px0) * scale, (y0 - py0) * scale
            output[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = out[
                :, :, oy0 : oy0 + (y1 - y0) * scale, ox0 : ox0 + (x1 - x0) * scale
            ]
    output = output[:, :, : (height - mod_h - pre_pad) * scale, : (width - mod_w - pre_pad) * scale]
    return (output[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def run_reference(config: dict, image: np.ndarray, store):
    import torch

    from image_enhancer.engine.devices import choose_device

    device = choose_device(config["device"], "pytorch").torch_device
    loaded = store.get(config["model"])
    half = device.type == "cuda"
    module = loaded.module.to(device).half() if half else loaded.module.to(device)

    def op(tile: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(tile.half() if half else tile)

    d = loaded.descriptor

    def run() -> np.ndarray:
        return reference_loop(op, image, d.scale, config["ref_tile"], multiple=d.size_multiple, device=device)

    for _ in range(config["warmup"]):
        run()
    return run


def run_ncnn(config: dict, image: np.ndarray, store):
    import ncnn
    import torch

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = config["threads"] or torch.get_num_threads()
    net.load_param(config["ncnn_param"])
    net.load_model(config["ncnn_bin"])
    scale = store.get(config["model"]).descriptor.scale

    def op(tile: torch.Tensor) -> torch.Tensor:
        pixels = np.ascontiguousarray(tile[0].numpy())  # ncnn's Mat borrows it: keep it alive
        extractor = net.create_extractor()
        extractor.input("data", ncnn.Mat(pixels))
        _, out = extractor.extract("output")
        return torch.from_numpy(np.array(out))[None]

    def run() -> np.ndarray:
        return reference_loop(op, image, scale, config["ref_tile"])

    for _ in range(config["warmup"]):
        run()
    return run


VARIANTS = {"ours": run_ours, "reference": run_reference, "ncnn": run_ncnn}


def child(config: dict) -> None:
    """Run one variant once (after warm-up) and print a JSON line with its figures."""
    import torch

    from image_enhancer.weights.store import ModelStore

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    store = ModelStore()
    image = test_image(config["size"])
    run = VARIANTS[config["variant"]](config, image, store)
    cuda = torch.cuda.is_available() and config["device"] in ("auto", "cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = math.inf
    for _ in range(config["repeat"]):  # the fastest of a few runs: the least disturbed by other work
        start = time.perf_counter()
        output = run()
        if cuda:
            torch.cuda.synchronize()
        seconds = min(seconds, time.perf_counter() - start)
    np.save(config["output"], output)
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_bytes": peak,
                "megapixels": output.shape[0] * output.shape[1] / 1e6,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "threads": torch.get_num_threads(),
            }
        )
    )


def measure(config: dict, workdir: Path) -> dict:
    config = dict(config, output=str(workdir / f"{config['label']}.npy"))
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{config['label']} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["output"] = np.load(config["output"])
    return result


def report(label: str, result: dict, baseline: dict | None, reference_output: np.ndarray | None) -> None:
    rate = result["megapixels"] / result["seconds"]
    peak = result["peak_bytes"] / 2**20
    line = f"{label:<34} {rate:8.4f} MP/s {result['seconds']:8.2f} s  peak {peak:7.0f} MiB"
    if baseline is not None:
        line += f"  speed ×{baseline['seconds'] / result['seconds']:.2f}"
    if reference_output is not None:
        diff = np.abs(result["output"].astype(int) - reference_output.astype(int))
        # Edges differ by design (the reference pads two sides, we mirror all four): show the inside too.
        inside = diff[64:-64, 64:-64]
        line += f"  max diff {diff.max():3d} (inside {inside.max():3d})  mean {diff.mean():.3f}"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (square crop of a photo)")
    parser.add_argument("--tile", type=int, default=0, help="our tile size (0: automatic)")
    parser.add_argument("--ref-tile", type=int, default=128, help="the reference loop's tile size")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--batch", type=int, default=0, help="tiles per forward pass (0: engine default)")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs; the fastest is reported")
    parser.add_argument("--ncnn-param", help="Real-ESRGAN's ncnn .param file for this model")
    parser.add_argument("--ncnn-bin", help="Real-ESRGAN's ncnn .bin file for this model")
    parser.add_argument(
        "--sweep", action="store_true", help="also vary threads, batch, tile and channels_last"
    )
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    base = {
        "model": args.model,
        "size": args.size,
        "tile": args.tile,
        "ref_tile": args.ref_tile,
        "threads": args.threads or None,
        "batch": args.batch or None,
        "device": args.device,
        "precision": args.precision,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "ncnn_param": args.ncnn_param,
        "ncnn_bin": args.ncnn_bin,
        "channels_last": {"auto": None, "on": True, "off": False}[args.channels_last],
    }
    print(
        f"model {args.model}, input {args.size}×{args.size}, reference tile {args.ref_tile}, "
        f"warm-up runs {args.warmup}, best of {args.repeat}, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        reference = measure(dict(base, variant="reference", label="reference"), workdir)
        print(f"device {reference['device']}, {reference['threads']} threads")
        report("reference (Real-ESRGAN loop)", reference, None, None)
        ours = measure(dict(base, variant="ours", label="ours"), workdir)
        report("ours", ours, reference, reference["output"])
        if args.ncnn_param and args.ncnn_bin:
            report(
                "ncnn (same loop)",
                measure(dict(base, variant="ncnn", label="ncnn"), workdir),
                reference,
                reference["output"],
            )
        if args.sweep:
            # Batches only matter with several tiles, so they are swept at a small tile size.
            sweeps = [{"threads": t} for t in (1, 2, 4)] + [{"channels_last": c} for c in (False, True)]
            sweeps += [{"tile": t} for t in (64, 128, 256, 512)] + [
                {"tile": 64, "batch": b} for b in (1, 2, 4, 8)
            ]
            for change in sweeps:
                label = "ours " + " ".join(f"{k}={v}" for k, v in change.items())
                config = dict(base, variant="ours", label=label.replace(" ", "_").replace("=", "-"), **change)
                report(label, measure(config, workdir), reference, ours["output"])


if __name__ == "__main__":
    main()
