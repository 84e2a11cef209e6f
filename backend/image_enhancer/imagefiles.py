"""Reading and writing image files for the CLI, keeping bit depth, ICC profile and EXIF.

Pillow reads and writes JPEG, WebP and BMP and reads 8-bit PNG; 16-bit colour PNGs, which Pillow cannot
hold, are read with pypng; every PNG is written by PngBands; and TIFFs go through tifffile and imagecodecs
(image_enhancer.tiff_files). Pixels come out upright (the file's orientation applied) as H×W×C numpy
arrays (C = 1–4) of uint8, uint16 or float32, the forms the engine accepts; the ICC profile and EXIF ride
along (image_enhancer.image_metadata).

A result can also be written as it is made, band by band (write_image_as_made), so a large one never
sits in memory while the model still runs: PNG and TIFF are encoded band by band. Pillow, imagecodecs and
OpenCV encode JPEG, WebP and BMP from a whole image only, so for those the 8-bit bands are spooled to an
unnamed file beside the result (SpooledBands) and encoded once the model is done, when its working memory
is free again.

A decoder is held to what the header promises before it decodes: the pixel limit is checked from the
header, and no compressed stream may inflate beyond what the header's size needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import png
from PIL import Image, ImageCms

from image_enhancer import image_metadata
from image_enhancer.publish import publish

if TYPE_CHECKING:
    from image_enhancer.tiff_files import TiffBands

log = logging.getLogger(__name__)

READABLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
WRITABLE_SUFFIXES = READABLE_SUFFIXES
TIFF_SUFFIXES = {".tif", ".tiff"}  # read and written with tifffile, imported only for them
EIGHT_BIT_ONLY_SUFFIXES = {".jpg", ".jpeg", ".webp", ".bmp"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INFLATE_STEP = 1 << 20  # bytes inflated at a time while checking a PNG's image data
MAX_WEBP_CHUNKS = 64  # chunks looked at before the image chunk of a WebP (a few are normal)


class ImageFileError(ValueError):
    """A file that cannot be read or written as an image, with the reason."""


@dataclass
class ImageFile:
    pixels: np.ndarray
    icc_profile: bytes | None = None
    exif: bytes | None = None
    # The file the pixels were read from: warnings about what an output cannot carry name it.
    source: Path | None = None
    # Stored without loss in a format that also has a lossy mode (lossless WebP): a WebP output of it
    # is written losslessly too.
    lossless: bool = False


def read_image(path: Path, max_pixels: int | None = None) -> ImageFile:
    """Decode `path`; with `max_pixels`, a larger image is refused from its header, before decoding."""
    path = Path(path)
    if path.suffix.lower() not in READABLE_SUFFIXES:
        raise ImageFileError(f"{path}: unsupported file type {path.suffix!r}")
    try:
        if max_pixels is not None:
            width, height = _header_size(path)
            if width * height > max_pixels:
                raise ImageFileError(
                    f"{path}: {width}×{height} = {width * height / 1e6:.1f} megapixels is over the limit "
                    f"of {max_pixels / 1e6:.1f} megapixels"
                )
        if path.suffix.lower() in TIFF_SUFFIXES:
            from image_enhancer.tiff_files import read_tiff

            return read_tiff(path)
        if _is_16bit_colour_png(path):
            return _read_png16(path)
        return _read_with_pillow(path)
    except ImageFileError:
        raise
    except FileNotFoundError as error:
        raise ImageFileError(f"{path}: no such file") from error
    except Exception as error:
        # The decoders (Pillow, pypng, tifffile, imagecodecs) parse untrusted bytes and each has its own
        # error types, several not ValueError or OSError (pypng's ChunkError, struct.error, EOFError,
        # ...): whatever they raise, the file cannot be read.
        raise ImageFileError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as the file's header states it; no pixels are decoded."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        from image_enhancer.tiff_files import header_size

        return header_size(path)
    with _open_with_pillow(path) as im:
        return im.size


@contextlib.contextmanager
def _open_with_pillow(path: Path) -> Iterator[Image.Image]:
    # Pillow's warnings stay off the user's terminal: about large images (past 89 megapixels), our pixel
    # limit is checked from the header first; about EXIF it can only partly parse, we keep what it could
    # (image_metadata warns, naming the file, when it drops any).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"PIL\.")
        with Image.open(path) as im:
            yield im


def write_image(path: Path, image: ImageFile, *, overwrite: bool = True) -> None:
    """Write `image` to `path`; the suffix picks the format. 8-bit-only formats get rounded samples.

    The file is written beside `path` under a temporary name and then put in place in one step
    (image_enhancer.publish): an existing file is replaced as a whole, never written into, and only with
    `overwrite`; without it, a file that is (or appears) at `path` is kept and OutputExistsError raised.
    Disk full, quota, permission and read-only errors raise OutputError naming `path`.
    """
    path = Path(path)
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ImageFileError(f"{path}: unsupported output type {path.suffix!r}")
    publish(path, lambda temporary: _write_new(temporary, image), overwrite)


def write_image_as_made(
    path: Path,
    image: ImageFile,
    make: Callable[[BandedFile | None], np.ndarray | None],
    *,
    overwrite: bool = True,
) -> np.ndarray | None:
    """Write to `path` the result `make` produces, published as write_image publishes it.

    `make` gets a BandedFile (``begin(shape, dtype)``, then ``write(band)`` from the top down:
    engine.bands.ResultRows) and returns None when it used it, or else the whole result, which is then
    written as write_image writes it, and returned. Either way the file's bytes are the same. `image`
    gives the ICC profile and EXIF (its pixels are not written). When `make` fails, neither the target
    nor a temporary file is left.
    """
    path = Path(path)
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ImageFileError(f"{path}: unsupported output type {path.suffix!r}")
    whole: list[np.ndarray] = []

    def write(temporary: Path) -> None:
        banded = BandedFile(temporary, image)
        try:
            result = make(banded)
            if result is None:
                banded.finish()
            else:
                whole.append(result)
                _write_new(temporary, replace(image, pixels=result))
        finally:
            banded.close()

    publish(path, write, overwrite)
    return whole[0] if whole else None


class BandedFile:
    """The file at `path` written band by band (engine.bands.ResultRows), holding the metadata of
    `image` as write_image would write it; ``finish`` completes it, ``close`` lets it go (as it is)."""

    def __init__(self, path: Path, image: ImageFile) -> None:
        self.path = path
        self.image = image
        self._encoder: PngBands | TiffBands | SpooledBands | None = None
        self._rows_left = 0

    def begin(self, shape: tuple[int, int, int], dtype: np.dtype) -> None:
        suffix = self.path.suffix.lower()
        icc, exif = image_metadata.fit_for(suffix, self.image.icc_profile, self.image.exif, self.image.source)
        self._rows_left = shape[0]
        if suffix in TIFF_SUFFIXES:
            from image_enhancer.tiff_files import TiffBands

            self._encoder = TiffBands(self.path, shape, dtype, icc, exif, self.image.source)
        elif suffix == ".png":
            self._encoder = PngBands(self.path, shape, dtype, icc, exif)
        else:
            options = _pillow_options(suffix, self.image, icc, exif)
            self._encoder = SpooledBands(self.path, shape, options)

    def write(self, band: np.ndarray) -> None:
        if self._encoder is None or band.shape[0] > self._rows_left:
            raise ValueError("a band beyond the announced result")
        self._encoder.write(band)
        self._rows_left -= band.shape[0]

    def finish(self) -> None:
        if self._encoder is None or self._rows_left:
            raise ValueError(f"{self.path}: the result ended {self._rows_left} rows short")
        self._encoder.finish()

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()


def _write_new(path: Path, image: ImageFile) -> None:
    suffix = path.suffix.lower()
    icc, exif = image_metadata.fit_for(suffix, image.icc_profile, image.exif, image.source)
    pixels = image.pixels
    if suffix in TIFF_SUFFIXES:
        from image_enhancer.tiff_files import write_tiff

        write_tiff(path, image, icc, exif)
    elif suffix == ".png":
        # One PNG encoder for whole results and banded ones (and 16-bit colour, which Pillow cannot
        # hold), so a file's bytes do not depend on the path that made it.
        _write_png(path, to_uint16(pixels) if pixels.dtype == np.float32 else pixels, icc, exif)
    else:
        check_fits(path, *pixels.shape[:2])
        _pillow_image(_eight_bit(pixels, suffix)).save(path, **_pillow_options(suffix, image, icc, exif))


#: The widest and tallest picture each format written by Pillow can hold (libjpeg's JPEG_MAX_DIMENSION,
#: libwebp's WEBP_MAX_DIMENSION); checked before a result is made, not after the model has run.
MAX_SIDE = {".jpg": 65500, ".jpeg": 65500, ".webp": 16383}


def check_fits(path: Path, height: int, width: int) -> None:
    """Raise ImageFileError when a `width`×`height` picture is too large for the format of `path`."""
    limit = MAX_SIDE.get(path.suffix.lower())
    if limit is not None and max(height, width) > limit:
        raise ImageFileError(
            f"{path}: a {width}×{height} result is too large for {path.suffix.lstrip('.').upper()} "
            f"(at most {limit} pixels a side); write PNG or TIFF instead"
        )


def _eight_bit(pixels: np.ndarray, suffix: str) -> np.ndarray:
    """`pixels` as a format written by Pillow (EIGHT_BIT_ONLY_SUFFIXES) holds them."""
    pixels = to_uint8(pixels)
    if suffix in {".jpg", ".jpeg"} and pixels.shape[2] in (2, 4):
        pixels = pixels[:, :, : pixels.shape[2] - 1]  # JPEG has no alpha channel
    elif suffix == ".bmp" and pixels.shape[2] == 2:
        pixels = pixels[:, :, [0, 0, 0, 1]]  # BMP has no grey with alpha: RGBA keeps both
    return pixels


def _pillow_options(
    suffix: str, image: ImageFile, icc: bytes | None, exif: bytes | None
) -> dict[str, object]:
    """Pillow's save options for `image` written to an EIGHT_BIT_ONLY_SUFFIXES file."""
    options: dict[str, object] = {}
    if icc:
        options["icc_profile"] = icc
    if exif and suffix in {".jpg", ".jpeg", ".webp"}:
        options["exif"] = exif
    if suffix in {".jpg", ".jpeg"} or (suffix == ".webp" and not image.lossless):
        options["quality"] = 95
    elif suffix == ".webp":
        # quality is the compression effort here; exact keeps the colour under transparent pixels.
        options.update(lossless=True, quality=100, exact=True)
    return options


