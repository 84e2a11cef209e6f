"""Real-ESRGAN-style second-order degradations, generated on the fly in torch.

`Degrader(config, scale, seed)` turns a batch of high-quality crops `(B, 3, H, W)` in [0, 1] into
low-quality inputs `(B, 3, H/scale, W/scale)`: blur (Gaussian family or sinc) → resize → noise
(Gaussian or Poisson, colour or grey) → JPEG, twice, then a final resize with an optional sinc filter
and JPEG in random order. A fraction of samples (`clean_prob`) gets a plain bicubic downscale instead,
so one model serves both clean and damaged photos.

`pipeline = "camera"` swaps the second-order chain for the damage photos people actually have (see
`CameraParams`): mild blur, a chain of resizes, signal-dependent camera noise in luma and chroma, and
JPEG at quality 30–95 with chroma subsampling, often twice.

Everything runs on the batch's device except JPEG, which goes through Pillow on the CPU (torch has no
JPEG encoder). Every random draw comes from generators seeded by `seed`, so a seed reproduces a batch.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .kernels import GAUSSIAN_KINDS, gaussian_family_kernel, pad_kernel, sinc_kernel, uniform

RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class StageParams:
    """Ranges for one degradation order. Noise sigmas are in 8-bit steps (0–255)."""

    blur_prob: float = 1.0
    kernel_size: tuple[int, int] = (7, 21)
    kernel_probs: dict[str, float] = field(
        default_factory=lambda: {
            "iso": 0.45,
            "aniso": 0.25,
            "generalized_iso": 0.12,
            "generalized_aniso": 0.03,
            "plateau_iso": 0.12,
            "plateau_aniso": 0.03,
        }
    )
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)
    betap: tuple[float, float] = (1.0, 2.0)
    # Probabilities of resizing up, down, or keeping the size.
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


#: Pillow's names for JPEG chroma subsampling: full chroma, halved horizontally, halved both ways.
SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")
PIPELINES = ("second_order", "camera")


@dataclass
class CameraParams:
    """The damage real photos carry, in the order it happens to them.

    Mild optical blur on the ground truth → a resize to the size the camera (or a first edit) left
    → camera noise there → optionally a first JPEG there (`double_jpeg_prob`) → the rest of a chain of
    `resize_steps` resizes ending at the input size → JPEG. Camera noise is signal-dependent: in luma
    its standard deviation is √(read² + shot²·Y) for luma Y in [0, 1] (`read_noise` and `shot_noise`
    in 8-bit steps; shot noise is the part that grows with the light), in chroma it is `chroma_noise`
    times that, smoothed over `chroma_grain` pixels as demosaicking leaves it. JPEG quality, the
    subsampling of chroma and the quality of a first compression are drawn per sample.
    """

    blur_prob: float = 0.6
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # Gaussian σ in ground-truth pixels
    resize_steps: tuple[int, int] = (1, 3)  # resizes in the chain; the last lands on the input size
    resize_range: tuple[float, float] = (0.6, 1.6)  # intermediate sizes, relative to the input size
    noise_prob: float = 0.8
    read_noise: tuple[float, float] = (0.5, 4.0)
    shot_noise: tuple[float, float] = (1.0, 12.0)
    chroma_noise: tuple[float, float] = (0.5, 2.0)
    chroma_grain: float = 1.0
    jpeg_prob: float = 1.0
    jpeg_quality: tuple[int, int] = (30, 95)
    subsampling_probs: dict[str, float] = field(
        default_factory=lambda: {"4:4:4": 0.2, "4:2:2": 0.1, "4:2:0": 0.7}
    )
    double_jpeg_prob: float = 0.4
    first_jpeg_quality: tuple[int, int] = (60, 95)  # a camera's or a first save's quality

    def validate(self) -> None:
        where = "degradation.camera"
        for name in ("blur_prob", "noise_prob", "jpeg_prob", "double_jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{where}.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("blur_sigma", "resize_range", "read_noise", "shot_noise", "chroma_noise"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise ValueError(f"{where}.{name} must satisfy 0 ≤ low ≤ high, got {(low, high)}")
        if self.resize_range[0] <= 0 or self.blur_sigma[1] > 3.0:
            raise ValueError(f"{where}: resize factors must be positive and blur_sigma at most 3")
        if not 1 <= self.resize_steps[0] <= self.resize_steps[1] <= 4:
            raise ValueError(f"{where}.resize_steps must satisfy 1 ≤ low ≤ high ≤ 4")
        for name in ("jpeg_quality", "first_jpeg_quality"):
            low, high = getattr(self, name)
            if not 1 <= low <= high <= 100:
                raise ValueError(f"{where}.{name} must satisfy 1 ≤ low ≤ high ≤ 100")
        unknown = set(self.subsampling_probs) - set(SUBSAMPLINGS)
        if unknown or sum(self.subsampling_probs.values()) <= 0:
            raise ValueError(f"{where}.subsampling_probs: keys among {', '.join(SUBSAMPLINGS)}, positive sum")
        if self.chroma_grain < 0:
            raise ValueError(f"{where}.chroma_grain must not be negative")


def _second_order_defaults() -> StageParams:
    return StageParams(
        blur_prob=0.8,
        blur_sigma=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )


@dataclass
class DegradationConfig:
    """What the degradation pipeline may do; every field can be set from the training config."""

    # Share of samples that only get a bicubic downscale (1.0 = classic bicubic SR training).
    clean_prob: float = 0.0
    # Probability of applying the second order at all.
    second_order_prob: float = 1.0
    final_sinc_prob: float = 0.8
    first: StageParams = field(default_factory=StageParams)
    second: StageParams = field(default_factory=_second_order_defaults)
    # "second_order" (Real-ESRGAN's chain, `first` and `second`) or "camera" (`camera`).
    pipeline: str = "second_order"
    camera: CameraParams = field(default_factory=CameraParams)

    def validate(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"degradation.pipeline must be one of {', '.join(PIPELINES)}: {self.pipeline!r}")
        self.camera.validate()
        for name in ("clean_prob", "second_order_prob", "final_sinc_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"degradation.{name} must be in [0, 1], got {value}")
        for order, stage in (("first", self.first), ("second", self.second)):
            unknown = set(stage.kernel_probs) - set(GAUSSIAN_KINDS)
            if unknown:
                raise ValueError(f"degradation.{order}.kernel_probs: unknown kinds {sorted(unknown)}")
            if sum(stage.kernel_probs.values()) <= 0:
                raise ValueError(f"degradation.{order}.kernel_probs must have a positive sum")
            low, high = stage.kernel_size
            if low % 2 == 0 or high % 2 == 0 or not 3 <= low <= high:
                raise ValueError(f"degradation.{order}.kernel_size must be odd sizes 3 ≤ low ≤ high")
            if len(stage.resize_probs) != 3 or abs(sum(stage.resize_probs) - 1) > 1e-6:
                raise ValueError(f"degradation.{order}.resize_probs must be three numbers summing to 1")
            q_low, q_high = stage.jpeg_quality
            if not 1 <= q_low <= q_high <= 100:
                raise ValueError(f"degradation.{order}.jpeg_quality must satisfy 1 ≤ low ≤ high ≤ 100")


def quantize(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to 8-bit steps, as a saved image would be."""
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


