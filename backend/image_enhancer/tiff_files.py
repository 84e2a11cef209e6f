"""TIFF files: each common layout read into the engine's forms, and written with ICC profile and EXIF.

A TIFF says how it stores colour (photometric interpretation), planes, bit depth, sample format, extra
samples and orientation; each is honoured here or the file is refused with the reason, never read as
something else. tifffile parses the structure and imagecodecs decodes the compressed data; what the
header promises is checked before anything is decoded, so a hostile file costs what its size allows.
"""

from __future__ import annotations

import io
import itertools
import logging
import struct
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from tifffile import EXTRASAMPLE, PHOTOMETRIC, PLANARCONFIG

from image_enhancer import image_metadata
from image_enhancer.imagefiles import (
    ImageFile,
    ImageFileError,
    cmyk_to_rgb,
    refuse_animation,
    to_float32,
    to_uint8,
    to_uint16,
)

log = logging.getLogger(__name__)

ICC_TAG, ORIENTATION_TAG, INKSET_TAG = 34675, 274, 332
# Compressions whose decoders write into a buffer of the size the header gives, so a strip cannot
# inflate beyond it (JPEG is checked separately, below).
COMPRESSIONS = {
    1: "none", 5: "LZW", 7: "JPEG", 8: "deflate", 32946: "deflate", 32773: "PackBits", 34925: "LZMA",
    50000: "zstd",
}
JPEG = 7
JPEG_HEADER_BYTES = 65536  # where a strip's or tile's JPEG frame header must be
MAX_SAMPLES = 8  # per pixel: RGB + alpha + a few extra samples that are dropped
MAX_PAGES_COUNTED = 1000
# A tile may exceed a small image (tiles come in multiples of 16, often 256 or 512 square).
TILE_SLACK_PIXELS = 1024 * 1024


def header_size(path: Path) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages.first
        return int(page.imagewidth), int(page.imagelength)


def read_tiff(path: Path) -> ImageFile:
    """The first image of the TIFF at `path`, upright, in an engine form (H×W×C, C = 1–4)."""
    with tifffile.TiffFile(path) as tiff:
        # Reduced-resolution pages are previews of the first; other pages are further images.
        pages = itertools.islice(tiff.pages, MAX_PAGES_COUNTED)
        refuse_animation(path, sum(1 for p in pages if not getattr(p, "is_reduced", False)))
        page = tiff.pages.first
        _check_layout(path, page)
        if page.compression == JPEG:
            _check_jpeg_segments(path, page, tiff.filehandle)
        samples = page.asarray()
        icc = image_metadata.bounded_icc(_tag_bytes(page, ICC_TAG), path)
        orientation = int(page.tags.valueof(ORIENTATION_TAG, 1) or 1)
        tiff.filehandle.seek(0)
        exif = image_metadata.exif_from_tiff(tiff.filehandle, path)
        photometric = PHOTOMETRIC(page.photometric)
        extras = tuple(page.extrasamples)
        bits = int(page.bitspersample)
        colormap = page.colormap if photometric == PHOTOMETRIC.PALETTE else None
    if page.planarconfig == PLANARCONFIG.SEPARATE and samples.ndim == 3:
        samples = np.moveaxis(samples, 0, -1)  # S×H×W planes -> H×W×S
    if samples.ndim == 2:
        samples = samples[:, :, None]
    colour_count = samples.shape[2] - len(extras)
    colour, extra = samples[:, :, :colour_count], samples[:, :, colour_count:]
    if photometric == PHOTOMETRIC.PALETTE:
        colour = _expand_palette(path, colour, colormap)
    else:
        colour = _full_range(path, colour, bits)
    if photometric == PHOTOMETRIC.MINISWHITE:
        colour = _invert(colour)
    elif photometric == PHOTOMETRIC.SEPARATED:
        colour, icc = cmyk_to_rgb(path, colour, icc), None
    pixels = _with_alpha(path, colour, _full_range(path, extra, bits) if extra.size else extra, extras)
    if orientation not in range(1, 9):
        orientation = 1
    return ImageFile(image_metadata.upright(pixels, orientation), icc, exif, source=path)