#: Spooled bytes read back into Pillow's image at a time (each read is held twice on the way).
SPOOL_READ_BYTES = 1 << 20


class SpooledBands:
    """A JPEG, WebP or BMP at `path`, its 8-bit bands (as _eight_bit makes them) spooled to an unnamed
    file beside it and encoded by Pillow at ``finish`` with `options`.

    The spool keeps the result out of memory while the model runs (a ×4 result of a 12-megapixel photo
    is 0.58 GB); it is on the result's disk, not in the temporary folder, which is often memory (tmpfs),
    and it has no name, so it is gone on any exit. Read back it takes Pillow's 4 bytes a pixel (RGB is
    held as RGBX), but then the model's working memory is free."""

    def __init__(self, path: Path, shape: tuple[int, int, int], options: dict[str, object]) -> None:
        check_fits(path, *shape[:2])
        self.path = path
        self._height, self._width = shape[:2]
        self._options = options
        self._channels = 0  # from the first band: what _eight_bit leaves of it
        self._spool = tempfile.TemporaryFile(dir=path.parent)  # noqa: SIM115 — held until close()

    def write(self, band: np.ndarray) -> None:
        band = np.ascontiguousarray(_eight_bit(band, self.path.suffix.lower()))
        self._channels = band.shape[2]
        self._spool.write(memoryview(band).cast("B"))

    def finish(self) -> None:
        self._spool.seek(0)
        row_bytes = self._width * self._channels
        rows_at_a_time = max(1, SPOOL_READ_BYTES // row_bytes)
        whole: Image.Image | None = None
        for top in range(0, self._height, rows_at_a_time):
            count = min(rows_at_a_time, self._height - top)
            data = self._spool.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{self.path}: the spooled result ended early")
            band = _pillow_image(np.frombuffer(data, np.uint8).reshape(count, self._width, self._channels))
            if whole is None:
                whole = Image.new(band.mode, (self._width, self._height))
            whole.paste(band, (0, top))
        assert whole is not None
        self._spool.close()  # its disk space is not needed while encoding
        whole.save(self.path, **self._options)

    def close(self) -> None:
        self._spool.close()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint16(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint16:
        return pixels
    if pixels.dtype == np.uint8:
        return pixels.astype(np.uint16) * 257
    return (np.clip(pixels, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


def to_float32(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.float32:
        return pixels
    return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)


def refuse_animation(path: Path, frames: int) -> None:
    """Only still images are enhanced: a file with more frames is refused rather than cut to one."""
    if frames > 1:
        raise ImageFileError(
            f"{path}: has {frames} frames (an animation or multi-page file); only single images are "
            "enhanced — export the frames as separate files"
        )


def cmyk_to_rgb(path: Path, cmyk: np.ndarray, icc: bytes | None) -> np.ndarray:
    """CMYK samples (H×W×4) -> sRGB: through the file's own profile with littleCMS (Pillow's ImageCms,
    at 8 bits) when it has one, else with the uncalibrated R = (1 − C)(1 − K), …; a warning says which."""
    if icc:
        try:
            transform = ImageCms.buildTransform(
                ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), "CMYK", "RGB",
                renderingIntent=ImageCms.Intent.PERCEPTUAL,
            )
            rgb = ImageCms.applyTransform(Image.fromarray(to_uint8(cmyk), "CMYK"), transform)
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
            log.warning("%s: its CMYK profile cannot be used (%s); converted as uncalibrated CMYK, "
                        "colours may differ from the print intent", path, error)
        else:
            depth = "" if cmyk.dtype == np.uint8 else " (through 8 bits per sample)"
            log.warning("%s: CMYK converted to sRGB with its embedded ICC profile%s", path, depth)
            return np.asarray(rgb, dtype=np.uint8)
    else:
        log.warning("%s: CMYK without an ICC profile; converted as uncalibrated CMYK "
                    "(R = (1 − C)(1 − K), …), colours may differ from the print intent", path)
    ink = to_float32(cmyk)
    rgb = (1.0 - ink[:, :, :3]) * (1.0 - ink[:, :, 3:4])
    if cmyk.dtype == np.float32:
        return rgb.astype(np.float32)
    return (rgb * np.iinfo(cmyk.dtype).max + 0.5).astype(cmyk.dtype)


def _read_with_pillow(path: Path) -> ImageFile:
    with _open_with_pillow(path) as im:
        refuse_animation(path, getattr(im, "n_frames", 1))
        im.load()
        icc = image_metadata.bounded_icc(im.info.get("icc_profile"), path)
        exif = image_metadata.take_orientation(image_metadata.pillow_image_exif(im), path)
        lossless = im.format == "WEBP" and _webp_is_lossless(path)
        if im.mode == "CMYK":
            pixels, icc = cmyk_to_rgb(path, np.asarray(im, dtype=np.uint8), icc), None
        else:
            pixels = _pillow_to_array(im)
    return ImageFile(image_metadata.upright(pixels, exif.orientation), icc, exif.raw, path, lossless)


def _pillow_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        array = np.asarray(im, dtype=np.uint16)
    elif mode == "I":
        # 16-bit gray PNGs open as 32-bit "I"; their values still fit 16 bits.
        array = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
    elif mode == "F":
        array = np.asarray(im, dtype=np.float32)
    else:
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in mode else "RGB")
        array = np.asarray(im, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def _pillow_image(pixels: np.ndarray) -> Image.Image:
    channels = pixels.shape[2]
    if pixels.dtype == np.uint16:
        if channels != 1:
            raise ImageFileError("16-bit colour needs PNG or TIFF output")
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0].astype("<u2")))
    # Pillow infers L / LA / RGB / RGBA from the array's shape.
    return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if channels == 1 else pixels))


