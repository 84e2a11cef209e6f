"""Real-ESRGAN-style second-order degradations, generated on the fly in torch.

`Degrader(config, scale, seed)` turns a batch of high-quality crops `(B, 3, H, W)` in [0, 1] into
low-quality inputs `(B, 3, H/scale, W/scale)`: blur (Gaussian family or sinc) → resize → noise
(Gaussian or Poisson, colour or grey) → JPEG, twice, then a final resize with an optional sinc filter
and JPEG in random order. A fraction of samples (`clean_prob`) gets a plain bicubic downscale instead,
so one model serves both clean and damaged photos.

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

    def validate(self) -> None:
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


def jpeg(x: Tensor, qualities: list[int]) -> Tensor:
    """JPEG-compress each sample at its own quality through Pillow (CPU) and decode it again."""
    arrays = to_uint8(x).permute(0, 2, 3, 1).numpy()
    out = []
    for array, quality in zip(arrays, qualities, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
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
