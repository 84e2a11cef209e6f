"""File formats the CLI reads and writes: bit depth, channels and metadata survive a round trip."""

from __future__ import annotations

import io
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
from cmyk_profile import INKS, cmyk_profile
from PIL import ExifTags, Image, ImageCms, ImageOps

from image_enhancer.imagefiles import ImageFile, ImageFileError, read_image, to_uint8, to_uint16, write_image

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


# --- TIFF layouts: each read as the picture it holds, or refused with the reason ------------------------

PICTURE = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def tiff_of(tmp_path: Path, data: np.ndarray, name: str = "in.tif", **options) -> Path:
    path = tmp_path / name
    tifffile.imwrite(path, data, metadata=None, **options)
    return path


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd", "packbits", "lzma"])
def test_compressed_tiff_reads_exactly(tmp_path: Path, compression) -> None:
    predictor = compression != "packbits"
    path = tiff_of(tmp_path, PICTURE, photometric="rgb", compression=compression, predictor=predictor)
    np.testing.assert_array_equal(read_image(path).pixels, PICTURE)


def test_jpeg_compressed_tiff_reads_as_rgb(tmp_path: Path) -> None:
    smooth = np.repeat(np.repeat(PICTURE, 8, axis=0), 8, axis=1)  # JPEG-friendly: flat 8×8 blocks
    # tifffile stores RGB given to its JPEG encoder as YCbCr with 2×2 chroma subsampling, as cameras do.
    path = tiff_of(tmp_path, smooth, photometric="rgb", compression="jpeg", compressionargs={"level": 95})
    with tifffile.TiffFile(path) as tiff:
        assert tiff.pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR
    pixels = read_image(path).pixels
    assert pixels.shape == smooth.shape and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - smooth).mean() < 12  # chroma subsampling at the blocks' edges


def test_planar_separate_tiff_is_interleaved(tmp_path: Path) -> None:
    wide = RNG.integers(0, 65536, (3, 40, 3), dtype=np.uint16)  # read as if interleaved: 160×12 garbage
    path = tiff_of(tmp_path, np.moveaxis(wide, 2, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(path).pixels, wide)


def test_miniswhite_tiff_is_not_inverted(tmp_path: Path) -> None:
    gray = PICTURE[:, :, :1]
    path = tiff_of(tmp_path, 255 - gray[:, :, 0], photometric="miniswhite")
    np.testing.assert_array_equal(read_image(path).pixels, gray)


def test_bilevel_and_four_bit_tiffs_come_out_full_range(tmp_path: Path) -> None:
    ink = PICTURE[:, :, 0] > 127
    one_bit = tiff_of(tmp_path, ink, "one.tif", photometric="minisblack", bitspersample=1)
    np.testing.assert_array_equal(read_image(one_bit).pixels[:, :, 0], ink * 255)
    white_is_zero = tiff_of(tmp_path, ink, "mw.tif", photometric="miniswhite", bitspersample=1)
    np.testing.assert_array_equal(read_image(white_is_zero).pixels[:, :, 0], (~ink) * 255)
    nibbles = PICTURE[:, :, 0] // 16
    four_bit = tiff_of(tmp_path, nibbles, "four.tif", photometric="minisblack", bitspersample=4)
    np.testing.assert_array_equal(read_image(four_bit).pixels[:, :, 0], nibbles * 17)


@pytest.mark.parametrize("depth", [8, 16])
def test_palette_tiff_is_expanded_through_its_colour_map(tmp_path: Path, depth) -> None:
    indices = PICTURE[:, :, 0]
    colours = RNG.integers(0, 256, (3, 256)).astype(np.uint16)
    colormap = colours * 257 if depth == 8 else RNG.integers(0, 65536, (3, 256), dtype=np.uint16)
    path = tiff_of(tmp_path, indices, photometric="palette", colormap=colormap)
    pixels = read_image(path).pixels
    expected = colours.T[indices].astype(np.uint8) if depth == 8 else colormap.T[indices]
    assert pixels.dtype == expected.dtype
    np.testing.assert_array_equal(pixels, expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float_tiffs_become_float32(tmp_path: Path, dtype) -> None:
    values = RNG.random((6, 5, 3)).astype(dtype)
    pixels = read_image(tiff_of(tmp_path, values, photometric="rgb")).pixels
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, values.astype(np.float32))


def test_thirty_two_bit_integer_tiff_becomes_float_in_the_unit_range(tmp_path: Path) -> None:
    values = np.array([[[0, 2**31, 2**32 - 1]]], dtype=np.uint32)
    pixels = read_image(tiff_of(tmp_path, values, photometric="rgb")).pixels
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[0, 0], [0.0, 0.5, 1.0], atol=1e-6)


