"""Enhancing files and folders from the command line, in process or through a running server.

One bad file is reported and the batch goes on; an input is never overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from image_enhancer.client.core import EnhancerError
from image_enhancer.imagefiles import (
    READABLE_SUFFIXES,
    ImageFile,
    ImageFileError,
    read_image,
    to_uint8,
    write_image,
)
from image_enhancer.request import EnhanceOptions

# How long `--server` waits for a server that answers but is still loading its models.
SERVER_WARM_UP_S = 120.0

ProgressCallback = Callable[[str, int, int], None]
EnhanceFunction = Callable[[np.ndarray, ProgressCallback], np.ndarray]


@dataclass(frozen=True)
class Enhance:
    run: EnhanceFunction
    max_input_pixels: int  # larger files are refused from their header, before they are decoded


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def collect_jobs(inputs: list[str], output: str, suffix: str | None, recursive: bool) -> list[Job]:
    """Pair each input image with its output path. Raises ValueError for unusable arguments."""
    sources = list(_expand_inputs([Path(item) for item in inputs], recursive))
    if not sources:
        raise ValueError("no input images found (readable: " + ", ".join(sorted(READABLE_SUFFIXES)) + ")")
    out = Path(output)
    single_file_output = len(sources) == 1 and out.suffix.lower() in READABLE_SUFFIXES and not out.is_dir()
    if single_file_output:
        return [Job(sources[0], out)]
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; with several inputs the output must be a folder")
    jobs = []
    for source in sources:
        new_suffix = "." + suffix.lstrip(".") if suffix else source.suffix
        jobs.append(Job(source, out / (source.stem + new_suffix)))
    targets = [job.target for job in jobs]
    if len(set(targets)) != len(targets):
        raise ValueError("two inputs would write the same output name; give them separate output folders")
    return jobs


def _expand_inputs(paths: list[Path], recursive: bool) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            yield from sorted(p for p in path.glob(pattern) if p.suffix.lower() in READABLE_SUFFIXES)
        elif path.exists():
            yield path
        else:
            raise ValueError(f"{path}: no such file or folder")


def run_batch(args: argparse.Namespace) -> int:
    try:
        jobs = collect_jobs(args.inputs, args.output, args.format, args.recursive)
        enhance = _make_enhance_function(args)
    except (ValueError, LookupError, ConnectionError, EnhancerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failures = 0
    batch_errors = _batch_errors(remote=bool(args.server))
    inputs = input_identities([job.source for job in jobs])
    for index, job in enumerate(jobs, start=1):
        label = f"[{index}/{len(jobs)}] {job.source.name}"
        try:
            _process(job, enhance, label, inputs, args.overwrite, args.compare)
        except batch_errors as error:
            failures += 1
            print(f"{label}: failed: {error}", file=sys.stderr)
    if failures:
        print(f"{failures} of {len(jobs)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def _batch_errors(remote: bool) -> tuple[type[BaseException], ...]:
    """What one file may fail with without stopping the batch."""
    common = (ImageFileError, ValueError, LookupError, MemoryError, OSError, RuntimeError)
    if remote:
        return (*common, EnhancerError)
    from image_enhancer.engine.enhancer import ImageTooLargeError

    return (*common, ImageTooLargeError)


FileIdentity = tuple[int, int]  # (device, inode): one file, whatever path or link names it


def input_identities(sources: list[Path]) -> dict[FileIdentity, Path]:
    """The batch's inputs by file identity, read once for the whole batch."""
    identities = {}
    for source in sources:
        with contextlib.suppress(OSError):  # a source that vanished cannot be overwritten
            status = source.stat()
            identities[(status.st_dev, status.st_ino)] = source
    return identities


def check_writable(target: Path, inputs: dict[FileIdentity, Path], overwrite: bool) -> None:
    """Refuse a target that is an input file by any route (same path, symbolic or hard link, bind
    mount: compared by device and inode), or that exists without `overwrite`."""
    try:
        status = target.stat()
    except OSError:  # nothing there (or a dangling link, which still counts as existing below)
        status = None
    source = inputs.get((status.st_dev, status.st_ino)) if status else None
    if source is not None and target.resolve() == source.resolve():
        raise ValueError(f"{target} is an input of this batch; choose another output path")
    if source is not None:
        raise ValueError(
            f"{target} is the same file as the input {source} (a link to it); choose another output path"
        )
    if (status is not None or target.is_symlink()) and not overwrite:
        raise ValueError(f"{target} exists (pass --overwrite to replace it)")


