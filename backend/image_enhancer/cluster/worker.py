"""One enhancer of a cluster batch: a Ray Data actor that loads the model once and enhances one file per
call, with the local batch's rules (image_enhancer.batch: output names, never writing an input, never
replacing an output without --overwrite; image_enhancer.imagefiles: formats, bit depth, ICC and EXIF,
outputs published whole) and the manifest's (image_enhancer.cluster.manifest: what is done is not
redone). A file that fails is returned as a failed row; the batch goes on.

No Ray here: Ray runs the class; the tests can too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from image_enhancer.cluster.manifest import DONE, PENDING, Manifest, content_hash, job_key
from image_enhancer.request import EnhanceOptions

# The columns of a result row.
RESULT_FIELDS = ("source", "output", "status", "message", "seconds", "megapixels")


@dataclass(frozen=True)
class WorkerSettings:
    """What every actor of a batch is built with (pickled once per actor)."""

    options: EnhanceOptions  # the model name already resolved
    output_root: str  # the output folder; the manifest lives in it
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    threads: int | None = None  # CPU threads of the engine (None: PyTorch's default)
    max_output_pixels: int | None = None
    overwrite: bool = False
    compare: bool = False
    # The batch's local inputs by (device, inode): no output may be one of them by any route.
    inputs: dict[tuple[int, int], Path] = field(default_factory=dict)

    def key_settings(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "device": self.device, "precision": self.precision,
                "runtime": self.runtime}


def is_uri(source: str) -> bool:
    return "://" in source


def read_source(source: str) -> bytes:
    """The bytes of a local file, or of a file that pyarrow's file systems reach (s3://, gs://, file://,
    hdfs://; fsspec-backed ones too where the package is installed)."""
    if not is_uri(source):
        return Path(source).read_bytes()
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(source)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


class EnhanceWorker:
    """Ray Data's callable class: `__call__` takes a batch of rows with "source" and "target" columns."""

    def __init__(self, settings: WorkerSettings) -> None:
        from image_enhancer.batch import _batch_errors
        from image_enhancer.engine.enhancer import Enhancer
        from image_enhancer.weights.integrity import state_digest
        from image_enhancer.weights.store import ModelStore

        self.settings = settings
        store = ModelStore()
        limit = settings.max_output_pixels
        limits = {} if limit is None else {"max_output_pixels": limit}
        self.enhancer = Enhancer(
            store, device=settings.device, precision=settings.precision, runtime=settings.runtime,
            threads=settings.threads, **limits,
        )
        options = settings.options
        digests = []
        if not options.faces_only:  # faces only runs no enhancement model
            loaded = store.get(options.model, options.strength)
            digests.append(state_digest(loaded.module.state_dict(), ""))
        self.face_pass = None
        if options.faces:
            from image_enhancer.faces.pipeline import FacePass
            from image_enhancer.weights.integrity import sha256_file

            self.face_pass = FacePass(store.models_dir, store.weights_dir)
            # Other face weights under the same name are other work: the file's hash is in the key.
            digests.append(sha256_file(self.face_pass.models.path_of(options.face_model)))
        self.key = job_key("+".join(digests), settings.key_settings())
        self.root = Path(settings.output_root)
        self.manifest = Manifest(self.root)
        self.done = self.manifest.done(self.key)
        self.log = self.manifest.writer()
        self._claims, self._claims_version = self.manifest.claims(self.key), self.manifest.version()
        self.errors = _batch_errors(remote=False)
        self.host = socket.gethostname()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.process(str(s), str(t)) for s, t in zip(batch["source"], batch["target"], strict=True)]
        return {name: np.array([row[name] for row in rows]) for name in RESULT_FIELDS}

    def process(self, source: str, target: str) -> dict[str, Any]:
        started = time.monotonic()
        target_path = Path(target)
        output = target_path.relative_to(self.root).as_posix()

        def row(status: str, message: str = "", megapixels: float = 0.0) -> dict[str, Any]:
            seconds = time.monotonic() - started
            return {"source": source, "output": output, "status": status, "message": message,
                    "seconds": seconds, "megapixels": megapixels}

        try:
            if not is_uri(source):
                from image_enhancer.batch import check_regular_file

                check_regular_file(Path(source))  # a named pipe or a device would block the actor
            data = read_source(source)
            digest = content_hash(data)
            if (digest, output) in self.done:
                return row("skipped")
            exists = target_path.exists() or target_path.is_symlink()
            if exists and self._claimed(digest, output):
                # Published whole by a run that stopped before recording it (or by this run's attempt on
                # an actor that died): it is done.
                self._record(DONE, digest, output, source)
                return row("skipped", "finished by an earlier attempt")
            megapixels, note = self._enhance(source, data, digest, target_path, output)
            return row("done", note, megapixels)
        except self.errors as error:
            return row("failed", str(error))

    def _enhance(self, source: str, data: bytes, digest: str, target: Path, output: str) -> tuple[float, str]:
        """Enhance one input into `target` (and its comparison picture), with the face pass after it when
        asked (or alone, for faces only); returns the output megapixels and what the face pass did."""
        from image_enhancer.batch import check_writable, side_by_side
        from image_enhancer.imagefiles import ImageFile, write_image
        from image_enhancer.publish import describe_write_error

        settings = self.settings
        compare = target.with_name(target.stem + "_compare.png") if settings.compare else None
        for path in filter(None, (target, compare)):
            check_writable(path, settings.inputs, settings.overwrite)
        self._record(PENDING, digest, output, source)
        image = self._decode(source, data)
        options = settings.options
        result = image.pixels if options.faces_only else self.enhancer.enhance(image.pixels, options)
        note = ""
        if self.face_pass is not None:
            result = self.face_pass(image.pixels, result, options)
            note = f"faces: {self.face_pass.last_report.message()}" if self.face_pass.last_report else ""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise describe_write_error(error, target) from error
        write_image(target, replace(image, pixels=result), overwrite=settings.overwrite)
        if compare is not None:
            picture = ImageFile(side_by_side(image.pixels, result), image.icc_profile)
            write_image(compare, picture, overwrite=settings.overwrite)
        self._record(DONE, digest, output, source)
        return result.shape[0] * result.shape[1] / 1e6, note

    def _decode(self, source: str, data: bytes):  # noqa: ANN202 - an ImageFile
        from image_enhancer.imagefiles import read_image

        limit = self.enhancer.max_pixels
        if not is_uri(source):
            return read_image(Path(source), limit)
        # The readers pick their decoder by suffix and read from a path: a private copy beside nothing.
        suffix = PurePosixPath(source.split("://", 1)[1]).suffix
        with tempfile.TemporaryDirectory(prefix="image-enhancer-") as folder:
            copy = Path(folder) / f"input{suffix}"
            copy.write_bytes(data)
            return read_image(copy, limit)

    def _claimed(self, digest: str, output: str) -> bool:
        """Whether any run began or finished this output; the manifest is read again only when it has
        grown since (another actor's record), so a folder of foreign outputs costs one read, not one each."""
        if (digest, output) not in self._claims and self.manifest.version() != self._claims_version:
            self._claims, self._claims_version = self.manifest.claims(self.key), self.manifest.version()
        return (digest, output) in self._claims

    def _record(self, state: str, digest: str, output: str, source: str) -> None:
        self.log.write(state, self.key, digest, output, source=source, host=self.host, pid=os.getpid())
        if state == DONE:
            self.done.add((digest, output))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.log.close()
