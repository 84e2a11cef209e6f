"""Network interpolation for the strength control."""

from __future__ import annotations

import pytest
import torch
from spandrel.architectures.Compact import Compact

from image_enhancer.weights.interpolation import IncompatiblePairError, interpolate


def _pair():
    torch.manual_seed(1)
    a = Compact(num_conv=3, num_feat=8).state_dict()
    b = {k: torch.randn_like(v) for k, v in a.items()}
    return a, b


def test_endpoints_are_exact():
    a, b = _pair()
    at0, at1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for k in a:
        assert torch.equal(at0[k], a[k])
        assert torch.equal(at1[k], b[k])


def test_endpoints_are_exact_for_fp16_inputs():
    a, b = _pair()
    a16, b16 = {k: v.half() for k, v in a.items()}, {k: v.half() for k, v in b.items()}
    at1 = interpolate(a16, b16, 1.0)
    assert all(at1[k].dtype == torch.float32 and torch.equal(at1[k], b16[k].float()) for k in a)


def test_midpoint_is_the_mean():
    a, b = _pair()
    mid = interpolate(a, b, 0.25)
    for k in a:
        torch.testing.assert_close(mid[k], 0.75 * a[k] + 0.25 * b[k])


def test_different_layers_are_refused():
    a = Compact(num_conv=3, num_feat=8).state_dict()
    b = Compact(num_conv=4, num_feat=8).state_dict()
    with pytest.raises(IncompatiblePairError, match="different layers"):
        interpolate(a, b, 0.5)


def test_different_shapes_are_refused():
    a = Compact(num_conv=1, num_feat=8, upscale=4).state_dict()
    b = Compact(num_conv=1, num_feat=8, upscale=2).state_dict()
    with pytest.raises(IncompatiblePairError, match="shape"):
        interpolate(a, b, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_strength_outside_zero_to_one_is_refused(alpha):
    a, b = _pair()
    with pytest.raises(ValueError, match="between 0 and 1"):
        interpolate(a, b, alpha)
