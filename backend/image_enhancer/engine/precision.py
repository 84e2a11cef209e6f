"""Precisions: the user's choice, what a model tolerates, and how far a reduced precision strays from
fp32. Each runtime's own rule for which precision it runs in lives in its package (``runtimes/``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from image_enhancer.engine.choices import PRECISIONS

if TYPE_CHECKING:
    import torch

    from image_enhancer.models.descriptor import ModelDescriptor

#: The name of each floating-point precision a user can ask for, as torch dtype names.
FLOAT_PRECISIONS = ("fp32", "bf16", "fp16")


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a floating-point precision name ("fp32", "bf16", "fp16")."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def name_of(dtype: torch.dtype) -> str:
    """The precision name of a floating-point torch dtype."""
    return next(name for name in FLOAT_PRECISIONS if dtype_of(name) is dtype)


def check_precision(name: str) -> None:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")


def tolerated(name: str, descriptor: ModelDescriptor, bf16_available: bool) -> torch.dtype:
    """The dtype asked for (fp32 for ``auto``), as far as the model and the device tolerate it."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name, torch.float32)
    if dtype is torch.float16 and not descriptor.supports_half:
        # fp16 overflows or misbehaves in such networks (spandrel's finding); bf16 keeps fp32's range.
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and not (descriptor.supports_bf16 and bf16_available):
        return torch.float32
    return dtype


@dataclass(frozen=True)
class Bound:
    """How far a reduced precision (bf16, fp16, int8) may stray from fp32 on a real photo for ``auto``
    to use it: on average half an 8-bit level (invisible), and 40 dB PSNR against the fp32 result (its
    largest differences stay rare: a few pixels at strong edges)."""

    mean_levels: float = 0.5
    min_psnr_db: float = 40.0


BOUND = Bound()


@dataclass(frozen=True)
class Difference:
    """A result's difference from the fp32 result of the same network, in 8-bit levels."""

    mean_levels: float
    max_levels: float
    psnr_db: float

    @classmethod
    def between(cls, result: np.ndarray, reference: np.ndarray) -> Difference:
        """Both in ``[0, 1]`` floats (clipped first, as the engine clips its results)."""
        difference = np.abs(np.clip(result, 0.0, 1.0) - np.clip(reference, 0.0, 1.0))
        mse = float(np.mean(difference.astype(np.float64) ** 2))
        return cls(
            mean_levels=float(difference.mean() * 255),
            max_levels=float(difference.max() * 255),
            psnr_db=float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
        )

    def within(self, bound: Bound = BOUND) -> bool:
        return self.mean_levels <= bound.mean_levels and self.psnr_db >= bound.min_psnr_db

    @classmethod
    def worst(cls, differences: list[Difference]) -> Difference:
        """The largest mean and largest difference and the lowest PSNR of several photos."""
        return cls(
            mean_levels=max(d.mean_levels for d in differences),
            max_levels=max(d.max_levels for d in differences),
            psnr_db=min(d.psnr_db for d in differences),
        )


#: The real photos shipped for calibration (``weights/calibration/``), and the forest made soft (reduced
#: ×4 and enlarged back). A reduced precision's error depends on the photo more than on anything else:
#: x4plus in bf16 was 0.33 levels off fp32 on average on the forest, 0.84 on the evening glow's
#: sparkling water; with its sums and end blocks in fp32, 0.22 on the forest and 1.11 on the soft forest,
#: where it invents all the detail (the compact models: 0.06–0.15).
SHIPPED_PHOTOS = ("cups_192.png", "evening_glow_192.png", "forest_256.png", "forest_soft_256.png")


def calibration_photo(name: str) -> np.ndarray:
    """A shipped calibration photo as a ``(1, 3, H, W)`` float32 batch in ``[0, 1]``."""
    from PIL import Image

    shipped = resources.files("image_enhancer.weights") / "calibration" / name
    with resources.as_file(shipped) as path, Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])
