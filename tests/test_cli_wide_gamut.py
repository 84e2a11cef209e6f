"""Wide-gamut files through `image-enhancer enhance`, in process and through a real gRPC server.

A file with an embedded profile (Adobe RGB, ProPhoto, Display P3, a gray profile) is processed as the
encoded values of its own space: the result equals what the engine gives on the file's raw values, never
values converted through sRGB, and the output embeds the same profile bytes. Float values outside [0, 1]
survive. The profiles are generated (tests/wide_gamut.py), so no third-party profile file is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wide_gamut
from PIL import Image

from image_enhancer.cli import main
from image_enhancer.engine.enhancer import EnhanceOptions
from image_enhancer.imagefiles import read_image

MODEL = "ie-compact-x4-psnr"  # the faithful end (strength 0) of the ie-compact-x4 pair
LEVEL = {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 257 / 65535, np.dtype(np.float32): 1 / 255}
GRAY_PROFILE = wide_gamut.gray_profile(1.8, "Gray gamma 1.8")


def _patches(dtype: type, gray: bool = False) -> tuple[np.ndarray, dict]:
    image, corners = wide_gamut.patch_image()
    if gray:
        image = image[:, :, 1:2]
    if dtype is np.float32:
        return image.astype(np.float32), corners
    return np.round(image * np.iinfo(dtype).max).astype(dtype), corners


def _png16_adobe(folder: Path) -> tuple[Path, np.ndarray, bytes]:
    pixels, _ = _patches(np.uint16)
    icc = wide_gamut.rgb_profile(wide_gamut.ADOBE_RGB)
    wide_gamut.write_png16(folder / "adobe.png", pixels, icc)
    return folder / "adobe.png", pixels, icc


def _png16_gray(folder: Path) -> tuple[Path, np.ndarray, bytes]:
    pixels, _ = _patches(np.uint16, gray=True)
    wide_gamut.write_png16(folder / "gray.png", pixels, GRAY_PROFILE)
    return folder / "gray.png", pixels, GRAY_PROFILE


def _jpeg_prophoto(folder: Path) -> tuple[Path, np.ndarray, bytes]:
    pixels, _ = _patches(np.uint8)
    icc = wide_gamut.rgb_profile(wide_gamut.PROPHOTO)
    Image.fromarray(pixels).save(folder / "prophoto.jpg", quality=98, icc_profile=icc)
    with Image.open(folder / "prophoto.jpg") as im:  # the decoded samples, as they are: no colour management
        raw = np.asarray(im)
    return folder / "prophoto.jpg", raw, icc


def _tiff16_p3(folder: Path) -> tuple[Path, np.ndarray, bytes]:
    import tifffile

    pixels, _ = _patches(np.uint16)
    icc = wide_gamut.rgb_profile(wide_gamut.DISPLAY_P3)
    tifffile.imwrite(folder / "p3.tif", pixels, photometric="rgb", iccprofile=icc)
    return folder / "p3.tif", pixels, icc


def _tiff_float_prophoto(folder: Path) -> tuple[Path, np.ndarray, bytes]:
    """Float ProPhoto with a highlight above 1 and a colour beyond the primaries (a negative component)."""
    import tifffile

    pixels, corners = _patches(np.float32)
    y, x = corners["light-grey"]
    pixels[y : y + wide_gamut.PATCH, x : x + wide_gamut.PATCH] = 1.6
    y, x = corners["orange"]
    pixels[y : y + wide_gamut.PATCH, x : x + wide_gamut.PATCH] = (1.0, 0.5, -0.15)
    icc = wide_gamut.rgb_profile(wide_gamut.PROPHOTO)
    tifffile.imwrite(folder / "prophoto-float.tif", pixels, photometric="rgb", iccprofile=icc)
    return folder / "prophoto-float.tif", pixels, icc


FILES = {
    "png16-adobe-rgb": _png16_adobe,
    "png16-gray": _png16_gray,
    "jpeg-prophoto": _jpeg_prophoto,
    "tiff16-display-p3": _tiff16_p3,
    "tiff-float-prophoto": _tiff_float_prophoto,
}


@pytest.fixture(scope="module")
def reference(model_store):
    """The engine on the raw values: what a colour-managed result must equal."""
    from image_enhancer.engine.enhancer import Enhancer

    enhancer = Enhancer(model_store, device="cpu")
    return lambda raw, scale: enhancer.enhance(raw, EnhanceOptions(model=MODEL, scale=scale))


def _check(out: Path, raw: np.ndarray, icc: bytes, expected: np.ndarray, scale: int) -> None:
    result = read_image(out)
    assert result.icc_profile == icc, "the output must embed the input's profile, byte for byte"
    pixels = result.pixels
    if expected.ndim == 2:
        expected = expected[:, :, None]
    assert pixels.shape == expected.shape and pixels.dtype == raw.dtype
    level = LEVEL[pixels.dtype]
    maximum = 1.0 if pixels.dtype == np.float32 else np.iinfo(pixels.dtype).max
    got, want = pixels.astype(np.float64) / maximum, expected.astype(np.float64) / maximum
    _, corners = wide_gamut.patch_image()
    got_means = wide_gamut.patch_means(got, corners, scale)
    want_means = wide_gamut.patch_means(want, corners, scale)
    for name in got_means:  # JPEG re-encodes the result: compare what each patch holds
        assert np.abs(got_means[name] - want_means[name]).max() <= 2 * level, (name, got_means[name])
    if out.suffix != ".jpg":  # lossless: every pixel, ramps included
        assert np.abs(got - want).max() <= 2 * level


@pytest.mark.parametrize("scale", [1, 2], ids=["x1", "x2"])
@pytest.mark.parametrize("kind", list(FILES))
def test_embedded_profile_is_kept_and_values_are_never_converted(
    kind: str, scale: int, reference, tmp_path: Path
) -> None:
    source, raw, icc = FILES[kind](tmp_path)
    out = tmp_path / f"result{source.suffix}"
    args = ["enhance", str(source), "-o", str(out), "-m", MODEL, "--scale", str(scale)]
    assert main(args) == 0
    _check(out, raw, icc, reference(raw, scale), scale)


@pytest.mark.parametrize("kind", ["png16-adobe-rgb", "tiff-float-prophoto"])
def test_the_same_through_a_grpc_server(kind: str, grpc_server, reference, tmp_path: Path) -> None:
    source, raw, icc = FILES[kind](tmp_path)
    out = tmp_path / f"result{source.suffix}"
    args = ["enhance", str(source), "-o", str(out), "-m", MODEL, "--scale", "2"]
    assert main([*args, "--server", grpc_server.address]) == 0
    _check(out, raw, icc, reference(raw, 2), 2)


def test_float_values_beyond_the_unit_range_survive(reference, tmp_path: Path) -> None:
    source, raw, icc = _tiff_float_prophoto(tmp_path)
    out = tmp_path / "result.tif"
    assert main(["enhance", str(source), "-o", str(out), "-m", MODEL, "--scale", "2"]) == 0
    result = read_image(out).pixels.astype(np.float64)
    _, corners = wide_gamut.patch_image()
    means = wide_gamut.patch_means(result, corners, 2)
    np.testing.assert_allclose(means["light-grey"], (1.6, 1.6, 1.6), atol=0.01)  # the highlight is kept
    np.testing.assert_allclose(means["orange"], (1.0, 0.5, -0.15), atol=0.01)  # and the wide colour
