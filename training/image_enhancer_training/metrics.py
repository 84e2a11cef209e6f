"""Image quality metrics on the Y channel (BT.601), the usual way super-resolution papers report them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .degradations import to_uint8


def rgb_to_y(image: Tensor) -> Tensor:
    """(…, 3, H, W) sRGB in [0, 1] → (…, 1, H, W) BT.601 luma in [16, 235] / 255."""
    r, g, b = image[..., 0:1, :, :], image[..., 1:2, :, :], image[..., 2:3, :, :]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _crop(image: Tensor, border: int) -> Tensor:
    return image[..., border:-border, border:-border] if border > 0 else image


def _check(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def psnr_y(output: Tensor, target: Tensor, border: int = 0) -> float:
    """PSNR in dB on the Y channel of 8-bit-quantised images, ignoring `border` pixels at each edge."""
    _check(output, target)
    y1 = _crop(rgb_to_y(torch.round(output.clamp(0, 1) * 255) / 255), border).double()
    y2 = _crop(rgb_to_y(torch.round(target.clamp(0, 1) * 255) / 255), border).double()
    mse = torch.mean((y1 - y2) ** 2)
    if mse == 0:
        return float("inf")
    return float(10 * torch.log10(1.0 / mse))


#: JPEG codes 8×8 blocks of luma (and, subsampled, 16×16 of chroma) independently.
JPEG_BLOCK = 8


def _step_ratio(output: Tensor, on: Callable[[Tensor], Tensor], off: Callable[[Tensor], Tensor]) -> float:
    """Mean luma step (|ΔY| between neighbours, horizontal and vertical, 8-bit-quantised) across the
    lines `on` selects, over the mean step across the lines `off` selects. Line i lies between pixel
    rows (or columns) i − 1 and i; `on` and `off` map line numbers to masks, given the axis's offset."""
    y = rgb_to_y(torch.round(output.clamp(0, 1) * 255) / 255).double()
    y = y.reshape(-1, *y.shape[-2:])
    totals = {"on": [0.0, 0], "off": [0.0, 0]}
    for axis in (1, 2):  # across horizontal lines (vertical steps), then across vertical lines
        steps = (y.narrow(axis, 1, y.shape[axis] - 1) - y.narrow(axis, 0, y.shape[axis] - 1)).abs()
        per_line = steps.sum(dim=(0, 3 - axis))
        samples = steps.numel() // per_line.numel()
        lines = torch.arange(1, y.shape[axis])
        for name, select in (("on", on(lines, axis)), ("off", off(lines, axis))):
            totals[name][0] += float(per_line[select].sum())
            totals[name][1] += int(select.sum()) * samples
    (on_sum, on_count), (off_sum, off_count) = totals["on"], totals["off"]
    if on_count == 0 or off_count == 0:
        raise ValueError(f"an image of {tuple(output.shape[-2:])} is too small for this measure")
    if off_sum == 0.0:
        return 1.0 if on_sum == 0.0 else float("inf")
    return (on_sum / on_count) / (off_sum / off_count)


