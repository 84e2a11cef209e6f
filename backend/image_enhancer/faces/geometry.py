"""Aligning a face to a restorer's canonical crop and back: a similarity transform (rotation, uniform
scale, shift; never a shear, so a face is never warped) fitted to five landmarks, and resampling
through it with a low-pass filter whenever it shrinks.

Affine maps are 2×3 arrays acting on pixel centres (integers), `(x, y) ↦ A @ (x, y, 1)`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: The FFHQ five-point template in a 512² crop (eye centres, nose tip, mouth corners), as the
#: published face restorers were trained with.
FFHQ_512 = np.array([
    [192.98138, 239.94708],
    [318.90277, 240.19360],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
])
#: Above this shrink factor (source pixels per output pixel) the source is low-pass filtered first.
ALIAS_LIMIT = 1.25


def template(size: int) -> np.ndarray:
    """The template for a size² crop."""
    return FFHQ_512 * (size / 512)


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity transform taking points `source` (N×2) to `target` (N×2)."""
    x, y = source[:, 0], source[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    # [u; v] = [a −b; b a][x; y] + [tx; ty], linear in (a, b, tx, ty).
    rows = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    values = np.concatenate([target[:, 0], target[:, 1]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, values, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def invert(affine: np.ndarray) -> np.ndarray:
    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """x ↦ outer(inner(x))."""
    return (np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]]))[:2]


def shrink(affine: np.ndarray) -> float:
    """Source pixels per output pixel of a similarity map output → source."""
    return float(math.hypot(affine[0, 0], affine[1, 0]))


def footprint(affine: np.ndarray, height: int, width: int) -> tuple[float, float, float, float]:
    """The bounding box (x0, y0, x1, y1, pixel centres) of a height×width output mapped by `affine`."""
    corners = np.array([[-0.5, -0.5, 1], [width - 0.5, -0.5, 1], [-0.5, height - 0.5, 1],
                        [width - 0.5, height - 0.5, 1]])
    mapped = corners @ affine.T
    return (*mapped.min(0), *mapped.max(0))


def warp(source: Tensor, affine: np.ndarray, height: int, width: int, padding: str = "zeros") -> Tensor:
    """Sample C×H×W `source` at `affine(x, y)` for each pixel of a height×width output (bilinear).

    Only the part of the source the output covers is read; when the map shrinks by more than
    ALIAS_LIMIT, that part is first reduced with an antialiasing filter to about the output's density.
    `padding`: "zeros", "border" or "reflection" (what lies outside the source)."""
    src_h, src_w = source.shape[-2:]
    x0, y0, x1, y1 = footprint(affine, height, width)
    left, top = max(int(math.floor(x0)) - 2, 0), max(int(math.floor(y0)) - 2, 0)
    right, bottom = min(int(math.ceil(x1)) + 3, src_w), min(int(math.ceil(y1)) + 3, src_h)
    if right <= left or bottom <= top:  # the output lies wholly outside the source
        left, top, right, bottom = 0, 0, src_w, src_h
    region = source[:, top:bottom, left:right]
    local = affine.copy()
    local[:, 2] -= (left, top)
    factor = shrink(affine)
    if factor > ALIAS_LIMIT:
        reduced = (max(1, round(region.shape[-2] / factor)), max(1, round(region.shape[-1] / factor)))
        sy, sx = reduced[0] / region.shape[-2], reduced[1] / region.shape[-1]
        region = F.interpolate(region[None], size=reduced, mode="bilinear", antialias=True,
                               align_corners=False)[0]
        to_reduced = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
        local = compose(to_reduced, local)
    return _sample(region, local, height, width, padding)


def _sample(source: Tensor, affine: np.ndarray, height: int, width: int, padding: str) -> Tensor:
    src_h, src_w = source.shape[-2:]
    # Output pixel centres → source pixel coordinates → grid_sample's [-1, 1] edge-based coordinates.
    to_unit = np.array([[2 / src_w, 0, 1 / src_w - 1], [0, 2 / src_h, 1 / src_h - 1]])
    from_unit = np.array([[width / 2, 0, width / 2 - 0.5], [0, height / 2, height / 2 - 0.5]])
    theta = torch.from_numpy(compose(compose(to_unit, affine), from_unit)).to(torch.float64)
    grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False).to(source.dtype)
    return F.grid_sample(source[None], grid, mode="bilinear", padding_mode=padding, align_corners=False)[0]


def face_mask(size: int, feather: float = 0.22) -> Tensor:
    """A 1×size×size weight that is 1 over the face in an FFHQ-aligned crop and falls smoothly to 0
    (forehead to chin, cheek to cheek; hair, ears and background stay out). `feather`: the falloff's
    width as a fraction of the oval's radius."""
    centre = np.array([256.0, 290.0]) * size / 512
    radii = np.array([150.0, 195.0]) * size / 512
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    r = torch.sqrt(((xs - centre[0]) / radii[0]) ** 2 + ((ys - centre[1]) / radii[1]) ** 2)
    t = ((1 - r) / feather).clamp(0, 1)
    return (t * t * (3 - 2 * t))[None]  # smoothstep: no kink where the falloff starts or ends