def test_associated_alpha_is_unpremultiplied(tmp_path: Path) -> None:
    straight = np.array([[[200, 100, 50, 128], [10, 20, 30, 255], [99, 99, 99, 0]]], dtype=np.uint8)
    alpha = straight[:, :, 3:].astype(np.float64) / 255
    premultiplied = np.concatenate([np.round(straight[:, :, :3] * alpha), straight[:, :, 3:]], axis=2)
    path = tiff_of(tmp_path, premultiplied.astype(np.uint8), photometric="rgb", extrasamples=[1])
    pixels = read_image(path).pixels
    assert np.abs(pixels[0, :2].astype(int) - straight[0, :2]).max() <= 1
    np.testing.assert_array_equal(pixels[0, 2], [0, 0, 0, 0])  # no colour under zero alpha


def test_unassociated_alpha_is_kept_and_other_extra_samples_dropped_with_a_warning(tmp_path: Path, caplog):
    rgba = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    five = np.concatenate([rgba, rgba[:, :, :1]], axis=2)
    path = tiff_of(tmp_path, five, photometric="rgb", planarconfig="contig", extrasamples=[2, 0])
    np.testing.assert_array_equal(read_image(path).pixels, rgba)
    assert "in.tif" in caplog.text and "dropped" in caplog.text


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_as_for_jpeg(tmp_path: Path, orientation) -> None:
    stored = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    path = tiff_of(tmp_path, stored, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "same.png", exif=exif.tobytes())
    with Image.open(tmp_path / "same.png") as shown:
        expected = np.asarray(ImageOps.exif_transpose(shown))
    np.testing.assert_array_equal(read_image(path).pixels, expected)
    np.testing.assert_array_equal(read_image(tmp_path / "same.png").pixels, expected)


def cmyk_picture() -> np.ndarray:
    return np.array([[[255, 0, 0, 0], [0, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255], [128, 64, 32, 16]]],
                    dtype=np.uint8)


def test_cmyk_tiff_is_converted_with_its_profile(tmp_path: Path, caplog) -> None:
    icc = cmyk_profile()
    path = tiff_of(tmp_path, cmyk_picture(), photometric="separated", iccprofile=icc)
    image = read_image(path)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    transform = ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"), "CMYK", "RGB",
                                        renderingIntent=ImageCms.Intent.PERCEPTUAL)
    expected = np.asarray(ImageCms.applyTransform(Image.fromarray(cmyk_picture(), "CMYK"), transform))
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.pixels.shape == (1, 5, 3) and image.icc_profile is None  # the pixels are sRGB now
    assert abs(int(image.pixels[0, 0, 0]) - INKS["c"][0]) < 25  # the profile's cyan, a mid blue
    assert "in.tif" in caplog.text and "embedded ICC profile" in caplog.text


def test_cmyk_tiff_without_profile_is_converted_and_says_what_was_assumed(tmp_path: Path, caplog) -> None:
    path = tiff_of(tmp_path, cmyk_picture(), photometric="separated")
    pixels = read_image(path).pixels
    np.testing.assert_array_equal(pixels[0, :4], [[0, 255, 255], [255, 255, 255], [255, 0, 255], [0, 0, 0]])
    assert "in.tif" in caplog.text and "uncalibrated" in caplog.text


def test_cmyk_jpeg_is_converted_with_its_profile(tmp_path: Path, caplog) -> None:
    icc = cmyk_profile()
    Image.fromarray(cmyk_picture(), "CMYK").save(tmp_path / "print.jpg", icc_profile=icc, quality=100)
    pixels = read_image(tmp_path / "print.jpg").pixels
    assert pixels.shape == (1, 5, 3)
    assert abs(int(pixels[0, 1, 0]) - 255) < 8 and abs(int(pixels[0, 0, 2]) - INKS["c"][2]) < 25
    assert "print.jpg" in caplog.text and "embedded ICC profile" in caplog.text


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"photometric": "cielab"}, "colour model CIELAB"),
        ({"photometric": "ycbcr", "compression": None}, "YCbCr"),
        ({"photometric": "rgb", "dtype": np.int16}, "sample format"),
    ],
)
def test_tiffs_that_cannot_be_read_faithfully_are_refused_with_the_reason(tmp_path: Path, options, reason):
    dtype = options.pop("dtype", np.uint8)
    path = tiff_of(tmp_path, PICTURE.astype(dtype), **options)
    with pytest.raises(ImageFileError, match=reason) as refused:
        read_image(path)
    assert "in.tif" in str(refused.value)


# --- EXIF and ICC kept, and every file we write readable ------------------------------------------------


