"""Shrinking a large image piece by piece: the antialiased bicubic reduction as explicit weights.

``colour.resize`` shrinks with PyTorch's antialiased bicubic interpolation, a linear map applied to
rows and then columns. Written out as weights, it can be applied to any rectangle of the input on its
own: the reductions of pieces that sum to an image sum to the reduction of that image. The tiler uses
this to reduce each tile's blended share of a ×4 result to the requested size as soon as the tile is
done, so only a canvas of the requested size is ever held (a 12-megapixel photo at ×2 needs 0.6 GB of
floats instead of the 2.3 GB of its ×4 result).

The weights are PyTorch's own (``_compute_indices_min_size_weights_aa`` in its upsampling kernels):
output pixel ``i`` is centred on input position ``(i + 0.5)·s`` (``s`` = input/output size), covers
``2·s`` input pixels each side with Keys' cubic (a = −0.5) stretched by ``s``, and its weights are
divided by their sum, which also handles the image edges. Usually the sizes' ratio is a small fraction
``P/Q`` (×2 from a ×4 network: 2/1; ×1.5: 8/3); then a piece is reduced by PyTorch's own kernel inside
a zero frame that starts and ends on multiples of ``P`` input pixels, where the kernel's scale and its
output grid are the whole image's, which gives the same weights several times faster than multiplying
by them. Other sizes (a ratio such as 188/70) multiply by the weights as banded matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Output rows computed per matrix product of the banded reduction.
BAND_ROWS = 96
#: Largest ``P`` (and ``Q``) of a ratio ``P/Q`` reduced through PyTorch's kernel; the frames grow with it.
MAX_FRAME_STEP = 64


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@dataclass(frozen=True)
class AxisReduction:
    """The weights that shrink an axis of ``in_size`` pixels to ``out_size``: output pixel ``i`` is
    ``Σ_k weights[i, k] · input[starts[i] + k]`` (unused trailing weights are zero)."""

    in_size: int
    out_size: int
    starts: np.ndarray  # (out_size,) int64
    weights: np.ndarray  # (out_size, taps) float64

    @property
    def fraction(self) -> tuple[int, int]:
        """The ratio of the sizes in lowest terms, ``(P, Q)``: ``P`` input pixels make ``Q`` outputs."""
        common = math.gcd(self.in_size, self.out_size)
        return self.in_size // common, self.out_size // common

    @classmethod
    def bicubic(cls, in_size: int, out_size: int) -> AxisReduction:
        if not 0 < out_size <= in_size:
            raise ValueError(f"a reduction needs 0 < output ≤ input, got {in_size} → {out_size}")
        scale = in_size / out_size
        support = 2.0 * scale
        centres = scale * (np.arange(out_size) + 0.5)
        # int() truncation as in PyTorch (the values are non-negative after the max).
        starts = np.maximum((centres - support + 0.5).astype(np.int64), 0)
        ends = np.minimum((centres + support + 0.5).astype(np.int64), in_size)
        taps = int((ends - starts).max())
        offsets = starts[:, None] + np.arange(taps)[None, :]
        weights = _keys_cubic((offsets - centres[:, None] + 0.5) / scale)
        weights[offsets >= ends[:, None]] = 0.0
        totals = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals != 0)
        return cls(in_size, out_size, starts, weights)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The output pixels ``[first, last)`` that input pixels ``[start, end)`` contribute to."""
        reach = self.starts + self.weights.shape[1]
        first = int(np.searchsorted(reach, start, side="right"))
        last = int(np.searchsorted(self.starts, end, side="left"))
        return first, max(first, last)

    def matrix(self, start: int, length: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """The reduction of input pixels ``[start, start + length)`` as a dense ``(outputs, length)`` matrix
        (each input pixel's column multiplied by ``scale`` when given), and its first output index."""
        first, last = self.span(start, start + length)
        index = (self.starts[first:last] - start)[:, None] + np.arange(self.weights.shape[1])[None, :]
        inside = (index >= 0) & (index < length)
        dense = np.zeros((last - first, length), dtype=np.float32)
        dense[np.nonzero(inside)[0], index[inside]] = self.weights[first:last][inside]
        matrix = torch.from_numpy(dense)
        if scale is not None:
            matrix = matrix.to(scale.device) * scale.view(1, -1)
        return matrix, first

    def bands(self, matrix: torch.Tensor, first: int, start: int) -> list[tuple[int, int, int, int]]:
        """``(top, bottom, low, high)``: output rows ``[top, bottom)`` of ``matrix`` only read its columns
        ``[low, high)`` (the weights form a narrow band, so each product stays small but large enough for
        the matrix kernels)."""
        local = self.starts[first : first + matrix.shape[0]] - start
        taps, length = self.weights.shape[1], matrix.shape[1]
        return [
            (top, bottom, max(0, int(local[top])), min(length, int(local[bottom - 1]) + taps))
            for top in range(0, matrix.shape[0], BAND_ROWS)
            for bottom in [min(matrix.shape[0], top + BAND_ROWS)]
        ]


@dataclass(frozen=True)
class Reduction:
    """Shrinking a ``(C, H, W)`` image to ``height × width``, applicable to one rectangle at a time."""

    rows: AxisReduction
    cols: AxisReduction

    @classmethod
    def bicubic(cls, in_size: tuple[int, int], out_size: tuple[int, int]) -> Reduction:
        rows = AxisReduction.bicubic(in_size[0], out_size[0])
        return cls(rows, AxisReduction.bicubic(in_size[1], out_size[1]))

    @property
    def out_size(self) -> tuple[int, int]:
        return self.rows.out_size, self.cols.out_size

    def _interpolate(
        self,
        block: torch.Tensor,
        top: int,
        left: int,
        row_weight: torch.Tensor | None,
        col_weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, int, int]:
        """``apply`` through PyTorch's own kernel: the piece is weighted into a zero frame reaching
        ``4·ratio`` pixels beyond it (clipped at the image's edges), with edges on multiples of ``P``, so
        every output the piece touches gets the taps, weights and edge normalisation of the whole image."""
        channels, height, width = block.shape
        frame_rows = _frame(top, height, *self.rows.fraction, self.rows.in_size)
        frame_cols = _frame(left, width, *self.cols.fraction, self.cols.in_size)
        (y0, y1, oy), (x0, x1, ox) = frame_rows, frame_cols
        frame = torch.empty((channels, y1 - y0, x1 - x0), dtype=block.dtype, device=block.device)
        inner = _zero_around(frame, top - y0, height, left - x0, width)
        if row_weight is None and col_weight is None:
            inner.copy_(block)
        else:
            rw = row_weight if row_weight is not None else torch.ones(height, device=block.device)
            cw = col_weight if col_weight is not None else torch.ones(width, device=block.device)
            torch.mul(block, (rw.view(-1, 1) * cw.view(1, -1)).to(block.dtype), out=inner)
        (p_rows, q_rows), (p_cols, q_cols) = self.rows.fraction, self.cols.fraction
        size = ((y1 - y0) // p_rows * q_rows, (x1 - x0) // p_cols * q_cols)
        shrunk = F.interpolate(frame[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]
        first_y, last_y = self.rows.span(top, top + height)
        first_x, last_x = self.cols.span(left, left + width)
        return shrunk[:, first_y - oy : last_y - oy, first_x - ox : last_x - ox], first_y, first_x

    def apply(
        self,
        block: torch.Tensor,
        top: int,
        left: int,
        row_weight: torch.Tensor | None = None,
        col_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int, int]:
        """The reduction of a ``(C, h, w)`` piece lying at ``(top, left)`` of the large image (zero
        elsewhere), optionally weighted by ``row_weight[y] · col_weight[x]`` first (a tile's blend
        weights, folded into the matrices instead of costing a pass over the piece): the partial output
        and where it lies in the reduced image."""
        channels, height, width = block.shape
        if max(*self.rows.fraction, *self.cols.fraction) <= MAX_FRAME_STEP:
            return self._interpolate(block, top, left, row_weight, col_weight)
        rows, out_top = self.rows.matrix(top, height, row_weight)
        cols, out_left = self.cols.matrix(left, width, col_weight)
        rows, cols = rows.to(block.device, block.dtype), cols.to(block.device, block.dtype)
        tall = torch.empty((channels, rows.shape[0], width), dtype=block.dtype, device=block.device)
        for first, last, low, high in self.rows.bands(rows, out_top, top):
            tall[:, first:last] = torch.matmul(rows[first:last, low:high], block[:, low:high])
        out = torch.empty((channels, rows.shape[0], cols.shape[0]), dtype=block.dtype, device=block.device)
        for first, last, low, high in self.cols.bands(cols, out_left, left):
            out[:, :, first:last] = torch.matmul(tall[:, :, low:high], cols[first:last, low:high].T)
        return out, out_top, out_left


def _zero_around(frame: torch.Tensor, top: int, height: int, left: int, width: int) -> torch.Tensor:
    """Zeroes ``frame`` outside the rectangle at ``(top, left)`` and returns that rectangle: the piece is
    written there next, so zeroing it too (a whole-frame ``zeros``) would cost a pass for nothing."""
    frame[:, :top].zero_()
    frame[:, top + height :].zero_()
    frame[:, top : top + height, :left].zero_()
    frame[:, top : top + height, left + width :].zero_()
    return frame[:, top : top + height, left : left + width]


def _frame(start: int, length: int, step: int, outputs: int, size: int) -> tuple[int, int, int]:
    """A frame around input pixels ``[start, start + length)`` of an axis of ``size`` whose ratio is
    ``step/outputs``: ``(first, end, first output)``, with room for every tap of every output the piece
    touches and both ends on multiples of ``step`` (or at the axis's end, itself one)."""
    margin = 4 * -(-step // outputs) + 1
    first = max(0, (start - margin) // step * step)
    end = min(size, -(-(start + length + margin) // step) * step)
    return first, end, first // step * outputs