def to_uint8(x: Tensor) -> Tensor:
    """The 8-bit samples an image file would hold (clamped to [0, 1], rounded), on the CPU."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """(B, 3, H, W) sRGB → full-range YCbCr as JPEG defines it (BT.601; Cb and Cr centred on 0)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.cat([y, (b - y) / 1.772, (r - y) / 1.402], dim=1)


def ycbcr_to_rgb(x: Tensor) -> Tensor:
    y, cb, cr = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    r = y + 1.402 * cr
    b = y + 1.772 * cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.cat([r, g, b], dim=1)


def bicubic_downscale(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic downscale by an integer factor, quantised to 8 bits."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return quantize(lr)


def filter2d(x: Tensor, kernels: Tensor) -> Tensor:
    """Filter each sample of `x` (B, C, H, W) with its own kernel (B, K, K), reflect-padded.

    Done by FFT: large kernels (up to 21×21) on per-sample grouped convolutions are slow on CPU.
    The kernels are point-symmetric, so convolution and correlation agree.
    """
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernels.to(x), s=size)[:, None]
    full = torch.fft.irfft2(spectrum, s=size)
    # Linear convolution of the padded image; the fully valid part starts at 2·pad.
    return full[..., 2 * pad : 2 * pad + h, 2 * pad : 2 * pad + w].contiguous()


