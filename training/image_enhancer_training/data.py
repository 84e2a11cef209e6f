"""Training images: folders (recursive), FFHQ as distributed (folders or zips), dead leaves.

`PatchDataset[k]` is a pure function of (seed, k): it picks a source by weight, an image, a random
crop, flip and 90° rotation from a generator seeded with both. Resuming at iteration `i` therefore
needs no saved data state, and DataLoader workers stay reproducible.
"""

from __future__ import annotations

import fnmatch
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .procedural import dead_leaves

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FFHQ_SUBSETS = ("images1024x1024", "thumbnails128x128")


class DataError(ValueError):
    """A training data source is missing, empty or unreadable."""


@dataclass
class SourceConfig:
    """One entry of `[[data.sources]]` in a training config."""

    kind: str  # "folder", "ffhq" or "dead_leaves"
    path: str = ""
    weight: float = 1.0
    # Integer downscale applied on load (e.g. 2 for JPEG photos, to hide compression artefacts).
    downscale: int = 1
    # Glob patterns matched against paths relative to the source root: keep only `include`
    # matches (all when empty), then drop `exclude` matches.
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    subset: str = "images1024x1024"  # FFHQ only
    cache: bool = False  # keep decoded images in memory (small sources)
    # Dead leaves only.
    r_min: float = 0.006
    r_max: float = 0.4
    leaves: int = 3000


def _decode(data: bytes | Path, downscale: int) -> Tensor:
    """Decode an image file to uint8 (3, H, W), optionally downscaled (antialiased).

    uint8 keeps cached sources small and makes cropping and augmenting cheap."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im = im.convert("RGB")
            if downscale > 1:
                im = im.resize((im.width // downscale, im.height // downscale), Image.Resampling.BICUBIC)
            array = np.asarray(im).copy()
    except OSError as exc:
        where = data if isinstance(data, Path) else "<zip entry>"
        raise DataError(f"cannot read training image {where}: {exc}") from exc
    return torch.from_numpy(array).permute(2, 0, 1)


class FileSource:
    """Images from a folder tree, or from a zip archive (read in place, not extracted)."""

    def __init__(self, config: SourceConfig, root: Path, zip_path: Path | None = None) -> None:
        self.config = config
        self.root = root
        self.zip_path = zip_path
        self._zip: zipfile.ZipFile | None = None
        if zip_path is not None:
            with zipfile.ZipFile(zip_path) as archive:
                names = [n for n in archive.namelist() if n.lower().endswith(IMAGE_SUFFIXES)]
        else:
            if not root.is_dir():
                raise DataError(f"training image folder {root} does not exist")
            found = (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            names = [p.relative_to(root).as_posix() for p in found]
        if config.include:
            names = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in config.include)]
        names = sorted(n for n in names if not any(fnmatch.fnmatch(n, pat) for pat in config.exclude))
        if not names:
            where = zip_path or root
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {where}")
        self.names = names
        if config.cache:
            self.load = lru_cache(maxsize=None)(self.load)  # type: ignore[method-assign]

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> Tensor:
        name = self.names[index]
        if self.zip_path is None:
            return _decode(self.root / name, self.config.downscale)
        if self._zip is None:
            # Opened lazily so each DataLoader worker gets its own file handle.
            self._zip = zipfile.ZipFile(self.zip_path)
        return _decode(self._zip.read(name), self.config.downscale)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_zip"] = None
        state.pop("load", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.config.cache:
            self.load = lru_cache(maxsize=None)(self.load)  # type: ignore[method-assign]


def ffhq_source(config: SourceConfig) -> FileSource:
    """FFHQ as distributed: `<root>/<subset>/` folders or `<root>/<subset>.zip` (or a zip path)."""
    if config.subset not in FFHQ_SUBSETS:
        raise DataError(f"FFHQ subset must be one of {', '.join(FFHQ_SUBSETS)}, got {config.subset!r}")
    root = Path(config.path).expanduser()
    if root.suffix.lower() == ".zip" and root.is_file():
        return FileSource(config, root, zip_path=root)
    if (root / config.subset).is_dir():
        return FileSource(config, root / config.subset)
    if (root / f"{config.subset}.zip").is_file():
        return FileSource(config, root, zip_path=root / f"{config.subset}.zip")
    raise DataError(f"no FFHQ {config.subset}/ folder or {config.subset}.zip in {root}")


def open_source(config: SourceConfig) -> FileSource | None:
    """The file source for `config`, or None for procedural sources."""
    if config.kind == "folder":
        return FileSource(config, Path(config.path).expanduser())
    if config.kind == "ffhq":
        return ffhq_source(config)
    if config.kind == "dead_leaves":
        return None
    raise DataError(f"unknown data source kind {config.kind!r}; use folder, ffhq or dead_leaves")


def random_crop(image: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """A size×size crop at a random position; images smaller than `size` are refused."""
    _, h, w = image.shape
    if h < size or w < size:
        raise DataError(f"image of {w}×{h} is smaller than the {size}-pixel training crop")
    top = int(torch.randint(0, h - size + 1, (), generator=gen))
    left = int(torch.randint(0, w - size + 1, (), generator=gen))
    return image[:, top : top + size, left : left + size]


def augment(patch: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flip and rotation by a multiple of 90°."""
    if bool(torch.rand((), generator=gen) < 0.5):
        patch = patch.flip(-1)
    return torch.rot90(patch, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))


class PatchDataset(Dataset):
    """An endless, index-addressed stream of augmented HR patches from weighted sources."""

    def __init__(self, sources: list[SourceConfig], patch_size: int, seed: int) -> None:
        if not sources:
            raise DataError("the training config lists no data sources")
        self.configs = sources
        self.sources = [open_source(s) for s in sources]
        weights = torch.tensor([s.weight for s in sources], dtype=torch.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise DataError("data source weights must be non-negative with a positive sum")
        self.weights = weights / weights.sum()
        self.patch_size = patch_size
        self.seed = seed

    def __len__(self) -> int:
        # Effectively infinite; samplers decide which indices are drawn.
        return 2**62

    def __getitem__(self, index: int) -> Tensor:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % 2**63)
        which = int(torch.multinomial(self.weights, 1, generator=gen))
        config, source = self.configs[which], self.sources[which]
        if source is None:
            patch = dead_leaves(
                self.patch_size, gen, r_min=config.r_min, r_max=config.r_max, leaves=config.leaves
            )
        else:
            image = source.load(int(torch.randint(0, len(source), (), generator=gen)))
            patch = random_crop(image, self.patch_size, gen).float() / 255.0
        return augment(patch, gen).contiguous()


class IterationSampler(Sampler[list[int]]):
    """Batches of dataset indices for iterations start..stop; each rank draws its own indices."""

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start, self.stop = start, stop
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for iteration in range(self.start, self.stop):
            first = (iteration * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
