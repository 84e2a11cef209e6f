"""ModelStore: from a model name (and optional strength) to a ready network.

Files are hash-verified the first time they are read; loaded networks and blended (interpolated)
networks are kept in one small LRU cache, with strengths rounded to 0.01 so that a slider never
rebuilds weights per tile or per request. Safe to call from several threads.

Besides the manifest's models, any supported file in the user models folder is offered under its
file name without suffix (the manifest wins on a name clash): a community model of any architecture
spandrel detects just needs to be dropped there. A pair file there (weights/pairs.py) offers the blend
of two compatible models under its own name, with the strength control.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from image_enhancer.models.descriptor import LoadedModel, ModelDescriptor
from image_enhancer.models.registry import UnsupportedModelError, describe, load_model
from image_enhancer.paths import user_models_dir
from image_enhancer.paths import weights_dir as default_weights_dir
from image_enhancer.request import shorten
from image_enhancer.weights.integrity import problem_with
from image_enhancer.weights.interpolation import IncompatiblePairError, check_compatible, interpolate
from image_enhancer.weights.manifest import Manifest, ModelEntry, load_manifest, model_path
from image_enhancer.weights.pairs import Pair, read_pairs, write_pair
from image_enhancer.weights.safe_load import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    WeightsError,
    load_state_dict,
)
from image_enhancer.wire import ModelInfo

INSTALL_COMMAND = "python install.py"


class ModelNotFoundError(LookupError):
    """No model of that name is listed in the manifest."""


class ModelNotInstalledError(LookupError):
    """The model is listed but its weights are not in the user cache."""


# Cache key: (model name, strength rounded to 0.01 or None for the plain network).
_Key = tuple[str, float | None]


class ModelStore:
    def __init__(
        self,
        manifest: Manifest | None = None,
        weights_dir: Path | None = None,
        max_loaded: int = 3,
        models_dir: Path | None = None,
    ) -> None:
        self.manifest = manifest or load_manifest()
        self.weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
        self.models_dir = Path(models_dir) if models_dir else user_models_dir()
        # Descriptors of user files by (path, size, mtime), so listing reads each file once.
        self._user_descriptors: dict[tuple[str, int, int], ModelDescriptor | str] = {}
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
            names = self.manifest.names() + [n for n in self._user_files() if n not in self.manifest.names()]
            names += [n for n in read_pairs(self.models_dir) if n not in names]
            raise ModelNotFoundError(f"unknown model {shorten(name)}; available: {', '.join(names)}")
        return entry

    def _user_files(self) -> dict[str, Path]:
        if not self.models_dir.is_dir():
            return {}
        suffixes = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
        files = sorted(p for p in self.models_dir.iterdir() if p.suffix.lower() in suffixes and p.is_file())
        return {p.stem: p for p in files}

    def _user_descriptor(self, path: Path) -> ModelDescriptor | str:
        """The file's descriptor, or why it cannot be used."""
        stat = path.stat()
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        if stamp not in self._user_descriptors:
            try:
                self._user_descriptors[stamp] = describe(load_state_dict(path))
            except (WeightsError, UnsupportedModelError) as exc:
                self._user_descriptors[stamp] = str(exc)
        return self._user_descriptors[stamp]

    def _user_infos(self) -> list[ModelInfo]:
        infos = []
        for name, path in self._user_files().items():
            d = self._user_descriptor(path)
            if name in self.manifest.names() or isinstance(d, str):
                continue
            infos.append(
                ModelInfo(name, d.architecture, d.scale, True, False, _precisions(d),
                          "see the file's origin", f"{d.architecture} ×{d.scale} from {path.name}", False)
            )
        return infos

    def _pair_infos(self, taken: set[str]) -> list[ModelInfo]:
        infos = []
        for name, pair in read_pairs(self.models_dir).items():
            if name in taken or isinstance(pair, str):
                continue
            try:
                d = self._descriptor_of(pair.faithful)
                installed = all(self._is_installed(m) for m in (pair.faithful, pair.sharp))
            except (LookupError, WeightsError, UnsupportedModelError):
                continue  # a member is gone or unusable: get() says which
            infos.append(
                ModelInfo(name, d.architecture, d.scale, installed, installed, _precisions(d),
                          "see the members' origins", f"blend of {pair.faithful} (0) and {pair.sharp} (1)",
                          False)
            )
        return infos

    def _user_file(self, name: str) -> Path | None:
        """The dropped-in file serving `name`; None for manifest names (they take precedence)."""
        return None if self.manifest.get(name) is not None else self._user_files().get(name)

    def _descriptor_of(self, name: str) -> ModelDescriptor:
        user_file = self._user_file(name)
        if user_file is not None:
            d = self._user_descriptor(user_file)
            if isinstance(d, str):
                raise UnsupportedModelError(d)
            return d
        return _manifest_descriptor(self._entry(name))

    def _is_installed(self, name: str) -> bool:
        if self._user_file(name) is not None:
            return True
        return self._installed(self._entry(name))

    def _installed(self, entry: ModelEntry) -> bool:
        return model_path(entry, self.weights_dir).is_file()

    def _has_strength(self, entry: ModelEntry) -> bool:
        return entry.pair is not None and all(
            self._installed(self._entry(member)) for member in entry.pair.values()
        )

    def list(self) -> list[ModelInfo]:
        listed = [
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
        infos = listed + self._user_infos()
        return infos + self._pair_infos({i.name for i in infos})

    def get(self, name: str, strength: float | None = None) -> LoadedModel:
        user_file = self._user_file(name)
        if user_file is not None:
            return self._get_user(name, user_file, strength)
        pair = read_pairs(self.models_dir).get(name) if self.manifest.get(name) is None else None
        if pair is not None:
            return self._get_pair(name, pair, strength)
        entry = self._entry(name)
        if strength is not None:
            if entry.pair is None:
                raise ValueError(f"model {name!r} has no PSNR/GAN pair, so it takes no strength")
            strength = round(strength, 2)  # interpolate() refuses values outside [0, 1]
        return self._cached(
            (name, strength),
            lambda: self._blended(entry, strength) if strength is not None else self._read(entry),
        )

    def _cached(self, key: _Key, tensors: Callable[[], dict[str, Tensor]]) -> LoadedModel:
        """The network under `key` from the LRU cache, else built from `tensors()` and kept."""
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
            model = load_model(tensors())
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.max_loaded:
                    self._models.popitem(last=False)
                self._build_locks.pop(key, None)
            return model

    def _get_user(self, name: str, path: Path, strength: float | None) -> LoadedModel:
        if strength is not None:
            raise ValueError(f"model {name!r} is a single file without a PSNR/GAN pair: no strength")
        stat = path.stat()
        # The file's size and time are part of the key: replacing the file replaces the model.
        key: _Key = (f"{path}|{stat.st_size}|{stat.st_mtime_ns}", None)
        return self._cached(key, lambda: load_state_dict(path))

    def _get_pair(self, name: str, pair: Pair | str, strength: float | None) -> LoadedModel:
        """The blend of a declared pair; no strength means the sharp member, as for manifest pairs."""
        if isinstance(pair, str):
            raise ValueError(pair)
        weight = 1.0 if strength is None else round(strength, 2)
        members = (self._stamp(pair.faithful), self._stamp(pair.sharp))
        return self._cached((f"pair|{name}|{members}", weight), lambda: self._blend(name, pair, weight))

    def _blend(self, name: str, pair: Pair, strength: float) -> dict[str, Tensor]:
        faithful, sharp = self._state_dict(pair.faithful), self._state_dict(pair.sharp)
        try:
            return interpolate(faithful, sharp, strength)
        except IncompatiblePairError as exc:
            raise IncompatiblePairError(f"pair {name!r} ({pair.faithful} + {pair.sharp}): {exc}") from exc

    def _stamp(self, name: str) -> tuple[str, int, int]:
        path = self._path_of_any(name)
        stat = path.stat() if path.is_file() else None
        return (str(path), stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0)

    def _path_of_any(self, name: str) -> Path:
        return self._user_file(name) or self.path_of(name)

    def _state_dict(self, name: str) -> dict[str, Tensor]:
        """The stored tensors of a manifest model (hash-checked) or a user model file."""
        user_file = self._user_file(name)
        return load_state_dict(user_file) if user_file is not None else self._read(self._entry(name))

    def declare_pair(self, name: str, faithful: str, sharp: str) -> Path:
        """Check that the two models blend (same architecture and tensor shapes), then write the pair file.
        Raises IncompatiblePairError naming the first tensor that differs."""
        if self.manifest.get(name) is not None or name in self._user_files():
            raise ValueError(f"{name!r} is already a model name; choose another name for the pair")
        if name in (faithful, sharp):
            raise ValueError("a pair needs a name of its own")
        first, second = self._state_dict(faithful), self._state_dict(sharp)
        kinds = describe(first).architecture, describe(second).architecture
        if kinds[0] != kinds[1]:
            raise IncompatiblePairError(f"{faithful} is {kinds[0]}, {sharp} is {kinds[1]}: they cannot blend")
        try:
            check_compatible(first, second)
        except IncompatiblePairError as exc:
            raise IncompatiblePairError(f"{faithful} and {sharp} cannot blend: {exc}") from exc
        return write_pair(self.models_dir, name, Pair(faithful, sharp))

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


def _precisions(d: ModelDescriptor) -> tuple[str, ...]:
    return ("fp32",) + ("fp16",) * d.supports_half + ("bf16",) * d.supports_bf16


def _manifest_descriptor(entry: ModelEntry) -> ModelDescriptor:
    """What the manifest says of a model that is not installed (enough for a listing)."""
    return ModelDescriptor(entry.architecture, entry.scale, 3, 3,
                           supports_half="fp16" in entry.precisions, supports_bf16="bf16" in entry.precisions)
