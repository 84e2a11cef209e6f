"""File formats the CLI reads and writes: bit depth, channels and metadata survive a round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from image_enhancer.imagefiles import ImageFile, ImageFileError, read_image, to_uint8, write_image

RNG = np.random.default_rng(7)


def random_pixels(channels: int, dtype: type) -> np.ndarray:
    if dtype is np.float32:
        return RNG.random((13, 17, channels), dtype=np.float32)
    info = np.iinfo(dtype)
    return RNG.integers(0, info.max + 1, size=(13, 17, channels), dtype=dtype)


@pytest.mark.parametrize(
    ("suffix", "channels", "dtype"),
    [
        (".png", 1, np.uint8),
        (".png", 2, np.uint8),
        (".png", 3, np.uint8),
        (".png", 4, np.uint8),
        (".png", 1, np.uint16),
        (".png", 3, np.uint16),
        (".png", 4, np.uint16),
        (".tif", 3, np.uint16),
        (".tif", 4, np.uint16),
        (".tif", 3, np.float32),
        (".tif", 1, np.uint8),
    ],
)
def test_lossless_round_trip_keeps_depth_and_channels(tmp_path: Path, suffix, channels, dtype) -> None:
    pixels = random_pixels(channels, dtype)
    path = tmp_path / f"image{suffix}"
    write_image(path, ImageFile(pixels))
    back = read_image(path).pixels
    assert back.dtype == pixels.dtype
    assert back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)


def test_sixteen_bit_png_keeps_more_than_256_levels(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64 * 3).astype(np.uint16).reshape(64, 64, 3)
    write_image(tmp_path / "ramp.png", ImageFile(ramp))
    assert len(np.unique(read_image(tmp_path / "ramp.png").pixels)) > 256


def test_jpeg_keeps_icc_profile_and_exif(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Test Camera Maker"
    source = tmp_path / "in.jpg"
    Image.new("RGB", (8, 8), (200, 30, 40)).save(source, icc_profile=icc, exif=exif.tobytes())
    image = read_image(source)
    assert image.icc_profile == icc
    write_image(tmp_path / "out.jpg", image)
    with Image.open(tmp_path / "out.jpg") as written:
        assert written.info["icc_profile"] == icc
        assert written.getexif()[0x010F] == "Test Camera Maker"


def test_eight_bit_formats_receive_rounded_samples(tmp_path: Path) -> None:
    pixels = np.full((4, 4, 3), 32896, dtype=np.uint16)  # 32896 / 257 = 128 exactly
    write_image(tmp_path / "out.webp", ImageFile(pixels))
    assert read_image(tmp_path / "out.webp").pixels.dtype == np.uint8
    assert to_uint8(pixels)[0, 0, 0] == 128


def test_palette_images_become_rgb(tmp_path: Path) -> None:
    Image.new("P", (5, 5), 3).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").pixels.shape == (5, 5, 3)


def test_corrupt_file_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageFileError, match="broken.png"):
        read_image(path)


def test_truncated_png_gives_clear_error(tmp_path: Path) -> None:
    write_image(tmp_path / "whole.png", ImageFile(random_pixels(3, np.uint8)))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFileError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageFileError, match="unsupported"):
        read_image(tmp_path / "notes.txt")