def _tag_bytes(page: tifffile.TiffPage, code: int) -> bytes | None:
    tag = page.tags.get(code)
    return bytes(tag.value) if tag is not None else None


def _check_layout(path: Path, page: tifffile.TiffPage) -> None:
    """Refuse, from the header alone, what cannot be read faithfully or would cost more than it should."""
    photometric = page.photometric
    if photometric not in _COLOUR_SAMPLES:
        name = getattr(photometric, "name", photometric)
        raise ImageFileError(f"{path}: TIFF colour model {name} is not supported (gray, RGB, palette "
                             "and CMYK are)")
    if page.compression not in COMPRESSIONS:
        name = getattr(page.compression, "name", page.compression)
        raise ImageFileError(f"{path}: TIFF compression {name} is not supported (supported: "
                             + ", ".join(sorted(set(COMPRESSIONS.values()))) + ")")
    if page.axes not in ("YX", "YXS", "SYX"):
        raise ImageFileError(f"{path}: TIFF layout {page.axes} {page.shape} is not a single 2-D image")
    if page.samplesperpixel > MAX_SAMPLES:
        raise ImageFileError(f"{path}: {page.samplesperpixel} samples per pixel (at most {MAX_SAMPLES})")
    colour = page.samplesperpixel - len(page.extrasamples)
    if photometric == PHOTOMETRIC.YCBCR and page.compression != JPEG:
        raise ImageFileError(f"{path}: YCbCr TIFF without JPEG compression is not supported")
    if photometric == PHOTOMETRIC.SEPARATED and int(page.tags.valueof(INKSET_TAG, 1)) != 1:
        raise ImageFileError(f"{path}: a separated TIFF with inks other than CMYK is not supported")
    if colour != _COLOUR_SAMPLES[photometric]:
        raise ImageFileError(f"{path}: {colour} colour samples for {PHOTOMETRIC(photometric).name} "
                             f"(expected {_COLOUR_SAMPLES[photometric]})")
    kind = np.dtype(page.dtype).kind if page.dtype is not None else "?"
    if kind not in "buf" or (kind == "u" and page.bitspersample > 32):
        raise ImageFileError(f"{path}: TIFF sample format {page.dtype} ({page.bitspersample} bits) is not "
                             "supported (unsigned integers up to 32 bits and floating point are)")
    if photometric == PHOTOMETRIC.PALETTE and (kind not in "bu" or page.colormap is None):
        raise ImageFileError(f"{path}: palette TIFF without integer indices and a colour map")
    if page.is_tiled:
        tile_pixels = int(page.tilelength) * int(page.tilewidth)
        if tile_pixels > int(page.imagelength) * int(page.imagewidth) + TILE_SLACK_PIXELS:
            raise ImageFileError(f"{path}: tiles of {page.tilewidth}×{page.tilelength} are out of "
                                 f"proportion to the {page.imagewidth}×{page.imagelength} image")


_COLOUR_SAMPLES = {
    PHOTOMETRIC.MINISWHITE: 1, PHOTOMETRIC.MINISBLACK: 1, PHOTOMETRIC.RGB: 3, PHOTOMETRIC.PALETTE: 1,
    PHOTOMETRIC.SEPARATED: 4, PHOTOMETRIC.YCBCR: 3,  # YCbCr only as JPEG, which decodes it to RGB
}


def _check_jpeg_segments(path: Path, page: tifffile.TiffPage, handle: tifffile.FileHandle) -> None:
    """The JPEG decoder allocates what each strip's or tile's own JPEG header says: refuse a strip or
    tile whose JPEG claims more pixels than the TIFF gives it, before decoding any."""
    if page.is_tiled:
        height, width = int(page.tilelength), int(page.tilewidth)
    else:
        height, width = min(int(page.rowsperstrip), int(page.imagelength)), int(page.imagewidth)
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
        if not count:
            continue
        handle.seek(offset)
        try:  # Pillow reads the JPEG's markers up to its first scan, decoding nothing
            with Image.open(io.BytesIO(handle.read(min(count, JPEG_HEADER_BYTES))), formats=["JPEG"]) as jpeg:
                jpeg_width, jpeg_height = jpeg.size
        except Exception as error:  # noqa: BLE001 — whatever Pillow finds wrong, the header is unusable
            raise ImageFileError(f"{path}: a JPEG strip or tile has no readable header ({error})") from error
        if jpeg_height * jpeg_width > height * width:
            raise ImageFileError(f"{path}: a JPEG strip or tile claims {jpeg_width}×{jpeg_height} pixels, "
                                 f"more than the {width}×{height} the TIFF header gives it")