def _webp_is_lossless(path: Path) -> bool:
    """Whether the WebP at `path` holds its picture as VP8L (lossless) rather than VP8 (lossy). Pillow
    does not say; the RIFF chunk that holds the picture does."""
    with open(path, "rb") as handle:
        if handle.read(12)[8:] != b"WEBP":
            return False
        for _ in range(MAX_WEBP_CHUNKS):
            header = handle.read(8)
            if len(header) < 8:
                return False
            kind, size = header[:4], int.from_bytes(header[4:], "little")
            if kind in (b"VP8L", b"VP8 "):
                return kind == b"VP8L"
            handle.seek(size + (size & 1), io.SEEK_CUR)
    return False


def _is_16bit_colour_png(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(26)
    if not head.startswith(PNG_SIGNATURE) or len(head) < 26:
        return False
    bit_depth, colour_type = head[24], head[25]
    return bit_depth == 16 and colour_type in (2, 4, 6)  # RGB, gray+alpha, RGBA


def _read_png16(path: Path) -> ImageFile:
    # pypng decodes the samples (Pillow cannot hold 16-bit colour) but only an animated PNG's first
    # frame; Pillow counts the frames and reads the metadata.
    with _open_with_pillow(path) as im:
        refuse_animation(path, getattr(im, "n_frames", 1))
        icc = image_metadata.bounded_icc(im.info.get("icc_profile"), path)
        exif = image_metadata.take_orientation(im.info.get("exif"), path)
    with open(path, "rb") as handle:
        _check_png_inflation(path, png.Reader(file=handle))
        handle.seek(0)
        width, height, rows, info = png.Reader(file=handle).asDirect()
        channels = info["planes"]
        pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    pixels = pixels.reshape(height, width, channels)
    return ImageFile(image_metadata.upright(pixels, exif.orientation), icc, exif.raw, path)


def _check_png_inflation(path: Path, reader: png.Reader) -> None:
    """Refuse a PNG whose image data inflates beyond what its header's size needs, a step at a time,
    before pypng (which inflates each IDAT chunk whole) sees it: a small file can otherwise hold
    gigabytes of zeros after its image."""
    reader.preamble()
    needed = png_data_size(reader.width, reader.height, reader.planes * reader.bitdepth, reader.interlace)
    inflater = zlib.decompressobj()
    produced = 0
    while not inflater.eof:
        kind, data = reader.chunk()
        if kind == b"IEND":
            return
        while kind == b"IDAT" and data:
            produced += len(inflater.decompress(data, INFLATE_STEP))
            data = inflater.unconsumed_tail
            if produced > needed:
                raise ImageFileError(
                    f"{path}: its image data inflates beyond the {needed} bytes its "
                    f"{reader.width}×{reader.height} header needs (damaged, or a decompression bomb)"
                )


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_data_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes of filtered image data (a filter byte per row) a PNG of this size holds once inflated."""
    total = 0
    for x, y, step_x, step_y in _ADAM7 if interlaced else ((0, 0, 1, 1),):
        columns, rows = -(-(width - x) // step_x), -(-(height - y) // step_y)
        if columns > 0 and rows > 0:
            total += rows * (1 + (columns * bits_per_pixel + 7) // 8)
    return total


def _write_png(path: Path, pixels: np.ndarray, icc_profile: bytes | None = None,
               exif: bytes | None = None) -> None:
    encoder = PngBands(path, pixels.shape, pixels.dtype, icc_profile, exif)
    try:
        encoder.write(pixels)
        encoder.finish()
    finally:
        encoder.close()


#: zlib's level for PNG image data (Pillow's default too), the rows filtered at a time, and the most
#: compressed bytes held before they go out as an IDAT chunk.
PNG_LEVEL = 6
PNG_FILTER_ROWS = 8
PNG_CHUNK_BYTES = 1 << 20


class PngBands:
    """A PNG written to `path` band by band (``H×W×C`` bands of uint8, uint16, or float32 written as
    16-bit as _write_new writes it), with the ICC profile and EXIF before the image data; ``finish``
    ends it, ``close`` closes the file (also unfinished).

    pypng writes the signature and header, but its encoder pulls rows from an iterator and leaves every
    row unfiltered (files 1.8× Pillow's for photos); the bands are pushed here instead, each row given
    the filter with the smallest sum of absolute values as signed bytes (the heuristic of the PNG
    specification, 12.8, which libpng and Pillow use), so files come out within a few percent of
    Pillow's."""

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, icc: bytes | None, exif: bytes | None
    ) -> None:
        height, width, channels = shape
        depth = 8 if np.dtype(dtype) == np.uint8 else 16
        writer = png.Writer(width, height, greyscale=channels <= 2, alpha=channels in (2, 4), bitdepth=depth)
        self._handle: BinaryIO = open(path, "wb")  # noqa: SIM115 — open from band to band, until close()
        try:
            writer.write_preamble(self._handle)
            # pypng writes neither iCCP nor eXIf itself: they go right after IHDR, before the image data.
            if icc:
                png.write_chunk(self._handle, b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc))
            if exif:
                png.write_chunk(self._handle, b"eXIf", exif.removeprefix(image_metadata.EXIF_PREFIX))
        except BaseException:
            self._handle.close()
            raise
        self._depth = depth
        self._pixel_bytes = channels * depth // 8
        self._previous = np.zeros(width * self._pixel_bytes, dtype=np.uint8)  # the row above the first
        self._compressor = zlib.compressobj(PNG_LEVEL)
        self._pending = bytearray()

    def write(self, band: np.ndarray) -> None:
        for top in range(0, band.shape[0], PNG_FILTER_ROWS):
            part = band[top : top + PNG_FILTER_ROWS]
            if self._depth == 16:
                part = to_uint16(part).astype(">u2")  # PNG samples are big-endian
            rows = np.ascontiguousarray(part).view(np.uint8).reshape(part.shape[0], -1)
            self._pending += self._compressor.compress(_png_filtered(rows, self._previous, self._pixel_bytes))
            self._previous = rows[-1].copy()
            if len(self._pending) >= PNG_CHUNK_BYTES:
                png.write_chunk(self._handle, b"IDAT", self._pending)
                self._pending.clear()

    def finish(self) -> None:
        self._pending += self._compressor.flush()
        png.write_chunk(self._handle, b"IDAT", self._pending)
        png.write_chunk(self._handle, b"IEND")
        self._handle.close()

    def close(self) -> None:
        self._handle.close()


def _png_filtered(rows: np.ndarray, previous: np.ndarray, pixel_bytes: int) -> np.ndarray:
    """PNG scanlines, each led by its filter type (PNG 9.2: None, Sub, Up, Average, Paeth), the one
    whose bytes, read as signed, have the smallest sum of absolute values."""
    x = rows.astype(np.int16)
    up = np.empty_like(x)
    up[0], up[1:] = previous, x[:-1]
    left = np.zeros_like(x)
    left[:, pixel_bytes:] = x[:, :-pixel_bytes]
    upper_left = np.zeros_like(x)
    upper_left[:, pixel_bytes:] = up[:, :-pixel_bytes]
    pa, pb, pc = np.abs(up - upper_left), np.abs(left - upper_left), np.abs(left + up - 2 * upper_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upper_left))
    # Differences wrap to bytes, as PNG's arithmetic does (modulo 256).
    candidates = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]).astype(np.uint8)
    scores = np.abs(candidates.view(np.int8).astype(np.int16)).sum(axis=2, dtype=np.int64)
    best = scores.argmin(axis=0)
    filtered = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = best
    filtered[:, 1:] = candidates[best, np.arange(rows.shape[0])]
    return filtered
