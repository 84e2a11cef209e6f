"""Enhancing files and folders from the command line, in process or through a running server.

One bad file is reported and the batch goes on; an input is never overwritten, and an output only with
--overwrite, even when another run writes into the same folder at the same time (image_enhancer.publish).
Only regular files are read: a named pipe, socket or device would block the batch or never end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import stat
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
    BandedFile,
    ImageFile,
    ImageFileError,
    read_image,
    to_uint8,
    write_image,
    write_image_as_made,
)
from image_enhancer.publish import describe_write_error, remove_stale_temporaries
from image_enhancer.request import DEFAULT_FACE_STRENGTH, EnhanceOptions

# How long `--server` waits for a server that answers but is still loading its models.
SERVER_WARM_UP_S = 120.0
# Each file's bar: percent of the work, time spent and time left (no "tile/s": a job may be one tile),
# and the stage as the postfix.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, {remaining} left{postfix}"

ProgressCallback = Callable[[str, int, int], None]
EnhanceFunction = Callable[[np.ndarray, ProgressCallback], np.ndarray]
# The same, handing the result to the file band by band when it can (and returning None; see
# Enhancer.enhance's rows), else returning it whole.
BandedEnhanceFunction = Callable[[np.ndarray, ProgressCallback, BandedFile | None], np.ndarray | None]


@dataclass(frozen=True)
class Enhance:
    run: EnhanceFunction
    max_input_pixels: int  # larger files are refused from their header, before they are decoded
    run_into: BandedEnhanceFunction | None = None  # where the result can be written as it is made


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def collect_jobs(
    inputs: list[str], output: str, suffix: str | None, recursive: bool, skipped: list[str] | None = None
) -> list[Job]:
    """Pair each input image with its output path. Raises ValueError for unusable arguments.

    Entries of a folder that are named like images but are not regular files (a named pipe, a socket, a
    device, a folder called `x.png`) are left out, with a one-line reason appended to `skipped`; a path
    named on the command line is kept, and refused when its turn comes (check_regular_file)."""
    skipped = [] if skipped is None else skipped
    sources = list(_expand_inputs([Path(item) for item in inputs], recursive, skipped))
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


def _expand_inputs(paths: list[Path], recursive: bool, skipped: list[str]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            for found in sorted(p for p in path.glob(pattern) if p.suffix.lower() in READABLE_SUFFIXES):
                kind = _kind_of(found)
                if kind is None:
                    yield found
                elif kind != "a folder":
                    skipped.append(f"skipped {found}: {kind}, not an image file")
                elif not recursive:  # with --recursive its images are among those found
                    skipped.append(f"skipped {found}: {kind} (pass --recursive to enhance the images in it)")
        elif path.exists():
            yield path
        else:
            raise ValueError(f"{path}: no such file or folder")


def _kind_of(path: Path) -> str | None:
    """None for a regular file (or a link to one), else what it is, in words. Never opens it."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # gone or unreadable: reading it gives the clear error
    return _describe_mode(mode)


