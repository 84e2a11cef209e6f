"""Conversions between arrays/bytes and the engine's float32 CHW tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from image_enhancer.engine import pixels
from image_enhancer.engine.pixels import PixelFormatError


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_images_round_trip_exactly(channels, dtype):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, np.iinfo(dtype).max + 1, size=(7, 5, channels), dtype=dtype)
    tensor = pixels.to_tensor(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (channels, 7, 5)
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    back = pixels.from_tensor(tensor, dtype)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)


def test_sixteen_bit_keeps_steps_finer_than_eight_bit():
    ramp = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64, 1)
    back = pixels.from_tensor(pixels.to_tensor(ramp) * 1.0, np.uint16)
    assert len(np.unique(back)) == 4096


def test_float_images_keep_values_outside_the_unit_range_and_nan_is_zero():
    image = np.array([[[0.5, -1.0, 2.0], [np.nan, np.inf, -np.inf]]], dtype=np.float32)
    tensor = pixels.to_tensor(image)
    assert tensor.permute(1, 2, 0).flatten().tolist() == [0.5, -1.0, 2.0, 0.0, 1.0, 0.0]
    back = pixels.from_tensor(tensor, np.float32)
    assert back.dtype == np.float32 and back.shape == (1, 2, 3)
    assert back.flatten().tolist() == [0.5, -1.0, 2.0, 0.0, 1.0, 0.0]  # float results are not clamped


def test_split_range_separates_what_lies_outside_zero_to_one():
    tensor = torch.tensor([[[0.5, -0.25, 1.75, 1.0, 0.0]]])
    inside, beyond = pixels.split_range(tensor)
    assert inside.flatten().tolist() == [0.5, 0.0, 1.0, 1.0, 0.0]
    assert beyond.flatten().tolist() == [0.0, -0.25, 0.75, 0.0, 0.0]
    torch.testing.assert_close(inside + beyond, tensor, atol=0, rtol=0)
    in_range = torch.rand(3, 4, 4)
    assert pixels.split_range(in_range) == (in_range, None)


def test_from_tensor_rounds_and_clamps_integers():
    tensor = torch.tensor([[[0.0, 0.5 / 255, 0.6 / 255, 1.2, -0.3]]])
    assert pixels.from_tensor(tensor, np.uint8).flatten().tolist() == [0, 0, 1, 255, 0]
    assert pixels.from_tensor(tensor, np.uint16).flatten().tolist() == [0, 128, 154, 65535, 0]
    assert tensor.flatten().tolist()[3:] == pytest.approx([1.2, -0.3])  # left as it was
    # A tensor given as scratch converts alike, without a float copy: it is overwritten instead.
    assert pixels.from_tensor(tensor, np.uint8, scratch=True).flatten().tolist() == [0, 0, 1, 255, 0]
    assert tensor.flatten().tolist()[3:] == [255.0, 0.0]


def test_two_dimensional_arrays_are_gray():
    assert pixels.to_tensor(np.zeros((4, 6), np.uint8)).shape == (1, 4, 6)


@pytest.mark.parametrize(
    ("sample_type", "dtype"), [("u8", np.uint8), ("u16", np.uint16), ("f32", np.float32)]
)
def test_bytes_round_trip_little_endian(sample_type, dtype):
    image = (np.arange(3 * 4 * 2) * 3).astype(dtype).reshape(3, 4, 2)
    data = pixels.to_bytes(image)
    assert len(data) == image.nbytes
    if dtype is np.uint16:
        assert data[2:4] == (3).to_bytes(2, "little")
    back = pixels.from_bytes(data, width=4, height=3, channels=2, sample_type=sample_type)
    np.testing.assert_array_equal(back, image)
    assert pixels.sample_type_of(back) == sample_type


def test_from_bytes_rejects_bad_descriptions():
    with pytest.raises(PixelFormatError, match="needs 48 bytes, got 47"):
        pixels.from_bytes(bytes(47), width=4, height=4, channels=3, sample_type="u8")
    with pytest.raises(PixelFormatError, match="unknown sample type"):
        pixels.from_bytes(bytes(16), width=4, height=4, channels=1, sample_type="f16")
    with pytest.raises(PixelFormatError, match="channels"):
        pixels.from_bytes(bytes(80), width=4, height=4, channels=5, sample_type="u8")
    with pytest.raises(PixelFormatError, match="positive"):
        pixels.from_bytes(b"", width=0, height=4, channels=1, sample_type="u8")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 5), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "dimensions"),
        (np.zeros((4, 4, 3), np.int32), "sample type"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.float64), "sample type"),
        ([[0, 1]], "numpy array"),
    ],
)
def test_check_image_explains_what_is_wrong(array, message):
    with pytest.raises(PixelFormatError, match=message):
        pixels.check_image(array)


def test_from_tensor_rejects_other_sample_types():
    with pytest.raises(PixelFormatError, match="sample type"):
        pixels.from_tensor(torch.zeros(3, 2, 2), np.int16)


def test_transfer_functions_invert_and_hit_known_values():
    values = torch.linspace(0, 1, 1001)
    torch.testing.assert_close(
        pixels.srgb_to_linear(pixels.linear_to_srgb(values)), values, atol=1e-5, rtol=0
    )
    assert abs(float(pixels.srgb_to_linear(torch.tensor(0.5))) - 0.21404) < 1e-4
    assert abs(float(pixels.linear_to_srgb(torch.tensor(0.18))) - 0.46135) < 1e-4
    # Beyond [0, 1] the curves continue (linear below 0, the power law above 1), as babl's do, and invert.
    outside = torch.tensor([-0.5, -0.01, 1.0, 1.5, 4.0])
    torch.testing.assert_close(
        pixels.srgb_to_linear(pixels.linear_to_srgb(outside)), outside, atol=1e-5, rtol=1e-5
    )
    assert abs(float(pixels.linear_to_srgb(torch.tensor(-0.1))) + 1.292) < 1e-5  # babl: -1.292
    assert abs(float(pixels.linear_to_srgb(torch.tensor(2.0))) - 1.35326) < 1e-4  # babl: 1.35326


def test_gray_goes_to_rgb_and_back():
    gray = torch.rand(1, 5, 6)
    rgb = pixels.gray_to_rgb(gray)
    assert rgb.shape == (3, 5, 6)
    torch.testing.assert_close(pixels.rgb_to_gray(rgb), gray)
