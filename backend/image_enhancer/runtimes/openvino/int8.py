"""int8 networks for OpenVINO, made by OpenVINO's own post-training quantizer (NNCF), once per weights.

On a CPU with int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX) an int8 compact model runs about twice
as fast as fp32 (bench/README.md). Quantizing is calibrated on photos shipped with the package
(``weights/calibration/``) and then checked on a held-out one: the mean and largest difference from the fp32
network in 8-bit levels, the PSNR against it, and the time of both. The engine's ``auto`` precision
takes the int8 network only when it is within ``BOUND`` and faster; ``--precision int8`` takes it
regardless, and the record says how far it is.

The operations left in float compute in bf16 where the CPU has it natively, as OpenVINO's defaults do
(``float_dtype``): 8–10 % faster than fp32 there for the compact model, 0.02–0.03 levels further from
fp32; the record is measured that way, so the bound judges what runs.

Which operations stay in float is an architecture fact (``int8_float`` in its file under
``architectures/``); only architectures measured within the bound have one.

NNCF takes about 0.7 GB and several seconds to import, so quantizing runs in a child process
(``python -m image_enhancer.runtimes.openvino.int8``) and the engine only reads its result: the
backend's memory stays what it was. The result is cached in the user cache under the sha256 of the
weights, the quantizer's settings and the versions of OpenVINO and NNCF.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from image_enhancer import architectures
from image_enhancer.architectures import graph as g
from image_enhancer.engine.precision import BOUND, Bound, Difference, calibration_photo, name_of
from image_enhancer.runtimes import cpu
from image_enhancer.runtimes.openvino.export import HINTS, networks
from image_enhancer.weights.integrity import state_digest, write_atomically

if TYPE_CHECKING:
    import openvino as ov

    from image_enhancer.models.descriptor import LoadedModel

log = logging.getLogger(__name__)

#: Bumped whenever quantizing or the record changes, so older cache entries are not reused.
INT8_VERSION = 4
#: OpenVINO's operation type of each runtime-neutral kind an architecture keeps in float.
_TYPE_OF = {g.UPSAMPLE: "Interpolate", g.ADD: "Add"}
CALIBRATION_PHOTOS = ("cups_192.png", "forest_256.png")
HELD_OUT_PHOTO = "evening_glow_192.png"
CALIBRATION_WINDOW = 64
CALIBRATION_STRIDE = 32
#: Longest a quantization may take (it is seconds; a stuck child must not hold the engine).
QUANTIZE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Int8Record:
    """What quantizing measured on the held-out photo."""

    mean_levels: float
    max_levels: float
    psnr_db: float
    fp32_seconds: float
    int8_seconds: float

    def within(self, bound: Bound = BOUND) -> bool:
        return self.mean_levels <= bound.mean_levels and self.psnr_db >= bound.min_psnr_db

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / max(self.int8_seconds, 1e-9)

    def pays(self, bound: Bound = BOUND) -> bool:
        """Worth taking by default: within the bound and clearly faster (10 % at least)."""
        return self.within(bound) and self.speedup >= 1.1


def float_dtype() -> torch.dtype:
    """The precision of an int8 network's float operations: bf16 where the CPU computes it natively."""
    return torch.bfloat16 if cpu.native_bf16() else torch.float32


def supports(architecture: str) -> bool:
    return architectures.get(architecture).int8_float is not None


def cache_key(loaded: LoadedModel) -> str:
    import openvino as ov

    dot = "dot" if cpu.native_int8() else "nodot"  # which operations stay float (``_float_scope``)
    versions = f"{ov.get_version()}-{_nncf_version()}"
    settings = f"openvino-int8-{INT8_VERSION}-{name_of(float_dtype())}-{dot}-{versions}"
    return loaded.key(settings, lambda: state_digest(loaded.module.state_dict(), settings))


@cache  # reading a package's metadata takes a millisecond, and every job on a compact model asks
def _nncf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nncf")
    except PackageNotFoundError:
        return "missing"


#: Records read, per record file: written once and never changed (the key names everything they
#: depend on), so every job need not parse one again.
_records: dict[Path, Int8Record] = {}


def cached(key: str, cache_dir: Path) -> tuple[Path, Int8Record] | None:
    """The int8 model's path and record when the weights of ``key`` (``cache_key``) were quantized before."""
    from image_enhancer.safe_json import load_json

    record_path = Path(cache_dir) / f"{key}.json"
    if not record_path.is_file():
        return None
    if record_path not in _records:
        _records[record_path] = Int8Record(**load_json(record_path, max_bytes=4096))
    return record_path.with_suffix(".xml"), _records[record_path]


