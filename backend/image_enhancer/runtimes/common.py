"""What every runtime does alike around its own inference: a chain of stages, one of which may work at
the output resolution in strips of rows, and the fp32 rerun of a result that overflowed.

A stage that works at the output resolution runs in strips of rows, so that only one strip's large
activations exist at a time (RRDBNet's ×4 tail: 4% of its work, most of its memory).

Each strip is its rows plus ``halo`` rows of context each side; at the image's top and bottom the
window is shifted inwards instead of cut, so every window has the same height (a runtime compiled for
one shape runs them all) and each sees the image edge as the whole stage does. With ``halo`` at least
the stage's receptive field, the strips reproduce the whole stage exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import numpy as np
import torch

from image_enhancer.architectures.base import Sum
from image_enhancer.engine import watch

#: Input pixels per strip: for x4plus's tail (about 55 kB of working memory per input pixel) 4096
#: keep a strip near 200 MB; on a 256-pixel-wide tile the 2 rows of context each side add a quarter
#: to the tail, which is 8% of the work.
STRIP_PIXELS = 4096


def run_in_strips(
    run: Callable[[np.ndarray], np.ndarray], values: np.ndarray, halo: int, strip_pixels: int = STRIP_PIXELS
) -> np.ndarray:
    """``run`` over ``(..., C, H, W)`` in strips of rows; the same as ``run(values)``."""
    height, width = values.shape[-2:]
    rows = max(1, strip_pixels // width)
    window = min(height, rows + 2 * halo)
    if rows >= height or window >= height:
        return run(values)
    parts = []
    scale = 0
    job = watch.current()
    for top in range(0, height, rows):
        if job is not None:  # a runtime that cannot stop inside a stage still stops between strips
            job.check()
        bottom = min(height, top + rows)
        start = max(0, min(top - halo, height - window))
        output = run(values[..., start : start + window, :])
        scale = scale or output.shape[-2] // window
        parts.append(output[..., (top - start) * scale : (bottom - start) * scale, :])
    return np.concatenate(parts, axis=-2)


Stage = tuple[Callable[[np.ndarray], np.ndarray], int]


def run_stages(stages: Iterable[Stage | Sum[Stage]], values: np.ndarray, strip_pixels: int) -> np.ndarray:
    """A chain of ``(run, halo)`` stages over ``values``; a stage with a halo runs in strips of rows; a
    ``Sum``'s chain is added to its input here, in float32 whatever the runtime computes in."""
    for stage in stages:
        if isinstance(stage, Sum):
            total = run_stages(stage.parts, values, strip_pixels)  # a new array: the sum goes in place
            total += values
            values = total
            continue
        run, halo = stage
        values = run_in_strips(run, values, halo, strip_pixels) if halo else run(values)
    return values


def as_batch(outputs: list[torch.Tensor]) -> torch.Tensor:
    """The tiles' outputs as one batch; a single one without a copy (a 1024² compact job's result is a
    200 MB tile, and copying it cost a tenth of the job)."""
    return outputs[0][None] if len(outputs) == 1 else torch.stack(outputs)


Precision = TypeVar("Precision")
Values = TypeVar("Values", np.ndarray, torch.Tensor)


#: The precisions whose range is narrower than fp32's, each runtime's name of them: fp16 (largest
#: value 65504) overflows inside some GAN models on bright areas. bf16 has fp32's range, and an int8
#: network's float parts compute in bf16 or fp32.
NARROW_RANGE = {torch.float16, "fp16", "fp16-storage"}


class Fp32Rerun(Generic[Precision]):
    """Runs in the chosen precision and, for a narrow-range one (``NARROW_RANGE``), again in fp32 when
    the result holds NaN or Inf, where fp32 does not. ``fallbacks`` counts the reruns. Other precisions
    skip the check (it took 1.7 ms of a 256² compact job's 88)."""

    def __init__(self, precision: Precision, fp32: Precision) -> None:
        self.precision = precision
        self.fp32 = fp32
        self.fallbacks = 0
        self._checked = precision in NARROW_RANGE

    def __call__(self, run: Callable[[Precision], Values]) -> Values:
        """``run(precision)``, or ``run(fp32)`` when that is not finite."""
        output = run(self.precision)
        if self._checked and not _finite(output):
            self.fallbacks += 1
            output = run(self.fp32)
        return output


def _finite(values: np.ndarray | torch.Tensor) -> bool:
    """Whether every value is finite, from their sum: a NaN or an Inf anywhere makes it NaN or Inf, and
    pixel values cannot overflow it. A fifth of the time of testing each value, which on a compact
    model's 1024² output took a fifth of the engine's own time per job."""
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu" or values.dtype is torch.bfloat16:  # NumPy has no bf16
            return bool(torch.isfinite(values.sum(dtype=torch.float64)))
        values = values.detach().numpy()  # NumPy's sum is the faster on a CPU
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.isfinite(values.sum(dtype=np.float64)))