def blockiness(
    output: Tensor, scale: int, block: int = JPEG_BLOCK, offset: tuple[int, int] = (0, 0)
) -> float:
    """How visible the input's JPEG grid is in an output upscaled ×`scale`: 1.00 when it is not.

    The input's `block`-pixel grid lands every `block`·`scale` output pixels. This is the mean luma
    step (absolute difference of neighbouring Y values, horizontal and vertical) across those grid
    lines divided by the mean step across the other lines that fall between two input pixels (every
    `scale` output pixels). Comparing like with like keeps a pattern every `scale` pixels (see
    `mesh`) out of it, and makes a nearest-neighbour upscale of a clean photo score 1.00 too.
    `offset` is the grid's position in input pixels (x, y), for crops that do not start on it. The
    image is (3, H, W) or (B, 3, H, W) in [0, 1].
    """
    if scale < 1 or block < 2:
        raise ValueError(f"blockiness needs scale ≥ 1 and block ≥ 2, got {scale} and {block}")
    shift = {1: offset[1], 2: offset[0]}

    def on_grid(lines: Tensor, axis: int) -> Tensor:
        return (lines % scale == 0) & ((lines // scale + shift[axis]) % block == 0)

    def between_inputs(lines: Tensor, axis: int) -> Tensor:
        return (lines % scale == 0) & ~on_grid(lines, axis)

    return _step_ratio(output, on_grid, between_inputs)


def mesh(output: Tensor, scale: int, block: int = JPEG_BLOCK, offset: tuple[int, int] = (0, 0)) -> float:
    """How visible the input's pixel grid is in an output upscaled ×`scale`: 1.00 when it is not.

    The mean luma step across the lines between two input pixels (every `scale` output pixels, the
    JPEG grid's lines left out) over the mean step across the lines inside input pixels. A network
    that draws a pattern repeating every `scale` pixels (a mesh texture) scores above 1; real detail
    does not know where the input's pixels were and scores about 1 (bicubic lands within about ±0.2
    of it, depending on the content). Meaningless for scale 1; `offset` as in `blockiness`.
    """
    if scale < 2:
        raise ValueError(f"mesh needs a scale of at least 2, got {scale}")
    shift = {1: offset[1], 2: offset[0]}

    def between_inputs(lines: Tensor, axis: int) -> Tensor:
        return (lines % scale == 0) & ((lines // scale + shift[axis]) % block != 0)

    def inside_inputs(lines: Tensor, axis: int) -> Tensor:
        return lines % scale != 0

    return _step_ratio(output, between_inputs, inside_inputs)


def psnr_y_against(output: Tensor, reference: Tensor, border: int = 0) -> float:
    """PSNR-Y of `output` against another model's output for the same input (e.g. x4plus's): how far
    apart the two results are, not how good either is."""
    return psnr_y(output, reference, border)


def _gaussian(size: int = 11, sigma: float = 1.5) -> Tensor:
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(axis**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(image: Tensor, g: Tensor) -> Tensor:
    """The 2-D Gaussian window as two 1-D passes: the same result, 5× fewer operations on big photos."""
    return F.conv2d(F.conv2d(image, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))


def ssim_y(output: Tensor, target: Tensor, border: int = 0) -> float:
    """SSIM (11×11 Gaussian window, σ = 1.5) on the Y channel in 8-bit units."""
    _check(output, target)
    x = _crop(rgb_to_y(torch.round(output.clamp(0, 1) * 255) / 255), border).double() * 255
    y = _crop(rgb_to_y(torch.round(target.clamp(0, 1) * 255) / 255), border).double() * 255
    x, y = x.reshape(-1, 1, *x.shape[-2:]), y.reshape(-1, 1, *y.shape[-2:])
    g = _gaussian().to(x)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mu_x**2
    syy = _blur(y * y, g) - mu_y**2
    sxy = _blur(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(ssim_map.mean())


def sharpness(image: Tensor) -> float:
    """Mean absolute Laplacian of the Y channel: higher means more fine detail / edge contrast."""
    y = rgb_to_y(image.clamp(0, 1)).reshape(-1, 1, *image.shape[-2:]).double()
    kernel = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float64)[None, None]
    return float(F.conv2d(y, kernel).abs().mean() * 255)


def brisque(image: Tensor) -> float:
    """BRISQUE no-reference quality of an sRGB image (3, H, W) in [0, 1]: lower looks more natural.

    Uses the PyPI `brisque` package (the `training` extra). Its feature vector mixes numpy scalars
    and one-element arrays, which numpy ≥ 2.4 refuses to turn into floats inside the package, so the
    features are computed here, flattened to plain floats, and handed to its scorer.
    """
    import cv2  # the package's own dependencies, present with it
    import numpy as np
    from skimage.color import rgb2gray

    scorer = _brisque_scorer()
    rgb = to_uint8(image).permute(1, 2, 0).numpy()
    gray = rgb2gray(rgb)  # the same steps as the package's own `score`
    half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    features = [
        float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
        for level in (gray, half)
        for value in scorer.calculate_brisque_features(level, kernel_size=7, sigma=7 / 6)
    ]
    return float(scorer.calculate_image_quality_score(np.array(features, dtype=np.float64)))


_SCORER = None


def _brisque_scorer():  # noqa: ANN202 - the package's own class
    global _SCORER
    if _SCORER is None:
        try:
            from brisque import BRISQUE
        except ImportError as exc:
            raise RuntimeError(
                "BRISQUE needs the training extra: pip install 'image-enhancer[training]'"
            ) from exc
        _SCORER = BRISQUE(url=False)
    return _SCORER