def quantize(loaded: LoadedModel, fp32_model: ov.Model, cache_dir: Path) -> tuple[Path, Int8Record]:
    """Quantize ``fp32_model`` (``loaded``'s network) in a child process, cache and return the result."""
    import openvino as ov

    if not supports(loaded.descriptor.architecture):
        raise ValueError(f"no int8 version is made for {loaded.descriptor.architecture} networks")
    key = cache_key(loaded)  # a sha256 over every weight: computed once
    known = cached(key, cache_dir)
    if known is not None:
        return known
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = cache_dir / f".{key}.{os.getpid()}.fp32.xml"
    log_file = source.with_suffix(".log")
    ov.save_model(fp32_model, source, compress_to_fp16=False)
    try:
        command = [
            sys.executable, "-m", __name__,
            str(source), str(cache_dir / f"{key}.xml"), loaded.descriptor.architecture,
        ]  # fmt: skip
        # NNCF_CI: NNCF sends usage statistics unless this is set; quantizing a user's model sends nothing.
        env = {**os.environ, "NNCF_CI": "1"}
        # Output to a file, not a pipe: a child whose parent ended meanwhile still finishes and caches.
        with open(log_file, "w+", encoding="utf-8") as output:
            done = subprocess.run(
                command, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=QUANTIZE_TIMEOUT_S
            )
            output.seek(0)
            if done.returncode != 0:
                raise RuntimeError(f"int8 quantization failed: {output.read().strip()[-800:]}")
    finally:
        for leftover in (source, source.with_suffix(".bin"), log_file):
            leftover.unlink(missing_ok=True)
    known = cached(key, cache_dir)
    if known is None:
        raise RuntimeError("int8 quantization wrote no result")
    return known


#: Network output pixels of a job from which ``auto`` makes a missing int8 version before running it:
#: at 64 MP (a 4 MP photo ×4) the half of the fp32 time it saves exceeds the seconds it takes to make.
INT8_MAKE_PIXELS = 64_000_000
# Keys of int8 versions whose making failed in this process: not tried again for every job.
_int8_failed: set[str] = set()


def int8_network(loaded: LoadedModel, cache_dir: Path, precision: str, job_pixels: int = 0) -> Path | None:
    """Where the int8 version of ``loaded``'s network to run lies, or None for the float one
    (``int8_version``'s path)."""
    version = int8_version(loaded, cache_dir, precision, job_pixels)
    return version[0] if version is not None else None


def int8_version(
    loaded: LoadedModel, cache_dir: Path, precision: str, job_pixels: int = 0
) -> tuple[Path, Int8Record] | None:
    """The int8 version of ``loaded``'s network to run and its record, or None for the float one.

    ``int8`` asks for it (made now if need be: seconds, once per weights). ``auto`` takes it when its
    record shows it within the bound and faster; a missing one is made first only for a job of
    ``INT8_MAKE_PIXELS`` or more network output pixels, where making it pays within the job, so
    small jobs (previews, each new strength of a pair) never wait for it. Versions live in
    ``cache_dir/int8``.
    """
    architecture = loaded.descriptor.architecture
    if precision not in ("auto", "int8"):
        return None
    if not supports(architecture):
        if precision == "int8":
            log.warning("no int8 version is made for %s networks; running in fp32", architecture)
        return None
    int8_dir = Path(cache_dir) / "int8"
    key = cache_key(loaded)
    try:
        known = cached(key, int8_dir)
        make = precision == "int8" or job_pixels >= INT8_MAKE_PIXELS
        if known is None and make and key not in _int8_failed:
            log.info("making the int8 version of this %s network (once per weights)", architecture)
            known = quantize(loaded, networks(loaded, cache_dir)[0].model, int8_dir)
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as why:
        _int8_failed.add(key)
        log.warning("no int8 version of this %s network (%s); running in fp32", architecture, why)
        return None
    if known is None:
        return None
    path, record = known
    if precision == "auto" and not record.pays():
        return None
    if precision == "int8" and not record.within():
        log.warning(
            "int8 is %.2f levels off fp32 on average (largest %.0f, %.1f dB) for this network",
            record.mean_levels, record.max_levels, record.psnr_db,
        )  # fmt: skip
    return path, record


def calibration_windows() -> list[np.ndarray]:
    """Overlapping windows of the calibration photos: the activations quantization ranges come from."""
    windows = []
    for name in CALIBRATION_PHOTOS:
        photo = calibration_photo(name)
        height, width = photo.shape[-2:]
        for top in range(0, height - CALIBRATION_WINDOW + 1, CALIBRATION_STRIDE):
            for left in range(0, width - CALIBRATION_WINDOW + 1, CALIBRATION_STRIDE):
                window = photo[..., top : top + CALIBRATION_WINDOW, left : left + CALIBRATION_WINDOW]
                windows.append(np.ascontiguousarray(window))
    return windows


