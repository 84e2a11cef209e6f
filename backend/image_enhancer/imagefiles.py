"""Reading and writing image files for the CLI, keeping bit depth, ICC profile and EXIF.

Pillow cannot hold 16-bit colour images, so 16-bit colour PNGs go through pypng and TIFFs through
tifffile; everything else goes through Pillow. Pixels come out as H×W×C numpy arrays (C = 1–4) of
uint8, uint16 or float32, the forms the engine accepts.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
from PIL import Image

READABLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
WRITABLE_SUFFIXES = READABLE_SUFFIXES
TIFF_SUFFIXES = {".tif", ".tiff"}  # read and written with tifffile, imported only for them
EIGHT_BIT_ONLY_SUFFIXES = {".jpg", ".jpeg", ".webp", ".bmp"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ICC_TIFF_TAG = 34675


class ImageFileError(ValueError):
    """A file that cannot be read or written as an image, with the reason."""


@dataclass
class ImageFile:
    pixels: np.ndarray
    icc_profile: bytes | None = None
    exif: bytes | None = None


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
            return _read_tiff(path)
        if _is_16bit_colour_png(path):
            return _read_png16(path)
        return _read_with_pillow(path)
    except ImageFileError:
        raise
    except FileNotFoundError as error:
        raise ImageFileError(f"{path}: no such file") from error
    except Exception as error:
        # The decoders (Pillow, pypng, tifffile) parse untrusted bytes and each has its own error
        # types, several not ValueError or OSError (pypng's ChunkError, struct.error, EOFError, ...):
        # whatever they raise, the file cannot be read.
        raise ImageFileError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as the file's header states it; no pixels are decoded."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            return int(page.imagewidth), int(page.imagelength)
    with Image.open(path) as im:
        return im.size


def write_image(path: Path, image: ImageFile) -> None:
    """Write `image` to `path`; the suffix picks the format. 8-bit-only formats get rounded samples.

    The file is written beside `path` under a temporary name and then renamed over it, so an existing
    file at `path` is replaced as a whole, never written into: whatever else links to its old contents
    (a hard link to an input, say) keeps them, and an interrupted write leaves no half-written file.
    """
    path = Path(path)
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ImageFileError(f"{path}: unsupported output type {path.suffix!r}")
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes it owner-only
        _write_new(temporary, image)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_new(path: Path, image: ImageFile) -> None:
    suffix = path.suffix.lower()
    pixels = image.pixels
    if suffix in TIFF_SUFFIXES:
        import tifffile

        photometric = "minisblack" if pixels.shape[2] <= 2 else "rgb"
        extras = {"extrasamples": [2]} if pixels.shape[2] in (2, 4) else {}
        tifffile.imwrite(path, pixels, photometric=photometric, iccprofile=image.icc_profile, **extras)
        return
    if suffix in EIGHT_BIT_ONLY_SUFFIXES:
        pixels = to_uint8(pixels)
        if suffix in {".jpg", ".jpeg"} and pixels.shape[2] in (2, 4):
            pixels = pixels[:, :, : pixels.shape[2] - 1]  # JPEG has no alpha channel
    elif suffix == ".png":
        if pixels.dtype == np.float32:
            pixels = to_uint16(pixels)
        if pixels.dtype == np.uint16 and pixels.shape[2] > 1:
            _write_png16(path, pixels)
            return
    options: dict[str, object] = {}
    if image.icc_profile:
        options["icc_profile"] = image.icc_profile
    if image.exif and suffix in {".jpg", ".jpeg", ".webp", ".png"}:
        options["exif"] = image.exif
    if suffix in {".jpg", ".jpeg", ".webp"}:
        options["quality"] = 95
    _pillow_image(pixels).save(path, **options)


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


def _refuse_animation(path: Path, frames: int) -> None:
    """Only still images are enhanced: a file with more frames is refused rather than cut to one."""
    if frames > 1:
        raise ImageFileError(
            f"{path}: has {frames} frames (an animation or multi-page file); only single images are "
            "enhanced — export the frames as separate files"
        )


def _read_with_pillow(path: Path) -> ImageFile:
    with Image.open(path) as im:
        _refuse_animation(path, getattr(im, "n_frames", 1))
        im.load()
        icc = im.info.get("icc_profile")
        exif = im.info.get("exif") or (im.getexif().tobytes() if len(im.getexif()) else None)
        pixels = _pillow_to_array(im)
    return ImageFile(pixels=pixels, icc_profile=icc, exif=exif)


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
    with Image.open(path) as im:
        _refuse_animation(path, getattr(im, "n_frames", 1))
        icc = im.info.get("icc_profile")
        exif = im.info.get("exif")
    reader = png.Reader(filename=str(path))
    width, height, rows, info = reader.asDirect()
    channels = info["planes"]
    pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, channels)
    return ImageFile(pixels=pixels, icc_profile=icc, exif=exif)


def _write_png16(path: Path, pixels: np.ndarray) -> None:
    height, width, channels = pixels.shape
    writer = png.Writer(width, height, greyscale=channels <= 2, alpha=channels in (2, 4), bitdepth=16)
    with open(path, "wb") as handle:
        writer.write(handle, pixels.reshape(height, width * channels))


def _read_tiff(path: Path) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        # Reduced-resolution pages are previews of the first; other pages are further images.
        _refuse_animation(path, sum(1 for p in tiff.pages if not getattr(p, "is_reduced", False)))
        page = tiff.pages[0]
        pixels = page.asarray()
        icc_tag = page.tags.get(ICC_TIFF_TAG)
        icc = bytes(icc_tag.value) if icc_tag is not None else None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] > 4:
        raise ImageFileError(f"{path}: unsupported TIFF layout {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        if np.issubdtype(pixels.dtype, np.floating):
            pixels = pixels.astype(np.float32)
        else:
            raise ImageFileError(f"{path}: unsupported TIFF sample type {pixels.dtype}")
    return ImageFile(pixels=np.ascontiguousarray(pixels), icc_profile=icc)