def jpeg(x: Tensor, qualities: list[int], subsampling: list[str] | None = None) -> Tensor:
    """JPEG-compress each sample at its own quality through Pillow (CPU) and decode it again;
    `subsampling` gives each sample's chroma subsampling (one of SUBSAMPLINGS; Pillow's default,
    4:2:0, when absent)."""
    arrays = to_uint8(x).permute(0, 2, 3, 1).numpy()
    chroma = subsampling if subsampling is not None else [None] * len(qualities)
    out = []
    for array, quality, sub in zip(arrays, qualities, chroma, strict=True):
        buffer = io.BytesIO()
        options = {} if sub is None else {"subsampling": sub}
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality), **options)
        buffer.seek(0)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    stacked = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return stacked.to(device=x.device, dtype=x.dtype) / 255.0


def _delta(size: int) -> Tensor:
    """The identity kernel: a single 1 in the centre."""
    kernel = torch.zeros(size, size)
    kernel[size // 2, size // 2] = 1.0
    return kernel


class Degrader:
    """Seeded, batched second-order degradation of HR crops into LR inputs."""

    def __init__(self, config: DegradationConfig, scale: int, seed: int = 0) -> None:
        config.validate()
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.config = config
        self.scale = scale
        self.gen = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream; the training loop reseeds per iteration so resumes are exact."""
        self.gen.manual_seed(seed)

    # -- random helpers (all draws from self.gen) -------------------------------------------------
    def _rand(self) -> float:
        return float(torch.rand((), generator=self.gen))

    def _choice(self, weights: list[float]) -> int:
        return int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=self.gen))

    def _odd_size(self, low: int, high: int) -> int:
        return low + 2 * int(torch.randint(0, (high - low) // 2 + 1, (), generator=self.gen))

    def _device_gen(self, device: torch.device) -> torch.Generator:
        seed = int(torch.randint(0, 2**62, (), generator=self.gen))
        return torch.Generator(device=device).manual_seed(seed)

    # -- one kernel ------------------------------------------------------------------------------
    def blur_kernel(self, p: StageParams) -> Tensor:
        size = self._odd_size(*p.kernel_size)
        if self._rand() < p.sinc_prob:
            # Small kernels get a higher cutoff so they still ring visibly.
            low = math.pi / 3 if size < 13 else math.pi / 5
            return sinc_kernel(size, uniform(self.gen, low, math.pi))
        kinds = list(p.kernel_probs)
        kind = kinds[self._choice([p.kernel_probs[k] for k in kinds])]
        sigma_x = uniform(self.gen, *p.blur_sigma)
        sigma_y = uniform(self.gen, *p.blur_sigma)
        theta = uniform(self.gen, -math.pi, math.pi)
        beta = uniform(self.gen, *p.betag) if kind.startswith("generalized") else uniform(self.gen, *p.betap)
        return gaussian_family_kernel(kind, size, sigma_x, sigma_y, theta, beta)

    def _batch_kernels(self, b: int, p: StageParams) -> Tensor:
        size = p.kernel_size[1]
        blurred = [self._rand() < p.blur_prob for _ in range(b)]
        return torch.stack([pad_kernel(self.blur_kernel(p), size) if on else _delta(size) for on in blurred])

    # -- operations ------------------------------------------------------------------------------
    def _resize_factor(self, p: StageParams) -> float:
        direction = self._choice(list(p.resize_probs))
        if direction == 0:
            return uniform(self.gen, 1.0, p.resize_range[1])
        if direction == 1:
            return uniform(self.gen, p.resize_range[0], 1.0)
        return 1.0

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Resize with a randomly chosen interpolation mode."""
        mode = RESIZE_MODES[self._choice([1.0, 1.0, 1.0])]
        if mode == "area":
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(x, size=size, mode=mode, align_corners=False)

    def _scaled(self, size: tuple[int, int], factor: float) -> tuple[int, int]:
        return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))

    def _noise(self, x: Tensor, p: StageParams) -> Tensor:
        b = x.shape[0]
        dev_gen = self._device_gen(x.device)
        gaussian = torch.tensor([self._rand() < p.gaussian_noise_prob for _ in range(b)], device=x.device)
        gray = torch.tensor([self._rand() < p.gray_noise_prob for _ in range(b)], device=x.device)
        sigma = torch.tensor([uniform(self.gen, *p.noise_sigma) / 255.0 for _ in range(b)], device=x.device)
        pscale = torch.tensor([uniform(self.gen, *p.poisson_scale) for _ in range(b)], device=x.device)
        view = (b, 1, 1, 1)

        colour_noise = torch.randn(x.shape, generator=dev_gen, device=x.device, dtype=x.dtype)
        gray_noise = torch.randn((b, 1, *x.shape[-2:]), generator=dev_gen, device=x.device, dtype=x.dtype)
        g_noise = torch.where(gray.view(view), gray_noise.expand_as(x), colour_noise) * sigma.view(view)

        # Poisson noise on 8-bit photon counts; the grey variant uses the luma channel.
        clamped = x.clamp(0, 1)
        luma = 0.299 * clamped[:, 0:1] + 0.587 * clamped[:, 1:2] + 0.114 * clamped[:, 2:3]
        p_colour = torch.poisson(clamped * 255.0, generator=dev_gen) / 255.0 - clamped
        p_gray = (torch.poisson(luma * 255.0, generator=dev_gen) / 255.0 - luma).expand_as(x)
        p_noise = torch.where(gray.view(view), p_gray, p_colour) * pscale.view(view)

        return x + torch.where(gaussian.view(view), g_noise, p_noise)

    def _jpeg(self, x: Tensor, p: StageParams) -> Tensor:
        low, high = p.jpeg_quality
        qualities = [int(torch.randint(low, high + 1, (), generator=self.gen)) for _ in range(x.shape[0])]
        return jpeg(x, qualities)

    def _final_sinc_kernels(self, b: int) -> Tensor:
        size = 21
        kernels = []
        for _ in range(b):
            if self._rand() < self.config.final_sinc_prob:
                k = self._odd_size(7, size)
                kernels.append(pad_kernel(sinc_kernel(k, uniform(self.gen, math.pi / 3, math.pi)), size))
            else:
                kernels.append(_delta(size))
        return torch.stack(kernels)

    # -- the camera pipeline ---------------------------------------------------------------------
    def _mild_blur(self, x: Tensor, p: CameraParams) -> Tensor:
        size = 2 * math.ceil(3 * p.blur_sigma[1]) + 1 if p.blur_sigma[1] > 0 else 3
        kernels = []
        for _ in range(x.shape[0]):
            sigma = uniform(self.gen, *p.blur_sigma)
            on = self._rand() < p.blur_prob and sigma > 0
            kernels.append(gaussian_family_kernel("iso", size, sigma, sigma, 0.0) if on else _delta(size))
        return filter2d(x, torch.stack(kernels))

    def _camera_noise(self, x: Tensor, p: CameraParams) -> Tensor:
        """Signal-dependent noise in luma and (grainier) chroma, per sample, added in YCbCr."""
        b = x.shape[0]
        dev_gen = self._device_gen(x.device)
        view = (b, 1, 1, 1)

        def per_sample(values: list[float]) -> Tensor:
            return torch.tensor(values, device=x.device, dtype=x.dtype).view(view)

        on = per_sample([float(self._rand() < p.noise_prob) for _ in range(b)])
        read = per_sample([uniform(self.gen, *p.read_noise) / 255.0 for _ in range(b)])
        shot = per_sample([uniform(self.gen, *p.shot_noise) / 255.0 for _ in range(b)])
        chroma = per_sample([uniform(self.gen, *p.chroma_noise) for _ in range(b)])
        ycc = rgb_to_ycbcr(x.clamp(0, 1))
        sigma = torch.sqrt(read**2 + shot**2 * ycc[:, :1])
        luma_noise = torch.randn((b, 1, *x.shape[-2:]), generator=dev_gen, device=x.device, dtype=x.dtype)
        chroma_noise = torch.randn((b, 2, *x.shape[-2:]), generator=dev_gen, device=x.device, dtype=x.dtype)
        if p.chroma_grain > 0:
            size = 2 * math.ceil(2 * p.chroma_grain) + 1
            kernel = gaussian_family_kernel("iso", size, p.chroma_grain, p.chroma_grain, 0.0).to(x)
            # Smoothing lowers the noise's deviation by the kernel's norm: give it back.
            chroma_noise = filter2d(chroma_noise, kernel.expand(b, -1, -1)) / kernel.square().sum().sqrt()
        noise = torch.cat([luma_noise, chroma_noise * chroma], dim=1) * sigma * on
        return ycbcr_to_rgb(ycc + noise)

    def _subsamplings(self, b: int, p: CameraParams) -> list[str]:
        kinds = list(p.subsampling_probs)
        return [kinds[self._choice([p.subsampling_probs[k] for k in kinds])] for _ in range(b)]

    def _camera(self, hr: Tensor, lr_size: tuple[int, int]) -> Tensor:
        p = self.config.camera
        b = hr.shape[0]
        steps = int(torch.randint(p.resize_steps[0], p.resize_steps[1] + 1, (), generator=self.gen))
        sizes = [self._scaled(lr_size, uniform(self.gen, *p.resize_range)) for _ in range(steps - 1)]
        sizes.append(lr_size)
        x = self._resize(self._mild_blur(hr, p), sizes[0])
        x = quantize(self._camera_noise(x, p))
        # A first compression where the noise was made (a camera's JPEG, a first save), for some.
        twice = [self._rand() < p.double_jpeg_prob for _ in range(b)]
        first = [int(torch.randint(p.first_jpeg_quality[0], p.first_jpeg_quality[1] + 1, (),
                                   generator=self.gen)) for _ in range(b)]
        chroma = self._subsamplings(b, p)
        if any(twice):
            compressed = jpeg(x, first, chroma)
            x = torch.where(torch.tensor(twice, device=x.device).view(b, 1, 1, 1), compressed, x)
        for size in sizes[1:]:
            x = quantize(self._resize(x, size))
        on = [self._rand() < p.jpeg_prob for _ in range(b)]
        qualities = [int(torch.randint(p.jpeg_quality[0], p.jpeg_quality[1] + 1, (), generator=self.gen))
                     for _ in range(b)]
        chroma = self._subsamplings(b, p)
        if not any(on):
            return x
        compressed = jpeg(x, qualities, chroma)
        return torch.where(torch.tensor(on, device=x.device).view(b, 1, 1, 1), compressed, x)

    # -- the pipeline ----------------------------------------------------------------------------
    def __call__(self, hr: Tensor) -> Tensor:
        """Degrade `hr` (B, 3, H, W) in [0, 1]; H and W must be multiples of the scale."""
        if hr.ndim != 4 or hr.shape[1] != 3:
            raise ValueError(f"expected a batch of RGB images (B, 3, H, W), got shape {tuple(hr.shape)}")
        b, _, h, w = hr.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"crop size {h}×{w} is not a multiple of the scale {self.scale}")
        lr_size = (h // self.scale, w // self.scale)
        clean = bicubic_downscale(hr, self.scale)
        if self.config.clean_prob >= 1.0:
            return clean
        cfg = self.config
        if cfg.pipeline == "camera":
            degraded = self._camera(hr, lr_size)
            keep_clean = torch.tensor([self._rand() < cfg.clean_prob for _ in range(b)], device=hr.device)
            return torch.where(keep_clean.view(b, 1, 1, 1), clean, degraded)

        x = filter2d(hr, self._batch_kernels(b, cfg.first))
        x = self._resize(x, self._scaled((h, w), self._resize_factor(cfg.first)))
        x = self._noise(x, cfg.first)
        x = self._jpeg(x, cfg.first)

        if self._rand() < cfg.second_order_prob:
            x = filter2d(x, self._batch_kernels(b, cfg.second))
            x = self._resize(x, self._scaled(lr_size, self._resize_factor(cfg.second)))
            x = self._noise(x, cfg.second)

        sinc = self._final_sinc_kernels(b)
        if self._rand() < 0.5:
            x = filter2d(self._resize(x, lr_size), sinc)
            x = self._jpeg(x, cfg.second)
        else:
            x = self._jpeg(x, cfg.second)
            x = filter2d(self._resize(x, lr_size), sinc)
        degraded = quantize(x)

        keep_clean = torch.tensor([self._rand() < cfg.clean_prob for _ in range(b)], device=hr.device)
        return torch.where(keep_clean.view(b, 1, 1, 1), clean, degraded)