def _float_scope(model: ov.Model, architecture: str) -> object:
    """NNCF's ignored scope: the operations of ``model`` that stay in float (the architecture's
    ``int8_float``, and its last convolution where the CPU lacks int8 dot products)."""
    import nncf

    rule = architectures.get(architecture).int8_float
    if rule is None:
        raise ValueError(f"no int8 version is made for {architecture} networks")
    operations = list(model.get_ordered_ops())
    convolutions = [i for i, op in enumerate(operations) if op.get_type_name() == "Convolution"]
    kept_convolutions = [convolutions[0]] if rule.first_convolution else []
    if rule.last_convolution or not cpu.native_int8():
        # Without int8 dot products (VNNI, AMX) OpenVINO's kernels add pairs of u8×s8 products in
        # saturating 16-bit sums: an AVX2-only EPYC measured 0.50 levels with the last one in float.
        kept_convolutions.append(convolutions[-1])
    names = [operations[index].get_friendly_name() for index in kept_convolutions]
    after_last = operations[convolutions[-1] + 1 :]
    kept = {_TYPE_OF[kind] for kind in rule.kinds_after_last}
    names += [op.get_friendly_name() for op in after_last if op.get_type_name() in kept]
    return nncf.IgnoredScope(names=names)


def _compiled(model: ov.Model, shape: tuple[int, ...], dtype: torch.dtype) -> object:
    import openvino as ov

    reshaped = model.clone()
    reshaped.reshape(list(shape))
    config = {"INFERENCE_PRECISION_HINT": HINTS[dtype], "NUM_STREAMS": 1}
    return ov.Core().compile_model(reshaped, "CPU", config).create_infer_request()


def _timed_outputs(requests: dict[str, object], batch: np.ndarray, repeats: int = 3) -> dict[str, tuple]:
    """Each request's output on ``batch`` and its best time, the requests run in turn (same conditions)."""
    best = dict.fromkeys(requests, float("inf"))
    for request in requests.values():
        request.infer({0: batch})  # the first run allocates
    for _ in range(repeats):
        for name, request in requests.items():
            started = time.perf_counter()
            request.infer({0: batch})
            best[name] = min(best[name], time.perf_counter() - started)
    return {
        name: (request.get_output_tensor(0).data.copy(), best[name]) for name, request in requests.items()
    }


def measure(int8_model: ov.Model, fp32_model: ov.Model) -> Int8Record:
    """Compare the int8 network with the fp32 one on the held-out photo, in 8-bit levels and time."""
    photo = calibration_photo(HELD_OUT_PHOTO)
    requests = {
        "fp32": _compiled(fp32_model, photo.shape, torch.float32),
        "int8": _compiled(int8_model, photo.shape, float_dtype()),
    }
    results = _timed_outputs(requests, photo)
    difference = Difference.between(results["int8"][0], results["fp32"][0])
    return Int8Record(
        mean_levels=difference.mean_levels,
        max_levels=difference.max_levels,
        psnr_db=difference.psnr_db,
        fp32_seconds=results["fp32"][1],
        int8_seconds=results["int8"][1],
    )


def _quantize_here(source: Path, target: Path, architecture: str) -> None:
    """The child process's work: quantize the IR at ``source``, measure it, save model then record."""
    import nncf
    import openvino as ov

    fp32_model = ov.Core().read_model(source)
    windows = calibration_windows()
    int8_model = nncf.quantize(
        fp32_model,
        nncf.Dataset(windows),
        subset_size=len(windows),
        ignored_scope=_float_scope(fp32_model, architecture),
    )
    record = measure(int8_model, fp32_model)
    partial = target.with_name(f".{target.stem}.{os.getpid()}.part.xml")
    ov.save_model(int8_model, partial, compress_to_fp16=False)
    os.replace(partial.with_suffix(".bin"), target.with_suffix(".bin"))
    os.replace(partial, target)
    # Written last: its presence means the model files beside it are complete.
    write_atomically(target.with_suffix(".json"), json.dumps(asdict(record)).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="quantize an OpenVINO model to int8 (used by the engine)")
    parser.add_argument("source", type=Path, help="the fp32 model (.xml)")
    parser.add_argument("target", type=Path, help="where the int8 model (.xml) and its record (.json) go")
    parser.add_argument("architecture", choices=sorted(a.name for a in architectures.ALL if a.int8_float))
    args = parser.parse_args(argv)
    _quantize_here(args.source, args.target, args.architecture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