def _describe_mode(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def check_regular_file(path: Path) -> None:
    """Refuse an input that is not a regular file before anything reads it: opening a named pipe blocks
    until a writer comes, and a device may never end. Checked from its status first (opening some
    devices has effects), then from the opened file, opened without blocking, so a file swapped for a
    pipe in between is caught too."""
    kind = _kind_of(path)
    if kind is None:
        try:
            handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        except OSError:
            return  # reading it gives the clear error (no such file, permission denied)
        try:
            kind = _describe_mode(os.fstat(handle).st_mode)
        finally:
            os.close(handle)
    if kind is not None:
        raise ValueError(f"{path} is {kind}, not an image file")


def run_batch(args: argparse.Namespace) -> int:
    skipped: list[str] = []
    try:
        jobs = collect_jobs(args.inputs, args.output, args.format, args.recursive, skipped)
        enhance = _make_enhance_function(args)
    except (ValueError, LookupError, ConnectionError, EnhancerError) as error:
        for note in skipped:
            print(note, file=sys.stderr)
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in skipped:
        print(note, file=sys.stderr)
    for folder in sorted({job.target.parent for job in jobs}):
        for stale in remove_stale_temporaries(folder):
            print(f"removed {stale}: a temporary file left by an interrupted run", file=sys.stderr)
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
    check_regular_file(job.source)
    image = read_image(job.source, enhance.max_input_pixels)
    # The side-by-side comparison needs the whole result; otherwise it goes to the file as it is made
    # where the engine allows, through the temporary file publish() fills.
    run_into = enhance.run_into if compare_path is None else None
    with tqdm(desc=label, total=1, bar_format=BAR_FORMAT, leave=True, dynamic_ncols=True) as bar:

        def report(stage: str, done: int, total: int) -> None:
            # The bar counts the engine's work units as a percentage; the stage (queued, loading model,
            # enhancing, finishing) is its postfix. The clock runs from the job's start.
            if stage == "enhancing" and total:
                if bar.total != total:
                    bar.total = total
                bar.update(done - bar.n)
            bar.set_postfix_str(stage)

        if run_into is not None:
            _make_folder(job.target)
            make = functools.partial(run_into, image.pixels, report)
            write_image_as_made(job.target, image, make, overwrite=overwrite)
            return
        result = enhance.run(image.pixels, report)
    _make_folder(job.target)
    # check_writable above saves the work on outputs that exist; the no-replace publish here is what
    # keeps one that appeared since (another run into the same folder, say).
    write_image(job.target, replace(image, pixels=result), overwrite=overwrite)
    if compare_path is not None:
        compare = ImageFile(side_by_side(image.pixels, result), image.icc_profile)
        write_image(compare_path, compare, overwrite=overwrite)


def _make_folder(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise describe_write_error(error, target) from error


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
    """The request the command line asks for; the same for the local engine and a server. ValueError
    for a contradiction the parser cannot see (faces only at another scale)."""
    options = EnhanceOptions(
        model=args.model or "",
        scale=args.scale,
        strength=args.strength,
        tile=args.tile,
        alpha_mode=args.alpha_mode,
        colour_fidelity=args.colour_fidelity,
        auto_contrast=args.auto_contrast,
        **face_options(args),
    )
    options.validate()
    return options


def face_options(args: argparse.Namespace) -> dict[str, object]:
    """The face pass's request fields from `--faces`, `--face-strength`, `--face-model` and
    `--faces-only` (which implies `--faces`)."""
    only = bool(getattr(args, "faces_only", False))
    if not (getattr(args, "faces", False) or only):
        return {}
    strength = args.face_strength if args.face_strength is not None else DEFAULT_FACE_STRENGTH
    return {"faces": True, "face_strength": strength, "face_model": args.face_model or "", "faces_only": only}


def _make_enhance_function(args: argparse.Namespace) -> Enhance:
    if args.server:
        return _remote_enhance_function(args)
    return _local_enhance_function(args)


def _local_enhance_function(args: argparse.Namespace) -> Enhance:
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.estimate import JobShape, Planner
    from image_enhancer.faces.pipeline import FacePass
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
    planner = Planner.for_enhancer(enhancer)
    if not args.model:  # the dialog's device-aware suggestion; -m always wins
        options = replace(options, model=planner.default_model())

    face_pass = FacePass(store.models_dir, store.weights_dir)

    def enhance(
        pixels: np.ndarray, report: ProgressCallback, rows: BandedFile | None = None
    ) -> np.ndarray | None:
        if options.faces_only:  # the face pass alone: no enhancement model runs
            result = pixels
        else:
            # Said before the work starts.
            tqdm.write(planner.announce(JobShape.of(pixels, options), options), file=sys.stderr)
            # The face pass works on the whole result: with it, nothing goes to the file in bands.
            result = planner.run(pixels, options, progress=lambda p: report(p.stage, p.done, p.total),
                                 rows=None if options.faces else rows)  # fmt: skip
            if result is None:  # written to the file already
                return None
        result = face_pass(pixels, result, options, progress=lambda p: report(p.stage, p.done, p.total))
        if face_pass.last_report is not None and options.faces:
            tqdm.write(f"faces: {face_pass.last_report.message()}", file=sys.stderr)
        return result

    return Enhance(enhance, enhancer.max_pixels, run_into=enhance)


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
    client.check_supported(options)  # a server too old for the options: one error before any file is read

    def enhance(pixels: np.ndarray, report: ProgressCallback) -> np.ndarray:
        return client.enhance_array(
            pixels, options, on_progress=lambda p: report(p.stage, p.done, p.total)
        )

    return Enhance(enhance, client.describe().max_pixels)