def camera_exif(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Test Camera Maker"
    exif[0x0112] = orientation
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2026:01:02 03:04:05"
    return exif.tobytes()


def test_portrait_jpeg_to_tiff_displays_as_the_jpeg_and_keeps_its_exif(tmp_path: Path) -> None:
    stored = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tmp_path / "portrait.jpg", exif=camera_exif(), quality=100)
    with Image.open(tmp_path / "portrait.jpg") as jpeg:
        shown = np.asarray(ImageOps.exif_transpose(jpeg))
    image = read_image(tmp_path / "portrait.jpg")
    write_image(tmp_path / "out.tif", image)
    with Image.open(tmp_path / "out.tif") as tiff:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(tiff)), shown)
        exif = tiff.getexif()
        assert exif[0x010F] == "Test Camera Maker"
        assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == "2026:01:02 03:04:05"
    with tifffile.TiffFile(tmp_path / "out.tif") as tiff:
        assert tiff.pages[0].tags["ExifTag"].value["DateTimeOriginal"] == "2026:01:02 03:04:05"
    back = read_image(tmp_path / "out.tif")
    np.testing.assert_array_equal(back.pixels, shown)
    write_image(tmp_path / "again.jpg", back)  # and the TIFF's EXIF goes on to a JPEG
    with Image.open(tmp_path / "again.jpg") as again:
        assert again.getexif()[0x010F] == "Test Camera Maker"
        assert again.size == (16, 24)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_deep_tiff_output_keeps_exif_and_icc(tmp_path: Path, dtype) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    write_image(tmp_path / "deep.tif", ImageFile(random_pixels(3, dtype), icc, camera_exif(orientation=1)))
    with tifffile.TiffFile(tmp_path / "deep.tif") as tiff:  # Pillow cannot open float RGB TIFFs
        assert tiff.pages[0].tags["Make"].value == "Test Camera Maker"
        assert tiff.pages[0].tags["ExifTag"].value["DateTimeOriginal"] == "2026:01:02 03:04:05"
    back = read_image(tmp_path / "deep.tif")
    assert back.icc_profile == icc and back.pixels.dtype == dtype
    exif = Image.Exif()
    exif.load(back.exif)
    assert exif[0x010F] == "Test Camera Maker"


def test_sixteen_bit_png_keeps_icc_and_exif(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pixels = random_pixels(3, np.uint16)
    write_image(tmp_path / "deep.png", ImageFile(pixels, icc, camera_exif(orientation=1)))
    back = read_image(tmp_path / "deep.png")
    assert back.icc_profile == icc
    exif = Image.Exif()
    exif.load(back.exif)
    assert exif[0x010F] == "Test Camera Maker"


def test_huge_icc_profile_is_kept_in_jpeg_and_left_out_of_png_with_a_warning(tmp_path: Path, caplog) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    huge = icc + bytes(4 * 1024 * 1024)  # a real profile padded to 4 MiB: a large printer profile's size
    huge = struct.pack(">I", len(huge)) + huge[4:]
    Image.fromarray(PICTURE).save(tmp_path / "big_icc.jpg", icc_profile=huge, quality=95)
    image = read_image(tmp_path / "big_icc.jpg")
    assert image.icc_profile == huge
    write_image(tmp_path / "out.jpg", image)
    assert read_image(tmp_path / "out.jpg").icc_profile == huge
    for name in ("out.png", "out16.png"):
        deep = replace(image, pixels=to_uint16(image.pixels))  # written by pypng, not Pillow
        write_image(tmp_path / name, image if name == "out.png" else deep)
        with Image.open(tmp_path / name) as written:  # Pillow (and so our reader) opens it
            written.load()
        assert read_image(tmp_path / name).pixels.shape == PICTURE.shape
    assert "big_icc.jpg" in caplog.text and "PNG readers accept" in caplog.text


@pytest.mark.parametrize("channels", [3, 4])
def test_lossless_webp_stays_lossless(tmp_path: Path, channels) -> None:
    pixels = random_pixels(channels, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.webp", lossless=True)
    image = read_image(tmp_path / "in.webp")
    assert image.lossless
    write_image(tmp_path / "out.webp", image)
    np.testing.assert_array_equal(read_image(tmp_path / "out.webp").pixels, image.pixels)


def test_lossy_webp_stays_lossy(tmp_path: Path) -> None:
    Image.fromarray(PICTURE).save(tmp_path / "in.webp", quality=80)
    image = read_image(tmp_path / "in.webp")
    assert not image.lossless
    write_image(tmp_path / "out.webp", image)
    assert b"VP8 " in (tmp_path / "out.webp").read_bytes()[:64]


def test_exif_text_beyond_ascii_still_goes_into_a_tiff(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x013B] = "Zoë Café"  # TIFF strings are ASCII; EXIF writers often put UTF-8 there
    write_image(tmp_path / "out.tif", ImageFile(PICTURE, exif=exif.tobytes()))
    with tifffile.TiffFile(tmp_path / "out.tif") as tiff:
        assert tiff.pages[0].tags["Artist"].value.startswith("Zo")
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif").pixels, PICTURE)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_interlaced_sixteen_bit_png_reads_exactly(tmp_path: Path, channels) -> None:
    # Its image data is checked against the size an interlaced image of its header needs (seven passes).
    pixels = RNG.integers(0, 65536, (13, 9, channels), dtype=np.uint16)
    with open(tmp_path / "interlaced.png", "wb") as handle:
        png.Writer(9, 13, greyscale=channels == 2, alpha=channels != 3, bitdepth=16, interlace=True).write(
            handle, pixels.reshape(13, -1)
        )
    np.testing.assert_array_equal(read_image(tmp_path / "interlaced.png").pixels, pixels)
