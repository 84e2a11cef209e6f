"""Hostile image files within the pixel limit: small files whose compressed data, strips, tiles or
metadata promise far more than their header's size needs. Each must be read or refused quickly, with
memory bounded by what the header allows, measured in a fresh process (peak resident size)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from image_enhancer.imagefiles import read_image

MIB = 1024 * 1024
# Growth of the reading process's peak memory allowed for a 64×64 image: its pixels are 48 KiB; the
# rest is the decoders' own working memory.
PEAK_LIMIT_MIB = 48
READ_LIMIT_S = 1.0

MEASURE = """
import contextlib, json, resource, sys, time
import imagecodecs, tifffile
from PIL import Image
from image_enhancer.imagefiles import ImageFileError, read_image
with contextlib.suppress(ImportError):  # imported on the first TIFF otherwise; not to be counted
    import image_enhancer.tiff_files

Image.init()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    pixels = read_image(sys.argv[1], max_pixels=40_000_000).pixels
    outcome = f"read {pixels.shape}"
except ImageFileError as error:
    outcome = f"refused: {error}"
seconds = time.perf_counter() - start
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"outcome": outcome, "seconds": seconds, "peak_mib": peak}))
"""


def measure_read(path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zeros_deflated(size: int) -> bytes:
    """A zlib stream of `size` (a whole number of MiB) zero bytes, made fast: one MiB is deflated and
    flushed to a byte boundary with a fresh dictionary, and that block repeated. Its checksum covers two
    MiB only, which a decoder would notice at the very end, never reached by a bounded one."""
    deflater = zlib.compressobj(9)
    first = deflater.compress(bytes(MIB)) + deflater.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    block = deflater.compress(bytes(MIB)) + deflater.flush(zlib.Z_FULL_FLUSH)
    return first + block * (size // MIB - 1) + deflater.flush()


def png_bomb(folder: Path, bit_depth: int, trailing: int = 512 * MIB) -> Path:
    """A 64×64 RGB PNG whose image data inflates to its pixels followed by `trailing` zero bytes."""
    header = struct.pack(">IIBBBBB", 64, 64, bit_depth, 2, 0, 0, 0)  # its pixels: 25 or 49 KiB of zeros
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zeros_deflated(MIB + trailing))
    path = folder / f"bomb{bit_depth}.png"
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def png_text_bomb(folder: Path) -> Path:
    """A valid 64×64 PNG carrying a zTXt chunk that inflates to 256 MiB."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    plain = buffer.getvalue()
    text = chunk(b"zTXt", b"Comment\0\0" + zeros_deflated(256 * MIB))
    path = folder / "text.png"
    path.write_bytes(plain[:33] + text + plain[33:])
    return path


def patch_tiff(path: Path, values: dict[int, int]) -> None:
    """Overwrite one-value integer tags of the TIFF at `path` in place (a header that lies)."""
    with tifffile.TiffFile(path) as tiff:
        order = tiff.byteorder
        tags = tiff.pages[0].tags
        slots = {code: (tags[code].valueoffset, tags[code].dtype) for code in values}
    with open(path, "r+b") as handle:
        for code, value in values.items():
            offset, dtype = slots[code]
            handle.seek(offset)
            handle.write(struct.pack(order + ("H" if dtype == 3 else "I"), value))


def tiff_with_strip(folder: Path, name: str, compression: str, strip: bytes) -> Path:
    """A 64×64 RGB TIFF of one strip, whose strip is replaced by `strip`."""
    path = folder / name
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb", compression=compression,
                     rowsperstrip=64, metadata=None)
    with open(path, "ab") as handle:
        offset = handle.seek(0, 2)
        handle.write(strip)
    patch_tiff(path, {273: offset, 279: len(strip)})
    return path


def tiff_jpeg_bomb(folder: Path) -> Path:
    """A 64×64 TIFF whose JPEG strip is an 8000×8000 JPEG (192 MB once decoded)."""
    strip = imagecodecs.jpeg8_encode(np.zeros((8000, 8000, 3), np.uint8))
    return tiff_with_strip(folder, "jpeg.tif", "jpeg", strip)


def tiff_deflate_bomb(folder: Path) -> Path:
    return tiff_with_strip(folder, "deflate.tif", "zlib", zeros_deflated(512 * MIB))


def tiff_huge_tiles(folder: Path) -> Path:
    """A 64×64 tiled TIFF whose header says each tile is 16384×16384 (805 MB each once decoded)."""
    path = folder / "tiles.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb", compression="zlib",
                     tile=(64, 64), metadata=None)
    patch_tiff(path, {322: 16384, 323: 16384})
    return path


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "16-bit PNG, 512 MiB of zeros after the image": (lambda folder: png_bomb(folder, 16), "refused"),
    "8-bit PNG, 512 MiB of zeros after the image": (lambda folder: png_bomb(folder, 8), ""),
    "PNG with a 256 MiB zTXt chunk": (png_text_bomb, ""),
    "TIFF whose JPEG strip is 8000×8000": (tiff_jpeg_bomb, "refused"),
    "TIFF whose deflate strip inflates to 512 MiB": (tiff_deflate_bomb, ""),
    "TIFF with 16384×16384 tiles": (tiff_huge_tiles, "refused"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_file_costs_little_time_and_memory(tmp_path: Path, case) -> None:
    make, expected = HOSTILE[case]
    measured = measure_read(make(tmp_path))
    assert measured["outcome"].startswith(expected), measured
    assert measured["seconds"] < READ_LIMIT_S, measured
    assert measured["peak_mib"] < PEAK_LIMIT_MIB, measured


def test_the_png_bomb_is_refused_with_a_clear_reason(tmp_path: Path) -> None:
    path = png_bomb(tmp_path, 16, trailing=MIB)
    with pytest.raises(ValueError, match="inflates beyond the 24640 bytes its 64×64 header needs"):
        read_image(path)


def test_oversized_icc_profile_is_not_kept_and_the_file_is_named(tmp_path: Path, caplog) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    huge = struct.pack(">I", len(icc) + 12 * MIB) + icc[4:] + bytes(12 * MIB)
    Image.new("RGB", (8, 8)).save(tmp_path / "big.webp", icc_profile=huge, lossless=True)
    image = read_image(tmp_path / "big.webp")
    assert image.icc_profile is None and image.pixels.shape == (8, 8, 3)
    assert "big.webp" in caplog.text and "ICC profile" in caplog.text


def test_truncated_jpeg_is_refused_not_padded(tmp_path: Path) -> None:
    # Pillow pads a truncated file with grey only under ImageFile.LOAD_TRUNCATED_IMAGES, never set here.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
