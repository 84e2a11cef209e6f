"""Hashes of weight files: computing them, recording them, checking an installed file against them."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the manifest writes through this module, so it cannot be imported at load time
    from collections.abc import Mapping

    from torch import Tensor

    from image_enhancer.weights.manifest import WeightsFile

SIDECAR_SUFFIX = ".sha256"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_digest(state: Mapping[str, Tensor], salt: str) -> str:
    """sha256 of ``salt`` and a state dict's content (names, shapes and float32 values), independent of
    the file form it came from: the cache key of files generated from weights."""
    import torch

    digest = hashlib.sha256(salt.encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; weights are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_hash(path: Path, digest: str) -> None:
    """Remember the hash of a file converted from a verified source whose result the manifest can't pin
    (e.g. a release `.pth` converted on this machine)."""
    write_atomically(sidecar_path(path), f"{digest}  {path.name}\n".encode())


def accepted_hashes(spec: WeightsFile, path: Path) -> set[str]:
    accepted = {spec.sha256} if spec.sha256 else set()
    sidecar = sidecar_path(path)
    recorded = sidecar.read_text(encoding="utf-8").split() if sidecar.is_file() else []
    if recorded:
        accepted.add(recorded[0])
    return accepted


def problem_with(spec: WeightsFile, path: Path) -> str | None:
    """None if `path` holds the expected bytes, else why not (missing / no known hash / mismatch)."""
    if not path.is_file():
        return "missing"
    accepted = accepted_hashes(spec, path)
    if not accepted:
        return f"{path.name}: no known sha256 to verify against"
    actual = sha256_file(path)
    if actual not in accepted:
        return f"{path.name}: sha256 {actual[:16]}… does not match the expected {sorted(accepted)[0][:16]}…"
    return None