def _process(
    job: Job, enhance: Enhance, label: str, inputs: dict[FileIdentity, Path], overwrite: bool, compare: bool
) -> None:
    compare_path = job.target.with_name(job.target.stem + "_compare.png") if compare else None
    for target in filter(None, (job.target, compare_path)):
        check_writable(target, inputs, overwrite)
    image = read_image(job.source, enhance.max_input_pixels)
    with tqdm(desc=label, unit="tile", leave=True, dynamic_ncols=True) as bar:

        def report(stage: str, done: int, total: int) -> None:
            # The bar counts tiles; other stages (queued, loading model, finishing) show as its postfix.
            if stage == "enhancing" and total:
                if bar.total != total:
                    bar.reset(total=total)
                bar.update(done - bar.n)
            bar.set_postfix_str(stage)

        result = enhance.run(image.pixels, report)
    job.target.parent.mkdir(parents=True, exist_ok=True)
    write_image(job.target, ImageFile(result, image.icc_profile, image.exif))
    if compare_path is not None:
        write_image(compare_path, ImageFile(side_by_side(image.pixels, result), image.icc_profile))


def side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The input enlarged with bicubic interpolation beside the result, 8-bit, for a fair comparison."""
    before8, after8 = to_uint8(before), to_uint8(after)
    height, width = after8.shape[:2]
    planes = [
        np.asarray(Image.fromarray(before8[:, :, c]).resize((width, height), Image.BICUBIC))
        for c in range(before8.shape[2])
    ]
    enlarged = np.stack(planes, axis=2)
    gap = np.full((height, 8, after8.shape[2]), 255, dtype=np.uint8)
    return np.concatenate([enlarged, gap, after8], axis=1)


def request_options(args: argparse.Namespace) -> EnhanceOptions:
    """The request the command line asks for; the same for the local engine and a server."""
    return EnhanceOptions(
        model=args.model or "",
        scale=args.scale,
        strength=args.strength,
        tile=args.tile,
        alpha_mode=args.alpha_mode,
        colour_fidelity=args.colour_fidelity,
        auto_contrast=args.auto_contrast,
    )


def _make_enhance_function(args: argparse.Namespace) -> Enhance:
    if args.server:
        return _remote_enhance_function(args)
    return _local_enhance_function(args)


def _local_enhance_function(args: argparse.Namespace) -> Enhance:
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.weights.store import ModelStore
    from image_enhancer.wire import find_model

    store = ModelStore()
    options = request_options(args)
    chosen = find_model(store.list(), options.model)  # unknown names: the store's error lists them
    options = replace(options, model=chosen.name) if chosen else options
    limits = {}
    if args.max_output_megapixels is not None:
        limits["max_output_pixels"] = max(1, round(args.max_output_megapixels * 1e6))
    enhancer = Enhancer(store, device=args.device, precision=args.precision, runtime=args.runtime, **limits)
    print(f"device: {enhancer.compute.describe()}", file=sys.stderr)

    def enhance(pixels: np.ndarray, report: ProgressCallback) -> np.ndarray:
        return enhancer.enhance(pixels, options, progress=lambda p: report(p.stage, p.done, p.total))

    return Enhance(enhance, enhancer.max_pixels)


# Options that only the process running the models can honour, with their command-line defaults.
_SERVER_SIDE = {"device": "auto", "runtime": "auto", "precision": "auto", "max_output_megapixels": None}


def _remote_enhance_function(args: argparse.Namespace) -> Enhance:
    from image_enhancer.client.grpc_client import EnhancerClient

    server_side = [f"--{name.replace('_', '-')}" for name, default in _SERVER_SIDE.items()
                   if getattr(args, name) != default]
    if server_side:
        raise ValueError(
            f"{', '.join(server_side)}: with --server these are the server's settings; "
            "pass them to `image-enhancer serve` instead"
        )
    options = request_options(args)
    client = EnhancerClient(args.server, token=args.token)
    # Checked once up front, so a server that is down is one clear error, not one per file.
    try:
        if client.health(timeout=10) != "SERVING":
            client.wait_until_serving(SERVER_WARM_UP_S)
    except EnhancerError as error:
        if error.kind != "unavailable":
            raise
        raise ConnectionError(
            f"{error}; start a server with: image-enhancer serve --address {args.server}"
        ) from None

    def enhance(pixels: np.ndarray, report: ProgressCallback) -> np.ndarray:
        return client.enhance_array(
            pixels, options, on_progress=lambda p: report(p.stage, p.done, p.total)
        )

    return Enhance(enhance, client.describe().max_pixels)
