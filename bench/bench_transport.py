"""The cost of moving the bytes: an RGBA image up and its x4 (by default 4096x4096, 64 MiB) result back.

Runs the same request three ways against the same model: in process (`Enhancer.enhance`), through a
real loopback gRPC server with the compiled client (grpcio), and with the pure-Python client (grpclib +
pure-Python protobuf, in a child process that cannot load compiled wheels' protobuf/multidict builds).

Transport is timed from the progress events the server streams, so the model's time never enters it:

- upload: from the call's start to the "queued" event, which the server sends once every byte has
  arrived and the job is queued;
- download: from the engine's last event ("finishing" done) to the last result byte in the client:
  the server's array->bytes conversion, chunking, the wire, and the client's assembly.

The share is (upload + download) / total call time. The in-process time of the same work is printed
too; total minus in-process is a second, noisier estimate of the overhead.

    python bench/bench_transport.py                      # 1024x1024 RGBA -> 4096x4096
    python bench/bench_transport.py --side 512 --scale 8  # same bytes back, a quarter of the model work
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MODEL = "realesr-animevideov3"

# Runs in the child process: one call through the pure-Python client, timings as JSON.
LITE_CHILD = r"""
import json, sys, time
from image_enhancer.client.lite import LiteClient
address, model = sys.argv[1], sys.argv[3]
side, scale, runs = int(sys.argv[2]), float(sys.argv[4]), int(sys.argv[5])
data = sys.stdin.buffer.read()
from google.protobuf.internal import api_implementation
assert api_implementation.Type() == "python", api_implementation.Type()
out = []
with LiteClient(address) as client:
    for _ in range(runs):
        marks = {}
        def mark(event):
            key = event.stage if event.stage != "finishing" or event.done < event.total else "finished"
            marks.setdefault(key, time.perf_counter())
        start = time.perf_counter()
        info, result = client.enhance(data, side, side, 4, "u8", model=model, scale=scale,
                                      alpha_mode="bicubic", on_progress=mark, timeout=3600)
        end = time.perf_counter()
        out.append(dict(total=end - start, upload=marks["queued"] - start, download=end - marks["finished"],
                        result_bytes=len(result)))
print(json.dumps(out))
"""


def compiled_run(address: str, data: bytes, side: int, scale: float) -> dict:
    from image_enhancer.client.core import ProgressEvent
    from image_enhancer.client.grpc_client import EnhancerClient

    marks: dict[str, float] = {}

    def mark(event: ProgressEvent) -> None:
        key = event.stage if event.stage != "finishing" or event.done < event.total else "finished"
        marks.setdefault(key, time.perf_counter())

    with EnhancerClient(address) as client:
        start = time.perf_counter()
        _, result = client.enhance(
            data,
            side,
            side,
            4,
            "u8",
            model=MODEL,
            scale=scale,
            alpha_mode="bicubic",
            on_progress=mark,
            timeout=3600,
        )
        end = time.perf_counter()
    return dict(
        total=end - start,
        upload=marks["queued"] - start,
        download=end - marks["finished"],
        result_bytes=len(result),
    )


def lite_runs(address: str, data: bytes, side: int, scale: float, runs: int) -> list[dict]:
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "MULTIDICT_NO_EXTENSIONS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", LITE_CHILD, address, str(side), MODEL, str(scale), str(runs)],
        input=data,
        env=env,
        capture_output=True,
        check=True,
    )
    return json.loads(child.stdout)


def report(name: str, run: dict, input_bytes: int, local: float) -> None:
    mb = 1e6
    transport = run["upload"] + run["download"]
    print(
        f"{name:<22} total {run['total']:7.2f} s | upload {run['upload']:6.3f} s "
        f"({input_bytes / mb / run['upload']:7.0f} MB/s) | download {run['download']:6.3f} s "
        f"({run['result_bytes'] / mb / run['download']:7.0f} MB/s) | transport {transport:6.3f} s = "
        f"{100 * transport / run['total']:4.1f}% of the call | "
        f"total - in-process {run['total'] - local:+6.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=1024, help="input width and height (default 1024)")
    parser.add_argument("--scale", type=float, default=4.0, help="output scale (default 4: the model's own)")
    parser.add_argument("--runs", type=int, default=2, help="calls per client; the best is reported")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
    from image_enhancer.server.app import serve
    from image_enhancer.weights.store import ModelStore

    enhancer = Enhancer(ModelStore(), device=args.device)
    pixels = np.random.default_rng(0).integers(0, 256, (args.side, args.side, 4), dtype=np.uint8)
    data = pixels.tobytes()
    options = EnhanceOptions(model=MODEL, scale=args.scale, alpha_mode="bicubic")
    enhancer.enhance(pixels[:64, :64], options)  # load and warm the model

    local = []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = enhancer.enhance(pixels, options)
        local.append(time.perf_counter() - start)
    out_side = result.shape[0]
    print(
        f"{MODEL} on {enhancer.compute.describe()}: {args.side}x{args.side} RGBA u8 "
        f"({len(data) / 1e6:.1f} MB) -> "
        f"{out_side}x{out_side} ({result.nbytes / 1e6:.1f} MB); best of {args.runs}"
    )
    print(f"{'in process':<22} total {min(local):7.2f} s")
    del result

    running = serve(enhancer, "127.0.0.1:0", warm_up=[MODEL])
    try:
        running.wait_until_ready(600)
        compiled = [compiled_run(running.address, data, args.side, args.scale) for _ in range(args.runs)]
        report("grpcio client", min(compiled, key=lambda r: r["download"]), len(data), min(local))
        lite = lite_runs(running.address, data, args.side, args.scale, args.runs)
        report("pure-Python client", min(lite, key=lambda r: r["download"]), len(data), min(local))
    finally:
        running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
