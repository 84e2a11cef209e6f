"""Colour and size after the network: resampling to any scale, colour fidelity, automatic contrast.

All functions take and return float32 ``(C, H, W)`` tensors in ``[0, 1]`` (C = 1 gray or 3 RGB), the
backend's one image representation: the image's encoded values in its own colour space (sRGB, or the
primaries and tone curve of its profile, such as Adobe RGB or ProPhoto). Nothing here converts between
colour spaces, and ``[0, 1]`` is the whole gamut of the image's own space, so a wide-gamut colour is never
clipped to sRGB. The luma weights below are sRGB's; in other primaries they are an approximation of
brightness, which is all they are used for (splitting a correction into brightness and colour, a mild
saturation boost), so those results stay sound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Full-range BT.601 luma, the usual choice for the Y of a YCbCr split of encoded values.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def resize(image: torch.Tensor, height: int, width: int, *, clamp: bool = True) -> torch.Tensor:
    """Bicubic resize, antialiased when shrinking (so ×1.5 or ×3 from a ×4 network does not alias), clamped
    to ``[0, 1]`` unless ``clamp`` is false (for values that lie outside that range on purpose)."""
    if image.shape[-2:] == (height, width):
        return image
    shrinking = height < image.shape[-2] or width < image.shape[-1]
    resized = F.interpolate(
        image[None], size=(height, width), mode="bicubic", align_corners=False, antialias=shrinking
    )[0]
    return resized.clamp_(0.0, 1.0) if clamp else resized


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(C, H, W)`` tensor, edges extended by replication."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(image)
    channels = image.shape[0]
    out = F.pad(image[:, None], (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0].reshape(channels, *image.shape[-2:])


def match_colour(
    output: torch.Tensor, reference: torch.Tensor, chroma_sigma: float = 1.5, luma_sigma: float = 4.0
) -> torch.Tensor:
    """Give ``output`` the low-frequency colour of ``reference`` (the network's input), keeping its detail.

    The difference between the reference and the output shrunk to the reference's size is split into
    luma and chroma, low-passed (chroma at ``chroma_sigma`` reference pixels, luma more broadly at
    ``luma_sigma`` so only brightness drift is undone, not local contrast), enlarged and added back.
    """
    height, width = reference.shape[-2:]
    difference = reference - resize(output, height, width)
    if difference.shape[0] == 3:
        luma = (difference * _LUMA.view(3, 1, 1)).sum(0, keepdim=True)
        chroma = difference - luma  # per-channel offsets with zero luma: the colour part
        difference = gaussian_blur(chroma, chroma_sigma) + gaussian_blur(luma, luma_sigma)
    else:
        difference = gaussian_blur(difference, luma_sigma)
    correction = F.interpolate(
        difference[None], size=output.shape[-2:], mode="bilinear", align_corners=False
    )[0]
    return (output + correction).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Levels:
    """A contrast/colour correction measured on one image and applicable to any resize of it."""

    black: float
    white: float
    saturation: float


def measure_levels(
    image: torch.Tensor, clip: float = 0.005, max_gain: float = 2.5, saturation: float = 1.15
) -> Levels:
    """Black and white points at the ``clip`` and ``1 − clip`` luma percentiles.

    The stretch is kept mild: the black point never above 0.25, the white point never below 0.75, and
    the gain at most ``max_gain``, so a deliberately dark or hazy picture is improved, not rewritten.
    """
    luma = (image * _LUMA.view(3, 1, 1)).sum(0) if image.shape[0] == 3 else image[0]
    samples = luma.flatten()
    if samples.numel() > 1_000_000:  # torch.quantile has a size limit; a strided sample is enough
        samples = samples[:: samples.numel() // 1_000_000 + 1]
    black = min(float(torch.quantile(samples, clip)), 0.25)
    white = max(float(torch.quantile(samples, 1 - clip)), 0.75)
    if white - black < 1 / max_gain:
        middle = (white + black) / 2
        black, white = middle - 0.5 / max_gain, middle + 0.5 / max_gain
    return Levels(black=black, white=white, saturation=saturation if image.shape[0] == 3 else 1.0)


def apply_levels(image: torch.Tensor, levels: Levels, strength: float) -> torch.Tensor:
    """Stretch to the levels (same gain on every channel, so hues stay) and raise saturation mildly,
    mixed with the original by ``strength`` in ``[0, 1]``; strength 0 returns the image unchanged."""
    if strength <= 0:
        return image
    stretched = (image - levels.black) / (levels.white - levels.black)
    if image.shape[0] == 3:
        luma = (stretched * _LUMA.view(3, 1, 1)).sum(0, keepdim=True)
        stretched = luma + (stretched - luma) * levels.saturation
    return (image + strength * (stretched - image)).clamp_(0.0, 1.0)
