"""A GIMP round trip: one layer through the AI Enhance plug-in in the real GIMP 3, split by stage.

    sudo python bench/bench_gimp_roundtrip.py                    # 1024x1024 RGB at x4, compact model
    sudo python bench/bench_gimp_roundtrip.py --side 512 --model realesrgan-x4plus

Runs GIMP 3 in the Debian chroot from `.ci/gimp-chroot.sh` (root needed) against a backend on the
host's loopback, with the plug-in's timing switch on. The plug-in reports, for the layer:

- read: GEGL buffer -> bytes in the layer's precision (GIMP I/O);
- upload: from the call's start until the server has every byte and has queued the job;
- server: queued until the engine's last progress event (model loading when not cached, the model,
  tiling, colour and alpha work);
- download: the result's bytes from the server's last event to the client's last byte;
- scale: GIMP scaling the canvas and the other layers with its interpolation (x2, x4 only);
- write: the new layer, bytes -> GEGL buffer (GIMP I/O).

GIMP's own start and the image set-up are not part of the round trip and are shown separately.

With ``--estimate``, the backend first runs the job the dialog's preview sends (its 384-pixel "after" at
1:1, as when a person presses OK), then the time the dialog shows is asked of the backend by the
plug-in's own code (EstimateTime for the layer's size, which times the model first where it never
measured it), and printed against the actual round trip:

    sudo python bench/bench_gimp_roundtrip.py --side 1024 --height 768 --scale x2 \
        --model realesrgan-x4plus --estimate
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gimp"))
from chroot_gimp import GIMP_VERSIONS, ChrootGimp, build_chroot, free_address  # noqa: E402

from image_enhancer.client.grpc_client import EnhancerClient  # noqa: E402

TIMINGS = "AI_ENHANCE_TIMINGS"
GIMP_TIMEOUT_S = 3 * 3600  # x4plus on a large layer takes many minutes on two cores


PLUGIN = REPO / "gimp_plugin" / "ai_enhance"
PREVIEW_SIDE = 384  # the preview's "after" picture, in output pixels (preview.PREVIEW_SIDE)


def photo(width: int, height: int) -> np.ndarray:
    """A real photo at `width` x `height` (the test photo, resized)."""
    source = Image.open(REPO / "tests" / "data" / "forest_256.png").convert("RGB")
    return np.ascontiguousarray(np.asarray(source.resize((width, height), Image.Resampling.BICUBIC)))


def dialog_estimate(address: str, model: str, size: tuple[int, int], scale: int) -> float | None:
    """The seconds the dialog shows for this layer: the plug-in's own call (its time_estimate module, as
    the dialog uses it) to the backend's EstimateTime, after the preview's job has run."""
    sys.path.insert(0, str(PLUGIN))
    import time_estimate  # the plug-in's module (no GIMP)

    from image_enhancer.request import EnhanceOptions

    side = PREVIEW_SIDE // scale
    with EnhancerClient(address) as client:
        client.enhance(photo(side, side).tobytes(), side, side, 3, "u8", model=model, scale=scale)
    job = time_estimate.EstimateJob((time_estimate.LayerWork(*size, 3, False),), EnhanceOptions(model, scale))
    return time_estimate.ask_backend(address, job, lambda: False).seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024, help="width (and height unless --height)")
    parser.add_argument("--height", type=int, help="height (default: --side)")
    parser.add_argument("--estimate", action="store_true", help="the dialog's time estimate against the run")
    parser.add_argument("--scale", default="x4", choices=["x1", "x2", "x4"])
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--gimp", default=GIMP_VERSIONS[0], choices=GIMP_VERSIONS, help="GIMP release")
    args = parser.parse_args()

    root = build_chroot(args.gimp)
    address = free_address()
    command = [sys.executable, "-m", "image_enhancer", "serve", "--address", address, "--no-warm-up"]
    backend = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    gimp = ChrootGimp(root, address, ["/usr/bin/false"], args.gimp, timeout=GIMP_TIMEOUT_S)
    try:
        with EnhancerClient(address) as client:
            client.wait_until_serving(timeout=120)
            # Load the model once, so the figures are for a backend that is already warm.
            client.enhance(bytes(32 * 32 * 3), 32, 32, 3, "u8", model=args.model)
            device = client.describe().device_name
            size = (args.side, args.height or args.side)
            scale = int(args.scale[1:])
            estimate = dialog_estimate(address, args.model, size, max(scale, 1)) if args.estimate else None
            if estimate is not None:
                print(f"the dialog's estimate: {estimate:.1f} s", flush=True)  # the job may take long
        started = time.perf_counter()
        arguments = {"model": args.model, "scale": args.scale}
        result = gimp.run_job("roundtrip", photo(*size), env={TIMINGS: "1"}, arguments=arguments)
        wall = time.perf_counter() - started
    finally:
        gimp.remove()
        backend.terminate()
        backend.wait()
    if result["status"] != "success":
        print(f"the plug-in failed: {result.get('error')}", file=sys.stderr)
        return 1
    line = next(line for line in result["output"].splitlines() if line.startswith(TIMINGS))
    timings = json.loads(line.split(" ", 1)[1])
    trip = sum(timings.values())
    width, height = result["image"]
    print(f"{size[0]}x{size[1]} RGB u8 at {args.scale} -> {width}x{height}, {args.model} on {device}")
    stages = [
        ("GIMP I/O: read layer", timings["read_s"]),
        ("transport: upload", timings["upload_s"]),
        ("server (model, tiles, colour)", timings["server_s"]),
        ("transport: download", timings["download_s"]),
        ("GIMP: scale the other layers (interpolation)", timings["scale_image_s"]),
        ("GIMP I/O: new layer, write bytes", timings["write_s"]),
    ]
    for name, seconds in stages:
        print(f"  {name:<46} {seconds:8.2f} s  {100 * seconds / trip:5.1f} %")
    print(f"  {'round trip':<46} {trip:8.2f} s")
    print(f"  {'GIMP start, image set-up, exit (not in trip)':<46} {wall - trip:8.2f} s")
    if args.estimate:
        shown = "not yet measured" if estimate is None else f"{estimate:.1f} s"
        ratio = "" if estimate is None else f", round trip / estimate {trip / estimate:.2f}"
        print(f"  the dialog's estimate: {shown}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
