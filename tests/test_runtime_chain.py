"""The chain every runtime runs its stages through: strips of rows, and sums kept in float32."""

from __future__ import annotations

import numpy as np

from image_enhancer.architectures.base import Sum
from image_enhancer.runtimes.common import run_stages


def _doubled(values: np.ndarray) -> np.ndarray:
    return values * 2


def _plus_one(values: np.ndarray) -> np.ndarray:
    return values + 1


def test_a_sum_adds_its_chain_to_its_input_and_sums_nest():
    values = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    chain = [(_plus_one, 0), Sum(((_doubled, 0), Sum(((_plus_one, 0),)))), (_doubled, 0)]
    v = values + 1
    inner = v * 2
    expected = ((inner + (inner + 1)) + v) * 2
    assert np.array_equal(run_stages(chain, values, strip_pixels=4096), expected)


def test_a_sum_is_float32_even_where_its_chain_rounds():
    """The chain's own result may be rounded (as bf16 rounds it); the sum with the input is not."""
    values = np.full((1, 1, 2, 2), 1000.0, np.float32)
    residual = np.float32(0.015625)  # 2⁻⁶: lost if 1000 + it were kept in 8 bits of mantissa

    def small(v: np.ndarray) -> np.ndarray:
        return np.full_like(v, residual)

    assert np.all(run_stages([Sum(((small, 0),))], values, strip_pixels=4096) == np.float32(1000.015625))


def test_a_strip_stage_inside_a_sum_is_the_whole_stage():
    values = np.random.default_rng(0).random((1, 2, 9, 5), dtype=np.float32)
    chain = [Sum(((_doubled, 1),))]
    assert np.allclose(run_stages(chain, values, strip_pixels=10), values * 3)