def _full_range(path: Path, samples: np.ndarray, bits: int) -> np.ndarray:
    """Samples of any stored depth in an engine form: 1–8 bits -> uint8 and 9–16 bits -> uint16, scaled
    to the full range; 17–32-bit unsigned -> float32 in [0, 1]; floating point -> float32 as stored."""
    if samples.dtype == np.bool_:
        return samples.astype(np.uint8) * np.uint8(255)
    if samples.dtype.kind == "f":
        return samples.astype(np.float32)
    top = (1 << bits) - 1
    if samples.dtype == np.uint8:
        if bits == 8:
            return samples
        return ((samples.astype(np.uint16) * 255 + top // 2) // top).astype(np.uint8)
    if samples.dtype == np.uint16:
        if bits == 16:
            return samples
        return ((samples.astype(np.uint32) * 65535 + top // 2) // top).astype(np.uint16)
    if samples.dtype == np.uint32:
        return (samples.astype(np.float64) / top).astype(np.float32)
    raise ImageFileError(f"{path}: TIFF samples of type {samples.dtype} are not supported")


def _expand_palette(path: Path, indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """Palette indices -> RGB through the colour map, which TIFF stores as 16 bits per sample: kept at
    16 bits unless every entry is an 8-bit value scaled by 257."""
    colormap = np.asarray(colormap)
    if colormap.ndim != 2 or colormap.shape[0] != 3:
        raise ImageFileError(f"{path}: damaged TIFF colour map {colormap.shape}")
    indices = indices[:, :, 0].astype(np.intp)
    if indices.size and indices.max() >= colormap.shape[1]:
        raise ImageFileError(f"{path}: palette index {indices.max()} beyond its {colormap.shape[1]} colours")
    if colormap.dtype != np.uint16:
        colormap = colormap.astype(np.uint16)
    if not np.any(colormap % 257):
        colormap = (colormap // 257).astype(np.uint8)
    return np.ascontiguousarray(colormap.T[indices])


def _invert(colour: np.ndarray) -> np.ndarray:
    if colour.dtype == np.float32:
        return np.float32(1.0) - colour
    return np.iinfo(colour.dtype).max - colour


def _with_alpha(path: Path, colour: np.ndarray, extra: np.ndarray, kinds: tuple[int, ...]) -> np.ndarray:
    """Colour plus its alpha when the first extra sample is one (associated alpha un-premultiplied);
    other extra samples have no place in an image we enhance and are dropped with a warning."""
    if not kinds:
        return np.ascontiguousarray(colour)
    alpha_kind = kinds[0] if kinds[0] in (EXTRASAMPLE.ASSOCALPHA, EXTRASAMPLE.UNASSALPHA) else None
    dropped = len(kinds) - (alpha_kind is not None)
    if dropped:
        log.warning("%s: %d extra sample(s) per pixel that are not alpha were dropped", path, dropped)
    if alpha_kind is None:
        return np.ascontiguousarray(colour)
    alpha = _same_form(extra[:, :, :1], colour.dtype)
    if alpha_kind == EXTRASAMPLE.ASSOCALPHA:
        colour = _unpremultiply(colour, alpha)
    return np.ascontiguousarray(np.concatenate([colour, alpha], axis=2))


def _same_form(samples: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if samples.dtype == dtype:
        return samples
    return {np.dtype(np.uint8): to_uint8, np.dtype(np.uint16): to_uint16,
            np.dtype(np.float32): to_float32}[np.dtype(dtype)](samples)


def _unpremultiply(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Associated (premultiplied) colour -> straight colour, the form the engine and PNG use."""
    value, weight = to_float32(colour), to_float32(alpha)
    straight = np.divide(value, weight, out=np.zeros_like(value), where=weight > 0)
    if colour.dtype == np.float32:
        return straight
    top = np.iinfo(colour.dtype).max
    return (np.clip(straight, 0.0, 1.0) * top + 0.5).astype(colour.dtype)


# --- writing ----------------------------------------------------------------------------------------------

# tifffile refuses to write the Exif and GPS IFD pointers itself: each is written as a private tag
# one below its own (so it keeps its place in the IFD's ascending order) and then renamed and pointed
# at the sub-IFD, which Pillow serialises at the end of the file.
_PLACEHOLDERS = {0x8769: 0x8768, 0x8825: 0x8824}


def write_tiff(path: Path, image: ImageFile, icc: bytes | None, exif: bytes | None) -> None:
    encoder = TiffBands(path, image.pixels.shape, image.pixels.dtype, icc, exif, image.source)
    try:
        encoder.write(image.pixels)
        encoder.finish()
    finally:
        encoder.close()


class TiffBands:
    """A TIFF written band by band (``H×W×C`` bands of ``dtype``): tifffile writes the tags and leaves
    the place of the uncompressed image data empty, the bands fill it in order, and the EXIF sub-IFDs
    follow at the end: the same file as writing the whole array at once. ``close`` closes the file (also
    unfinished)."""

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, icc: bytes | None, exif: bytes | None,
        source: object,
    ) -> None:  # fmt: skip
        height, width, channels = shape
        photometric = "minisblack" if channels <= 2 else "rgb"
        extras = {"extrasamples": [EXTRASAMPLE.UNASSALPHA]} if channels in (2, 4) else {}
        form = image_metadata.tiff_form(exif, source)
        tags = form.tags + [(_PLACEHOLDERS[tag], "I", 1, 0, True) for tag in form.sub_ifds]
        # A trailing axis of one would read as one-pixel-wide pages.
        stored = (height, width) if channels == 1 else (height, width, channels)
        place = tifffile.imwrite(
            path, shape=stored, dtype=dtype, photometric=photometric, iccprofile=icc, metadata=None,
            software=False, extratags=tags, returnoffset=True, **extras,
        )  # fmt: skip
        if place is None:
            raise ImageFileError(f"{path}: tifffile left no place for the image data")
        self.path, self.source, self.sub_ifds = path, source, form.sub_ifds
        self._dtype = np.dtype(dtype)
        self._end = place[0] + place[1]
        self._handle = open(path, "r+b")  # noqa: SIM115 — open from band to band, until close()
        self._handle.seek(place[0])

    def write(self, band: np.ndarray) -> None:
        self._handle.write(np.ascontiguousarray(band, dtype=self._dtype).data)

    def finish(self) -> None:
        written = self._handle.tell()
        if written != self._end:
            raise ImageFileError(f"{self.path}: the image data ended at byte {written}, not {self._end}")
        self._handle.close()
        if self.sub_ifds:
            _link_sub_ifds(self.path, self.sub_ifds, self.source)

    def close(self) -> None:
        self._handle.close()


def _link_sub_ifds(path: Path, sub_ifds: dict[int, dict], source: object) -> None:
    with tifffile.TiffFile(path) as tiff:
        if tiff.is_bigtiff:
            log.warning("%s: EXIF sub-IFDs are not written into a BigTIFF", source or path)
            return
        byteorder = tiff.byteorder
        slots = {tag: tiff.pages.first.tags[_PLACEHOLDERS[tag]].valueoffset for tag in sub_ifds}
    with open(path, "r+b") as handle:
        for tag, entries in sub_ifds.items():
            end = handle.seek(0, 2)
            if end % 2:
                handle.write(b"\0")
                end += 1
            handle.write(image_metadata.sub_ifd_bytes(entries, tag, byteorder, end))
            handle.seek(slots[tag] - 8)  # the entry: tag code, type, count, value
            handle.write(struct.pack(byteorder + "HHII", tag, 4, 1, end))
