"""Alpha handling, in one place.

Contract:
- The alpha channel is upscaled on its own, by the network as a gray image ("model") or bicubic
  interpolation ("bicubic"); a constant alpha passes through unchanged. The network only decides
  alpha near alpha edges: where the input's alpha is the same over a 3×3 neighbourhood, the result
  keeps that exact value (networks drift by a few levels in flat areas and at the image edges,
  which would make fully transparent pixels faintly visible).
- The colour of fully transparent pixels is meaningless (often black or left-over garbage) and must not
  bleed into visible edges. Before the colour goes through the network, every fully transparent pixel
  is filled from the nearest visible colours (a push-pull pyramid: alpha-weighted averages at coarser
  levels fill the holes at finer ones). Visible pixels keep their colour, so nothing changes for an
  opaque image and the network never sees the hidden colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_alpha(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(C, H, W)`` → colour channels and the alpha channel (None for 1 or 3 channels)."""
    if image.shape[0] in (2, 4):
        return image[:-1], image[-1:]
    return image, None


def constant_value(alpha: torch.Tensor) -> float | None:
    """The alpha value if it is the same everywhere, else None."""
    first = alpha.flatten()[0]
    return float(first) if bool((alpha == first).all()) else None


def fill_transparent(colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Replace the colour of fully transparent pixels by a smooth extension of the visible colours.

    ``colour`` is ``(C, H, W)``, ``alpha`` ``(1, H, W)``. Pixels with any opacity keep their colour.
    """
    visible = (alpha > 0).to(colour.dtype)
    if bool(visible.all()) or not bool(visible.any()):
        return colour  # nothing to fill, or nothing to fill from
    # Push: alpha-weighted averages at halving resolutions until one pixel is left.
    levels = [(colour * visible, visible)]
    while max(levels[-1][1].shape[-2:]) > 1:
        premultiplied, weight = levels[-1]
        levels.append(
            (
                F.avg_pool2d(premultiplied[None], 2, ceil_mode=True)[0],
                F.avg_pool2d(weight[None], 2, ceil_mode=True)[0],
            )
        )
    # Pull: each level's holes take the colour of the level below, scaled back up.
    premultiplied, weight = levels[-1]
    filled = premultiplied / weight.clamp(min=1e-12)
    for premultiplied, weight in reversed(levels[:-1]):
        coarse = F.interpolate(filled[None], size=weight.shape[-2:], mode="bilinear", align_corners=False)[0]
        # weight·(own visible average) + (1 − weight)·(coarser fill); the premultiplied sum is the first term.
        filled = premultiplied + (1 - weight) * coarse
    return torch.where(visible.bool(), colour, filled)


def upscale_bicubic(alpha: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of a ``(1, H, W)`` alpha to ``height × width`` (antialiased when shrinking)."""
    shrinking = height < alpha.shape[-2] or width < alpha.shape[-1]
    resized = F.interpolate(
        alpha[None], size=(height, width), mode="bicubic", align_corners=False, antialias=shrinking
    )
    return resized[0].clamp_(0.0, 1.0)


def keep_flat_alpha(upscaled: torch.Tensor, alpha: torch.Tensor, scale: int) -> torch.Tensor:
    """``upscaled`` (the network's ×``scale`` alpha) with every pixel whose source pixel has a 3×3
    neighbourhood of one alpha value set to exactly that value."""
    high = F.max_pool2d(alpha[None], 3, stride=1, padding=1)[0]
    low = -F.max_pool2d(-alpha[None], 3, stride=1, padding=1)[0]
    flat = F.interpolate((high == low).to(alpha.dtype)[None], scale_factor=scale, mode="nearest")[0]
    source = F.interpolate(alpha[None], scale_factor=scale, mode="nearest")[0]
    return torch.where(flat.bool(), source, upscaled)


def keep_flat_alpha_at(
    upscaled: torch.Tensor, alpha: torch.Tensor, scale: int, top: int, left: int
) -> torch.Tensor:
    """``keep_flat_alpha`` for one tile: ``upscaled`` is the network's alpha for the input pixels from
    ``(top, left)`` on, and the 3×3 test still sees their neighbours outside the tile."""
    height, width = upscaled.shape[-2] // scale, upscaled.shape[-1] // scale
    y0, x0 = max(0, top - 1), max(0, left - 1)
    y1, x1 = min(alpha.shape[-2], top + height + 1), min(alpha.shape[-1], left + width + 1)
    before_y, before_x = (top - y0) * scale, (left - x0) * scale
    margins = [before_x, (x1 - left - width) * scale, before_y, (y1 - top - height) * scale]
    kept = keep_flat_alpha(F.pad(upscaled, margins), alpha[:, y0:y1, x0:x1].to(upscaled.device), scale)
    return kept[:, before_y : before_y + height * scale, before_x : before_x + width * scale]
