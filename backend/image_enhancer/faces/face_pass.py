"""The face pass over one image: detect in the source, restore in the result, paste back.

Faces are found in the source (smaller, and what the photographer saw) and mapped onto the result,
which may be larger. Each face is aligned to the restorer's crop, restored, and only the *change*
the restorer made is warped back and added through a feathered face-shaped mask, times `strength`.
A restorer that changes nothing therefore changes no pixel, and the resampling the alignment needs
never softens the rest of the face. Alpha, and every pixel outside the faces, stay exactly as they
were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from image_enhancer.engine import pixels
from image_enhancer.engine.tiling import JobCancelled
from image_enhancer.faces import geometry
from image_enhancer.faces.detect import Face, FaceDetector
from image_enhancer.faces.restorer import FaceRestorer

log = logging.getLogger(__name__)

#: Faces smaller than this (box side in source pixels) hold too little to restore: left as they are.
MIN_RESTORABLE = 24
#: Faces restored at most per image (the largest first); the rest are left and reported.
MAX_FACES = 64
#: Longest side of the image the detector searches; larger sources are searched reduced.
DETECT_MAX_SIDE = 2048


@dataclass(frozen=True)
class FaceReport:
    """found: faces detected; restored: faces changed; too_small / over_limit: faces left as they are."""

    found: int = 0
    restored: int = 0
    too_small: int = 0
    over_limit: int = 0

    def message(self) -> str:
        if not self.found:
            return "no face found: the image is unchanged by the face pass"
        text = f"restored {self.restored} of {self.found} face{'s' if self.found != 1 else ''}"
        left = []
        if self.too_small:
            left.append(f"{self.too_small} too small (under {MIN_RESTORABLE} px)")
        if self.over_limit:
            left.append(f"{self.over_limit} beyond the first {MAX_FACES}")
        return text + (f"; left as they were: {', '.join(left)}" if left else "")


def _colour(image: torch.Tensor) -> torch.Tensor:
    """The RGB part of a C×H×W tensor (grey is repeated; alpha dropped)."""
    colour = image[:3] if image.shape[0] >= 3 else image[:1]
    return colour if colour.shape[0] == 3 else pixels.gray_to_rgb(colour)


def find_faces(detector: FaceDetector, source: np.ndarray) -> list[Face]:
    """Faces in `source` (any sample type), in its pixel coordinates, largest first."""
    rgb = _colour(pixels.to_tensor(source)).clamp(0, 1)
    height, width = rgb.shape[-2:]
    reduce = min(1.0, DETECT_MAX_SIDE / max(height, width))
    if reduce == 1.0:
        return detector.detect(rgb)
    size = (max(1, round(height * reduce)), max(1, round(width * reduce)))
    small = F.interpolate(rgb[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return [f.scaled(width / size[1], height / size[0]) for f in detector.detect(small)]


def restore_faces(
    source: np.ndarray,
    result: np.ndarray,
    detector: FaceDetector,
    restorer: FaceRestorer,
    strength: float,
    linear: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, FaceReport]:
    """`result` (the enhanced `source`, any size) with the faces of `source` restored."""
    faces = find_faces(detector, source)
    small = [f for f in faces if f.size < MIN_RESTORABLE]
    chosen = [f for f in faces if f.size >= MIN_RESTORABLE][:MAX_FACES]
    report = FaceReport(len(faces), len(chosen), len(small), len(faces) - len(small) - len(chosen))
    if not chosen or strength <= 0:
        return result, FaceReport(report.found, 0, report.too_small, report.over_limit)
    image = pixels.to_tensor(result)
    work = _colour(image).clone()
    base = work.clone()
    sx, sy = result.shape[1] / source.shape[1], result.shape[0] / source.shape[0]
    size = restorer.size
    mask = geometry.face_mask(size)
    target = geometry.template(size)
    for done, face in enumerate(chosen):
        if cancelled is not None and cancelled():
            raise JobCancelled()
        if progress is not None:
            progress(done, len(chosen))
        to_crop = geometry.similarity(face.scaled(sx, sy).landmarks, target)
        _restore_one(work, to_crop, restorer, mask, strength, linear)
    if progress is not None:
        progress(len(chosen), len(chosen))
    return _merged(result, image, work - base), report


@torch.inference_mode()
def _restore_one(work: torch.Tensor, to_crop: np.ndarray, restorer: FaceRestorer, mask: torch.Tensor,
                 strength: float, linear: bool) -> None:
    size = restorer.size
    # Reflection gives a face at the image's edge a plausible surrounding; nothing outside is written.
    crop = geometry.warp(work, geometry.invert(to_crop), size, size, padding="reflection").clamp(0, 1)
    seen = pixels.linear_to_srgb(crop) if linear else crop
    restored = restorer.run(seen[None])[0].to(torch.float32)
    change = (pixels.srgb_to_linear(restored) - pixels.srgb_to_linear(seen)) if linear else restored - seen
    x0, y0, x1, y1 = geometry.footprint(geometry.invert(to_crop), size, size)
    height, width = work.shape[-2:]
    left, top = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
    if right <= left or bottom <= top:
        return
    # Region pixel → image pixel → crop pixel.
    region_to_crop = geometry.compose(to_crop, np.array([[1.0, 0, left], [0, 1.0, top]]))
    weight = geometry.warp(mask, region_to_crop, bottom - top, right - left)
    delta = geometry.warp(change, region_to_crop, bottom - top, right - left)
    work[:, top:bottom, left:right] += strength * weight * delta


def _merged(result: np.ndarray, image: torch.Tensor, change: torch.Tensor) -> np.ndarray:
    """`result` with `change` (RGB) added to its colour; pixels the change does not touch are copied
    bit for bit, and alpha is never touched."""
    touched = (change != 0).any(dim=0)
    if not bool(touched.any()):
        return result
    channels = image.shape[0]
    colour_channels = 3 if channels >= 3 else 1
    if colour_channels == 1:
        change = pixels.rgb_to_gray(change)
    updated = image.clone()
    updated[:colour_channels] += change
    converted = pixels.from_tensor(updated, result.dtype)
    out = result.copy()
    where = touched.numpy()
    if out.ndim == 2:
        out[where] = converted[..., 0][where]
    else:
        out[where] = converted[where]
    return out
