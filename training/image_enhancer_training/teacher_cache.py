"""The distillation teacher, and a cache of its outputs computed once.

A large teacher such as Real-ESRGAN x4plus takes about 0.4 s per 32² crop on one CPU core, hundreds of
times a small student's training step, so running it on the fly would spend the whole budget on the
teacher. `build_teacher_cache` runs it once over `data.teacher_cache_size` samples (ground-truth crop →
our degradations → teacher), one safetensors file per sample (uint8 `lq`, `hr`, `teacher`), written
atomically, so an interrupted build resumes where it stopped and a larger size extends the cache.
`cache.json` records the settings the samples depend on; a cache built with other settings is refused
rather than silently mixed.

`CachedSamples[k]`, like `PatchDataset[k]`, is a pure function of (seed, k): a cached sample chosen
from the seed, flipped and rotated the same way in all three images.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from image_enhancer.safe_json import load_json
from image_enhancer.weights.integrity import write_atomically

from .config import ConfigError, TrainConfig, expand_path
from .data import PatchDataset, augment
from .degradations import Degrader, to_uint8

INFO_NAME = "cache.json"
FORMAT = 1
TEACHER_BATCH = 8  # crops per teacher call: batching saves ~15% on a CPU
KEYS = ("lq", "hr", "teacher")


class TeacherCacheError(ValueError):
    """The teacher cache is missing, incomplete or was built with other settings."""


class DownscaledTeacher(nn.Module):
    """A teacher of a larger scale whose output is brought down to the student's (x4plus teaching a
    ×2 model): an antialiased bicubic downscale by `factor`."""

    def __init__(self, module: nn.Module, factor: int) -> None:
        super().__init__()
        self.module = module
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        size = (out.shape[-2] // self.factor, out.shape[-1] // self.factor)
        return F.interpolate(out, size=size, mode="bicubic", antialias=True, align_corners=False)


def load_teacher(path: str, scale: int, device: torch.device, resize: bool = False) -> nn.Module:
    """The distillation teacher, loaded safely and detected by the engine's model registry. With
    `resize`, a teacher whose scale is a multiple of the model's has its output downscaled to it."""
    from image_enhancer.models.registry import load_model
    from image_enhancer.weights.safe_load import load_state_dict

    loaded = load_model(load_state_dict(expand_path(path)))
    module = loaded.module.to(device).eval().requires_grad_(False)
    if loaded.scale == scale:
        return module
    if resize and loaded.scale > scale and loaded.scale % scale == 0:
        return DownscaledTeacher(module, loaded.scale // scale).eval()
    hint = " (set data.teacher_resize to downscale its output)" if loaded.scale % scale == 0 else ""
    raise ConfigError(f"teacher {path} is ×{loaded.scale} but the model is ×{scale}{hint}")


def cache_settings(config: TrainConfig) -> dict[str, Any]:
    """What the cached samples depend on (the size may grow, so it is not part of it)."""
    teacher = expand_path(config.data.teacher)
    return {
        "format": FORMAT,
        "teacher": teacher.name,
        "teacher_bytes": teacher.stat().st_size if teacher.is_file() else None,
        "scale": config.model.scale,
        "patch_size": config.data.patch_size,
        "seed": config.seed,
        "sources": [dataclasses.asdict(s) for s in config.data.sources],
        "degradation": _degradation_settings(config),
    } | ({"teacher_resize": True} if config.data.teacher_resize else {})


def _degradation_settings(config: TrainConfig) -> dict[str, Any]:
    """The degradation settings; the camera pipeline's only when it is used, so caches built before
    it existed still match."""
    settings = dataclasses.asdict(config.degradation)
    if settings["pipeline"] == "second_order":
        del settings["pipeline"], settings["camera"]
    return settings


def sample_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.safetensors"


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    info = folder / INFO_NAME
    if not info.is_file():
        return
    recorded = load_json(info, max_bytes=1 << 20)
    wanted = json.loads(json.dumps(settings))  # tuples → lists, as the file has them
    if recorded != wanted:
        changed = sorted(k for k in wanted | recorded if recorded.get(k) != wanted.get(k))
        raise TeacherCacheError(
            f"teacher cache {folder} was built with other settings ({', '.join(changed)}); "
            "delete it or set data.teacher_cache to another folder"
        )


def _sample_seed(config: TrainConfig, index: int) -> int:
    # Apart from the training stages' batch seeds, which use other multiples of the run seed.
    return (config.seed * 7_000_003 + 2 * index + 1) % 2**63


def build_teacher_cache(
    config: TrainConfig, device: torch.device | None = None, progress: bool = True
) -> Path:
    """Compute the missing samples of `config`'s teacher cache; returns its folder."""
    if not config.data.teacher_cache:
        raise ConfigError("data.teacher_cache is not set in the config")
    device = device or torch.device("cpu")
    folder = expand_path(config.data.teacher_cache)
    folder.mkdir(parents=True, exist_ok=True)
    settings = cache_settings(config)
    _check_settings(folder, settings)
    (folder / INFO_NAME).write_text(json.dumps(settings, indent=1), encoding="utf-8")

    size = config.data.teacher_cache_size
    missing = [i for i in range(size) if not sample_path(folder, i).is_file()]
    if not missing:
        return folder
    dataset = PatchDataset(config.data.sources, config.data.patch_size, config.seed)
    degrader = Degrader(config.degradation, config.model.scale, seed=config.seed)
    teacher = load_teacher(config.data.teacher, config.model.scale, device, config.data.teacher_resize)
    bar = tqdm(total=size, initial=size - len(missing), desc="teacher cache", disable=not progress)
    for start in range(0, len(missing), TEACHER_BATCH):
        indices = missing[start : start + TEACHER_BATCH]
        hrs, lqs = [], []
        for index in indices:
            # Each sample is degraded on its own, so it does not depend on which others are missing.
            hr = dataset[index][None].to(device)
            degrader.reseed(_sample_seed(config, index))
            hrs.append(hr)
            lqs.append(degrader(hr))
        with torch.no_grad():
            outputs = teacher(torch.cat(lqs)).clamp(0, 1)
        for index, hr, lq, output in zip(indices, hrs, lqs, outputs, strict=True):
            tensors = {"lq": to_uint8(lq[0]), "hr": to_uint8(hr[0]), "teacher": to_uint8(output)}
            write_atomically(sample_path(folder, index), save(tensors))  # a sample is complete or absent
        bar.update(len(indices))
    bar.close()
    return folder


class CachedSamples(Dataset):
    """Augmented (lq, hr, teacher) triples drawn from a complete teacher cache."""

    def __init__(self, config: TrainConfig) -> None:
        folder = expand_path(config.data.teacher_cache)
        settings = cache_settings(config)
        if not (folder / INFO_NAME).is_file():
            raise TeacherCacheError(
                f"no teacher cache in {folder}; `image-enhancer train CONFIG` builds it"
            )
        _check_settings(folder, settings)
        self.paths = [sample_path(folder, i) for i in range(config.data.teacher_cache_size)]
        absent = sum(not p.is_file() for p in self.paths)
        if absent:
            raise TeacherCacheError(f"teacher cache {folder} lacks {absent} of {len(self.paths)} samples")
        self.seed = config.seed
        self.load = lru_cache(maxsize=None)(self._load)

    def __len__(self) -> int:
        return 2**62  # like PatchDataset: samplers decide which indices are drawn

    def _load(self, which: int) -> tuple[Tensor, ...]:
        tensors = load_file(str(self.paths[which]))
        return tuple(tensors[k] for k in KEYS)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
        which = int(torch.randint(0, len(self.paths), (), generator=gen))
        draws = gen.get_state()
        out = []
        for image in self.load(which):
            gen.set_state(draws)  # the same flip and rotation for all three images
            out.append(augment(image.float() / 255.0, gen).contiguous())
        return tuple(out)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("load", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load = lru_cache(maxsize=None)(self._load)
