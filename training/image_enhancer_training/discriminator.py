"""U-Net discriminator with spectral normalisation (per-pixel real/fake logits), as in Real-ESRGAN.

The U-Net shape gives per-pixel feedback, which suits local textures; spectral normalisation keeps
its Lipschitz constant bounded so GAN training stays stable.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class UNetDiscriminatorSN(nn.Module):
    def __init__(self, in_channels: int = 3, num_feat: int = 64) -> None:
        super().__init__()
        f = num_feat
        self.conv0 = nn.Conv2d(in_channels, f, 3, 1, 1)
        # Encoder: three stride-2 downsamplings.
        self.down1 = spectral_norm(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.down2 = spectral_norm(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.down3 = spectral_norm(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        # Decoder: bilinear upsampling with skip connections from the encoder.
        self.up1 = spectral_norm(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.up2 = spectral_norm(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.up3 = spectral_norm(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.refine1 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.refine2 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.head = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) with H, W multiples of 8 → (B, 1, H, W) logits."""
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"discriminator input sides must be multiples of 8, got {tuple(x.shape[-2:])}")
        x0 = _act(self.conv0(x))
        x1 = _act(self.down1(x0))
        x2 = _act(self.down2(x1))
        x3 = _act(self.down3(x2))
        y = _act(self.up1(F.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=False))) + x2
        y = _act(self.up2(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))) + x1
        y = _act(self.up3(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))) + x0
        y = _act(self.refine2(_act(self.refine1(y))))
        return self.head(y)
