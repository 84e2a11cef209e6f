"""ModelStore: from a model name (and optional strength) to a ready network.

Files are hash-verified the first time they are read; loaded networks and blended (interpolated)
networks are kept in one small LRU cache, with strengths rounded to 0.01 so that a slider never
rebuilds weights per tile or per request. Safe to call from several threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from image_enhancer.models.descriptor import LoadedModel
from image_enhancer.models.registry import load_model
from image_enhancer.paths import weights_dir as default_weights_dir
from image_enhancer.weights.integrity import problem_with
from image_enhancer.weights.interpolation import interpolate
from image_enhancer.weights.manifest import Manifest, ModelEntry, load_manifest
from image_enhancer.weights.provision import model_path
from image_enhancer.weights.safe_load import WeightsError, load_state_dict

INSTALL_COMMAND = "python install.py"


class ModelNotFoundError(LookupError):
    """No model of that name is listed in the manifest."""


class ModelNotInstalledError(LookupError):
    """The model is listed but its weights are not in the user cache."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    scale: int
    installed: bool
    has_strength: bool
    precisions: tuple[str, ...]
    license: str
    description: str
    is_default: bool


# Cache key: (model name, strength rounded to 0.01 or None for the plain network).
_Key = tuple[str, float | None]


class ModelStore:
    def __init__(
        self, manifest: Manifest | None = None, weights_dir: Path | None = None, max_loaded: int = 3
    ) -> None:
        self.manifest = manifest or load_manifest()
        self.weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
        self.max_loaded = max(1, max_loaded)
        self._models: OrderedDict[_Key, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._build_locks: dict[_Key, threading.Lock] = {}
        # Files already hashed, by (path, size, mtime): re-reading after eviction skips the hash.
        self._verified: set[tuple[str, int, int]] = set()

    @property
    def default_model(self) -> str:
        return self.manifest.default.name

    def path_of(self, name: str) -> Path:
        return model_path(self._entry(name), self.weights_dir)

    def _entry(self, name: str) -> ModelEntry:
        entry = self.manifest.get(name)
        if entry is None:
            raise ModelNotFoundError(
                f"unknown model {name!r}; available: {', '.join(self.manifest.names())}"
            )
        return entry

    def _installed(self, entry: ModelEntry) -> bool:
        return model_path(entry, self.weights_dir).is_file()

    def _has_strength(self, entry: ModelEntry) -> bool:
        return entry.pair is not None and all(
            self._installed(self._entry(member)) for member in entry.pair.values()
        )

    def list(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=e.name,
                architecture=e.architecture,
                scale=e.scale,
                installed=self._installed(e),
                has_strength=self._has_strength(e),
                precisions=e.precisions,
                license=e.license,
                description=e.description,
                is_default=e.default,
            )
            for e in self.manifest.models
        ]

    def get(self, name: str, strength: float | None = None) -> LoadedModel:
        entry = self._entry(name)
        if strength is not None:
            if entry.pair is None:
                raise ValueError(f"model {name!r} has no PSNR/GAN pair, so it takes no strength")
            if not 0.0 <= strength <= 1.0:
                raise ValueError(f"strength must be between 0 and 1, not {strength}")
            strength = round(strength, 2)
        key: _Key = (name, strength)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            build_lock = self._build_locks.setdefault(key, threading.Lock())
        # One thread builds a given key; others asking for it wait here, not on the whole store.
        with build_lock:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            model = load_model(self._blended(entry, strength) if strength is not None else self._read(entry))
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.max_loaded:
                    self._models.popitem(last=False)
                self._build_locks.pop(key, None)
            return model

    def _blended(self, entry: ModelEntry, strength: float) -> dict[str, Tensor]:
        assert entry.pair is not None
        psnr = self._read(self._entry(entry.pair["psnr"]))
        gan = self._read(self._entry(entry.pair["gan"]))
        return interpolate(psnr, gan, strength)

    def _read(self, entry: ModelEntry) -> dict[str, Tensor]:
        path = model_path(entry, self.weights_dir)
        if not path.is_file():
            raise ModelNotInstalledError(
                f"model {entry.name!r} is not installed (expected {path}); "
                f"install it with: {INSTALL_COMMAND} --models {entry.name}"
            )
        stat = path.stat()
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        if stamp not in self._verified:
            problem = problem_with(entry.weights, path)
            if problem is not None:
                raise WeightsError(
                    f"model {entry.name!r}: {problem}; reinstall it with: "
                    f"{INSTALL_COMMAND} --models {entry.name}"
                )
            self._verified.add(stamp)
        return load_state_dict(path)
