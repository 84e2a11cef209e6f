"""The record of a cluster batch's work, kept beside its outputs: which inputs (by the sha256 of their
bytes) were enhanced into which output under which settings (`job_key`: the model's weights, the request
and the output's format), so that a rerun does only what is missing and a changed model or option is new
work rather than a silent mix.

A folder of JSON-lines files, one per writing process (`HOST-PID.jsonl`): no two processes ever append
to one file, on any file system, shared or not. Each line is written whole and flushed to the disk before
the step it records goes on; the last line of a process that was killed may be torn and is ignored.

An output is recorded twice: "pending" before it is written, "done" once it is published. Outputs are
published whole (image_enhancer.publish), so a pending output that exists is complete: a rerun records it
done instead of doing it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FOLDER_NAME = ".image-enhancer-manifest"
PENDING, DONE = "pending", "done"


def job_key(weights_digest: str, settings: Mapping[str, Any]) -> str:
    """What makes two results of the same input the same: the weights' content and every setting that
    changes pixels or the file (options, output format, device choice, precision, runtime)."""
    text = json.dumps({"weights": weights_digest, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Manifest:
    """The manifest folder of the output folder `root`."""

    root: Path
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.root) / FOLDER_NAME

    def records(self) -> Iterator[dict[str, Any]]:
        try:
            files = sorted(self.folder.glob("*.jsonl"))
        except OSError:
            return
        for path in files:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:  # the torn last line of a process that was killed
                    continue
                if isinstance(record, dict):
                    yield record

    def done(self, key: str) -> set[tuple[str, str]]:
        """(input hash, output name) of every output recorded done under `key`."""
        records = self.records()
        return {(r["input"], r["output"]) for r in records if r.get("key") == key and r.get("state") == DONE}

    def claims(self, key: str) -> set[tuple[str, str]]:
        """(input hash, output name) of every output begun or finished under `key` by any run: such an
        output's file is ours, and whole if it exists."""
        return {(r["input"], r["output"]) for r in self.records() if r.get("key") == key}

    def version(self) -> tuple[tuple[str, int], ...]:
        """Changes whenever any process has appended to the manifest (a cheap look at file sizes)."""
        try:
            return tuple(sorted((p.name, p.stat().st_size) for p in self.folder.glob("*.jsonl")))
        except OSError:
            return ()

    def writer(self) -> ManifestWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        return ManifestWriter(self.folder / f"{socket.gethostname()}-{os.getpid()}.jsonl")


class ManifestWriter:
    """This process's own manifest file: appends whole lines, each on the disk before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the writer's life

    def write(self, state: str, key: str, input_hash: str, output: str, **extra: Any) -> None:
        record = {"state": state, "key": key, "input": input_hash, "output": output, "time": time.time()}
        record.update(extra)
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
