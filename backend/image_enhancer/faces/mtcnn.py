"""MTCNN's three networks (Zhang et al., 2016) in PyTorch, filled from the Keras weight lists.

P-Net proposes face windows over an image pyramid, R-Net refines them on 24² crops, O-Net on 48²
crops also gives five landmarks (eye centres, nose tip, mouth corners): the points the FFHQ
alignment template is defined by. Layers follow the Keras models the weights were saved from,
including their "same" max-pooling and the width-major flattening before the dense layers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _PReLU(nn.Module):
    """Keras PReLU: one slope per channel (or per feature after a dense layer)."""

    def __init__(self, slopes: np.ndarray) -> None:
        super().__init__()
        flat = torch.from_numpy(np.ascontiguousarray(slopes, dtype=np.float32).reshape(-1))
        self.register_buffer("slopes", flat)

    def forward(self, x: Tensor) -> Tensor:
        slopes = self.slopes.view(1, -1, *([1] * (x.dim() - 2)))
        return torch.where(x >= 0, x, x * slopes)


def _conv(kernel: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    kh, kw, cin, cout = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw))
    conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))
    conv.bias.data = torch.from_numpy(np.asarray(bias, dtype=np.float32))
    return conv


def _dense(kernel: np.ndarray, bias: np.ndarray) -> nn.Linear:
    cin, cout = kernel.shape
    dense = nn.Linear(cin, cout)
    dense.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T, dtype=np.float32))
    dense.bias.data = torch.from_numpy(np.asarray(bias, dtype=np.float32))
    return dense


def _pool_same(x: Tensor, size: int) -> Tensor:
    """Keras MaxPooling2D(size, stride 2, padding="same"): pad (more at the end) with -inf."""
    if size == 2:
        # Padding of 0 or 1 at the end, as the length is even or odd: what ceil_mode does, without
        # arithmetic on the shape (a converter would fix that for the shape it traced; P-Net's vary).
        return F.max_pool2d(x, 2, 2, ceil_mode=True)
    padding = []
    for length in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(length / 2) - 1) * 2 + size - length, 0)
        padding += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, padding, value=-math.inf), size, 2)


def _flatten_width_major(x: Tensor) -> Tensor:
    # Keras permuted (H, W, C) to (W, H, C) before flattening: the original Caffe nets were column-major.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Fully convolutional: for each 12² window (stride 2), box offsets (4) and face probability."""

    def __init__(self, w: list[np.ndarray]) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv(w[0], w[1]), _PReLU(w[2])
        self.conv2, self.prelu2 = _conv(w[3], w[4]), _PReLU(w[5])
        self.conv3, self.prelu3 = _conv(w[6], w[7]), _PReLU(w[8])
        self.box, self.cls = _conv(w[9], w[10]), _conv(w[11], w[12])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = _pool_same(self.prelu1(self.conv1(x)), 2)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.box(x), F.softmax(self.cls(x), dim=1)[:, 1]


class RNet(nn.Module):
    """On 24² crops: box offsets and face probability."""

    def __init__(self, w: list[np.ndarray]) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv(w[0], w[1]), _PReLU(w[2])
        self.conv2, self.prelu2 = _conv(w[3], w[4]), _PReLU(w[5])
        self.conv3, self.prelu3 = _conv(w[6], w[7]), _PReLU(w[8])
        self.fc4, self.prelu4 = _dense(w[9], w[10]), _PReLU(w[11])
        self.box, self.cls = _dense(w[12], w[13]), _dense(w[14], w[15])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = _pool_same(self.prelu1(self.conv1(x)), 3)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu4(self.fc4(_flatten_width_major(self.prelu3(self.conv3(x)))))
        return self.box(x), F.softmax(self.cls(x), dim=1)[:, 1]


class ONet(nn.Module):
    """On 48² crops: box offsets, five landmarks (x₁…x₅, y₁…y₅ as box fractions), face probability."""

    def __init__(self, w: list[np.ndarray]) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv(w[0], w[1]), _PReLU(w[2])
        self.conv2, self.prelu2 = _conv(w[3], w[4]), _PReLU(w[5])
        self.conv3, self.prelu3 = _conv(w[6], w[7]), _PReLU(w[8])
        self.conv4, self.prelu4 = _conv(w[9], w[10]), _PReLU(w[11])
        self.fc5, self.prelu5 = _dense(w[12], w[13]), _PReLU(w[14])
        self.box, self.points, self.cls = _dense(w[15], w[16]), _dense(w[17], w[18]), _dense(w[19], w[20])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = _pool_same(self.prelu1(self.conv1(x)), 3)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = _pool_same(self.prelu3(self.conv3(x)), 2)
        x = self.prelu5(self.fc5(_flatten_width_major(self.prelu4(self.conv4(x)))))
        return self.box(x), self.points(x), F.softmax(self.cls(x), dim=1)[:, 1]
