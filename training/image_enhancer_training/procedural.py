"""Procedural training images: the dead-leaves model (occluding disks with power-law radii).

Dead-leaves images share natural photos' scale invariance and sharp occlusion edges, which makes
them a useful prior for restoration training when real photos are few.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor


def _power_law_radii(n: int, r_min: float, r_max: float, alpha: float, gen: torch.Generator) -> Tensor:
    """Radii with density ∝ r^-alpha on [r_min, r_max] by inverse-CDF sampling."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    a = 1.0 - alpha
    return (r_min**a + u * (r_max**a - r_min**a)) ** (1.0 / a)


def dead_leaves(
    size: int,
    gen: torch.Generator,
    r_min: float = 0.006,
    r_max: float = 0.4,
    alpha: float = 3.0,
    leaves: int = 3000,
    supersample: int = 2,
) -> Tensor:
    """One `(3, size, size)` dead-leaves image in [0, 1]; radii are fractions of the side.

    Leaves are painted back to front (the last leaf lies on top), which equals the occlusion model
    truncated to `leaves` leaves. Rendering at `supersample`× and area-downscaling gives antialiased
    edges, as a camera would.
    """
    if size < 4:
        raise ValueError(f"dead-leaves size must be at least 4 pixels, got {size}")
    if not 0 < r_min < r_max:
        raise ValueError(f"need 0 < r_min < r_max, got r_min={r_min}, r_max={r_max}")
    side = size * supersample
    # A per-image tint keeps colour statistics closer to photos than uniform RGB would.
    tint = 0.6 + 0.4 * torch.rand(3, generator=gen)
    radii = (_power_law_radii(leaves, r_min, r_max, alpha, gen) * side).tolist()
    centres = ((torch.rand(leaves, 2, generator=gen) * 1.2 - 0.1) * side).tolist()
    colours = ((torch.rand(leaves, 3, generator=gen) ** 1.2 * tint) * 255).round().to(torch.uint8).tolist()
    canvas = Image.new("RGB", (side, side), tuple(int(c * 127) for c in tint.tolist()))
    draw = ImageDraw.Draw(canvas)
    for (cx, cy), r, colour in zip(centres, radii, colours, strict=True):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(colour))
    image = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0
    if supersample > 1:
        image = F.avg_pool2d(image[None], supersample)[0]
    return image
