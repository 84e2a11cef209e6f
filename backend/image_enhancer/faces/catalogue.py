"""Which face models there are: the official ones in the weights manifest (once installed), and face
models dropped into the models folder, used the same way. Keeps the last restorer loaded."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from image_enhancer.faces.restorer import FaceRestorer, face_architecture, load_restorer
from image_enhancer.paths import user_models_dir, weights_dir
from image_enhancer.request import shorten
from image_enhancer.weights.manifest import ModelEntry, load_face_models
from image_enhancer.weights.safe_load import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    WeightsError,
    load_state_dict,
)
from image_enhancer.weights.store import download_size, installable
from image_enhancer.wire import ModelInfo


class FaceModelNotFoundError(LookupError):
    """No face model by that name, or none at all."""


class FaceModels:
    """Face models by name. `get("")` is the default: the first official one installed, else the
    first face model in the models folder. `official`: the manifest's face models (by default the
    packaged manifest's; a server passes its store's, the one InstallModel installs from)."""

    def __init__(
        self,
        models_dir: Path | None = None,
        weights: Path | None = None,
        official: tuple[ModelEntry, ...] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir) if models_dir else user_models_dir()
        self.weights_dir = Path(weights) if weights else weights_dir()
        self.official: tuple[ModelEntry, ...] = load_face_models() if official is None else official
        self._lock = threading.Lock()
        self._loaded: tuple[str, tuple[str, int, int], FaceRestorer] | None = None
        # Folder files by stamp: their face architecture, "" for a file that holds no face model.
        self._seen: dict[tuple[str, int, int], str] = {}

    def _installed(self) -> dict[str, Path]:
        return {e.name: p for e in self.official if (p := self.weights_dir / e.weights.filename).is_file()}

    def _folder(self, name: str) -> Path | None:
        for suffix in (*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES):
            path = self.models_dir / f"{name}{suffix}"
            if path.is_file():
                return path
        return None

    def folder_face_models(self) -> list[str]:
        """The models folder's files that spandrel recognises as face models."""
        return list(self._folder_files())

    def _folder_files(self) -> dict[str, tuple[Path, str]]:
        """The models folder's face model files by name, each with its architecture."""
        found = {}
        try:
            paths = sorted(self.models_dir.iterdir())
        except OSError:
            return {}
        for path in paths:
            readable = path.suffix.lower() in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES and path.is_file()
            architecture = self._face_architecture(path) if readable else ""
            if architecture:
                found[path.stem] = (path, architecture)
        return found

    def _face_architecture(self, path: Path) -> str:
        """The file's face architecture ("" for none); read once per version of the file (listing is
        frequent)."""
        stat = path.stat()
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        if stamp not in self._seen:
            try:
                self._seen[stamp] = face_architecture(load_state_dict(path))
            except WeightsError:
                self._seen[stamp] = ""
        return self._seen[stamp]

    def names(self) -> list[str]:
        """Every usable face model's name, the default (what `get("")` uses) first."""
        installed = list(self._installed())
        return installed + [name for name in self.folder_face_models() if name not in installed]

    def infos(self) -> list[ModelInfo]:
        """Every face model described as the model list describes models: the usable ones in the order
        of `names()` (the default first), then the manifest's not yet installed, with what installing
        each downloads. What a client's catalogue offers."""
        installed = self._installed()
        folder = self._folder_files()
        listed = [self._official_info(e, True) for e in self.official if e.name in installed]
        listed += [
            ModelInfo(
                name,
                architecture,
                1,
                True,
                False,
                ("fp32",),
                "see the file's origin",
                f"Faces — {architecture} from {path.name}",
            )
            for name, (path, architecture) in folder.items()
            if name not in installed
        ]
        listed += [
            self._official_info(e, False)
            for e in self.official
            if e.name not in installed and e.name not in folder
        ]
        return [
            replace(info, is_default=True) if i == 0 and info.installed else info
            for i, info in enumerate(listed)
        ]

    @staticmethod
    def _official_info(entry: ModelEntry, installed: bool) -> ModelInfo:
        return ModelInfo(
            name=entry.name,
            architecture=entry.architecture,
            scale=entry.scale,
            installed=installed,
            has_strength=False,
            precisions=entry.precisions,
            license=entry.license,
            description=entry.description,
            download_bytes=0 if installed else download_size(entry),
            installable=installable(entry),
        )

    def path_of(self, name: str) -> Path:
        installed = self._installed()
        if not name:
            for candidate in [*installed, *self.folder_face_models()]:
                return installed.get(candidate) or self._folder(candidate)  # type: ignore[return-value]
            official = ", ".join(e.name for e in self.official)
            raise FaceModelNotFoundError(
                f"no face model installed: install one of {official}, or put a GFPGAN or RestoreFormer "
                f"file into the models folder ({self.models_dir})"
            )
        if name in installed:
            return installed[name]
        plain = "/" not in name and "\\" not in name and name not in (".", "..")
        path = self._folder(name) if plain else None
        if path is not None:
            return path
        if any(e.name == name for e in self.official):
            raise FaceModelNotFoundError(f"face model {name!r} is not installed")
        raise FaceModelNotFoundError(f"unknown face model {shorten(name)}")

    def get(self, name: str = "") -> tuple[str, FaceRestorer]:
        """The model's name and its ready restorer."""
        path = self.path_of(name)
        stat = path.stat()
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._loaded is not None and self._loaded[1] == stamp:
                return self._loaded[0], self._loaded[2]
            restorer = load_restorer(load_state_dict(path))
            found = next((e.name for e in self.official if path == self.weights_dir / e.weights.filename),
                         path.stem)
            self._loaded = (found, stamp, restorer)
            return found, restorer
