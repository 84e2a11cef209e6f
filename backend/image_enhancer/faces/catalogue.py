"""Which face models there are: the official ones in the weights manifest (once installed), and face
models dropped into the models folder, used the same way. Keeps the last restorer loaded."""

from __future__ import annotations

import threading
from pathlib import Path

from image_enhancer.faces.restorer import FaceRestorer, is_face_model, load_restorer
from image_enhancer.paths import user_models_dir, weights_dir
from image_enhancer.request import shorten
from image_enhancer.weights.manifest import ModelEntry, load_face_models
from image_enhancer.weights.safe_load import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    WeightsError,
    load_state_dict,
)


class FaceModelNotFoundError(LookupError):
    """No face model by that name, or none at all."""


class FaceModels:
    """Face models by name. `get("")` is the default: the first official one installed, else the
    first face model in the models folder."""

    def __init__(self, models_dir: Path | None = None, weights: Path | None = None) -> None:
        self.models_dir = Path(models_dir) if models_dir else user_models_dir()
        self.weights_dir = Path(weights) if weights else weights_dir()
        self.official: tuple[ModelEntry, ...] = load_face_models()
        self._lock = threading.Lock()
        self._loaded: tuple[str, tuple[str, int, int], FaceRestorer] | None = None
        self._seen: dict[tuple[str, int, int], bool] = {}  # folder files by stamp: a face model or not

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
        names = []
        try:
            paths = sorted(self.models_dir.iterdir())
        except OSError:
            return []
        for path in paths:
            readable = path.suffix.lower() in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES and path.is_file()
            if readable and self._is_face_file(path):
                names.append(path.stem)
        return names

    def _is_face_file(self, path: Path) -> bool:
        """Whether the file holds a face model; read once per version of the file (listing is frequent)."""
        stat = path.stat()
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        if stamp not in self._seen:
            try:
                self._seen[stamp] = is_face_model(load_state_dict(path))
            except WeightsError:
                self._seen[stamp] = False
        return self._seen[stamp]

    def names(self) -> list[str]:
        """Every usable face model's name, the default (what `get("")` uses) first."""
        installed = list(self._installed())
        return installed + [name for name in self.folder_face_models() if name not in installed]

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
