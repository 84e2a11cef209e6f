"""The ICC profile and EXIF an input file carries to its outputs: their size limits, the EXIF
orientation (applied to the pixels on reading, so every output is upright whatever its format or
viewer), and EXIF in TIFF form (the descriptive tags of the first IFD and the Exif and GPS sub-IFDs).

Pillow parses and writes the EXIF; whatever it cannot parse is dropped with a warning naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, TiffImagePlugin

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Real profiles are kilobytes; large printer profiles a few megabytes. JPEG carries at most
# 255 markers × 65,519 bytes (16 MB), so 8 MiB fits every format we write but PNG (below).
MAX_ICC_BYTES = 8 * MIB
# Pillow (and so our own reader) refuses a PNG whose iCCP chunk inflates to more than its
# MAX_TEXT_CHUNK, 1 MiB; larger profiles are left out of PNG outputs.
MAX_PNG_ICC_BYTES = MIB
MAX_EXIF_BYTES = MIB
MAX_JPEG_EXIF_BYTES = 65533  # one APP1 marker, "Exif\0\0" included (Pillow refuses more)
EXIF_PREFIX = b"Exif\x00\x00"
ORIENTATION = 0x0112
# Tags of a TIFF's first IFD that describe the picture rather than its storage: the part of EXIF's
# IFD0 that is worth carrying between formats (resolution, strips and the like are the writer's).
DESCRIPTIVE_TAGS = {
    0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software",
    0x0132: "DateTime", 0x013B: "Artist", 0x8298: "Copyright",
}
SUB_IFDS = (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo)


@contextlib.contextmanager
def _pillow_parsing() -> Iterator[None]:
    """Pillow warns (through `warnings`) about EXIF it can only partly parse and keeps what it could;
    so do we, without its warnings reaching the user's terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _name(source: object) -> str:
    return f"{source}: " if source else ""


def bounded_icc(icc: bytes | None, source: object) -> bytes | None:
    """`icc`, or None with a warning when it is larger than any profile we carry."""
    if icc and len(icc) > MAX_ICC_BYTES:
        log.warning("%sthe ICC profile (%.1f MiB) is over the %d MiB limit; it is not kept",
                    _name(source), len(icc) / MIB, MAX_ICC_BYTES // MIB)
        return None
    return icc or None


@dataclass
class Exif:
    """EXIF read from a file: the bytes to carry (orientation removed) and the orientation (1–8)."""

    raw: bytes | None = None
    orientation: int = 1


def take_orientation(raw: bytes | None, source: object) -> Exif:
    """Split `raw` EXIF into its orientation and the rest; damaged or oversized EXIF is dropped."""
    if not raw:
        return Exif()
    if len(raw) > MAX_EXIF_BYTES:
        log.warning("%sthe EXIF (%.1f MiB) is over the %d MiB limit; it is not kept",
                    _name(source), len(raw) / MIB, MAX_EXIF_BYTES // MIB)
        return Exif()
    raw = EXIF_PREFIX + re.sub(b"^(Exif\x00\x00)+", b"", raw)  # WebP and PNG may omit the prefix
    with _pillow_parsing():
        try:
            exif = Image.Exif()
            exif.load(raw)
            orientation = exif.get(ORIENTATION)
        except Exception as error:  # noqa: BLE001 — Pillow's EXIF parser raises many types on bad data
            log.warning("%sthe EXIF cannot be read (%s); it is not kept", _name(source), error)
            return Exif()
        if orientation is None:
            return Exif(raw)
        orientation = orientation if orientation in range(1, 9) else 1
        try:
            del exif[ORIENTATION]
            return Exif(exif.tobytes(), orientation)
        except Exception as error:  # noqa: BLE001 — as above; the orientation is still applied
            log.warning("%sthe EXIF cannot be rewritten without its orientation (%s); it is not kept",
                        _name(source), error)
            return Exif(None, orientation)


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` (H×W×C) turned the way EXIF/TIFF orientation `orientation` says the picture is shown
    (what Pillow's ImageOps.exif_transpose does)."""
    if orientation == 2:
        pixels = pixels[:, ::-1]
    elif orientation == 3:
        pixels = pixels[::-1, ::-1]
    elif orientation == 4:
        pixels = pixels[::-1]
    elif orientation == 5:
        pixels = pixels.transpose(1, 0, 2)
    elif orientation == 6:
        pixels = np.rot90(pixels, -1)
    elif orientation == 7:
        pixels = pixels[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        pixels = np.rot90(pixels, 1)
    return np.ascontiguousarray(pixels)


def fit_for(suffix: str, icc: bytes | None, exif: bytes | None, source: object
            ) -> tuple[bytes | None, bytes | None]:
    """The profile and EXIF an output of type `suffix` can carry so that common readers (and ours)
    still open it; what does not fit is left out with a warning."""
    if icc and suffix == ".png" and len(icc) > MAX_PNG_ICC_BYTES:
        log.warning("%sthe ICC profile (%.1f MiB) is larger than PNG readers accept (1 MiB); the PNG "
                    "is written without it", _name(source), len(icc) / MIB)
        icc = None
    if exif and suffix in {".jpg", ".jpeg"} and len(exif) > MAX_JPEG_EXIF_BYTES:
        log.warning("%sthe EXIF (%d bytes) is larger than a JPEG holds (%d); the JPEG is written "
                    "without it", _name(source), len(exif), MAX_JPEG_EXIF_BYTES)
        exif = None
    return icc, exif


# --- EXIF in TIFF form ---------------------------------------------------------------------------------


def exif_from_tiff(fp: IO[bytes], source: object) -> bytes | None:
    """The EXIF of an open TIFF file: the descriptive tags of its first IFD and its Exif and GPS
    sub-IFDs, as EXIF bytes; None when it has none or they cannot be read."""
    with _pillow_parsing():
        try:
            tiff = Image.Exif()
            tiff.load_from_fp(fp)
            kept = Image.Exif()
            for tag in DESCRIPTIVE_TAGS:
                if tag in tiff:
                    kept[tag] = tiff[tag]
            for tag in SUB_IFDS:
                if tag in tiff:
                    kept[tag] = _sub_ifd(tiff, tag)
            if not len(kept):
                return None
            raw = kept.tobytes()
        except Exception as error:  # noqa: BLE001 — as in take_orientation
            log.warning("%sthe EXIF cannot be read (%s); it is not kept", _name(source), error)
            return None
    return raw if len(raw) <= MAX_EXIF_BYTES else None


def _sub_ifd(exif: Image.Exif, tag: int) -> dict[int, Any]:
    entries = dict(exif.get_ifd(tag))
    if tag == ExifTags.IFD.Exif and ExifTags.IFD.Interop in entries:
        entries[ExifTags.IFD.Interop] = exif.get_ifd(ExifTags.IFD.Interop)
    return entries


@dataclass
class TiffExif:
    """EXIF split the way a TIFF holds it."""

    tags: list[tuple[int, str, int, Any, bool]]  # the first IFD's tags, as tifffile's extratags
    sub_ifds: dict[int, dict[int, Any]]  # Exif / GPS sub-IFD tag -> its entries


def tiff_form(raw: bytes | None, source: object) -> TiffExif:
    if not raw:
        return TiffExif([], {})
    with _pillow_parsing():
        try:
            exif = Image.Exif()
            exif.load(raw)
            tags = [(tag, "s", 0, _ascii(exif[tag]), True) for tag in DESCRIPTIVE_TAGS if tag in exif]
            orientation = exif.get(ORIENTATION)
            if orientation in range(2, 9):
                tags.append((ORIENTATION, "H", 1, orientation, True))
            sub_ifds = {tag: _sub_ifd(exif, tag) for tag in SUB_IFDS if tag in exif}
            for tag, entries in sub_ifds.items():
                sub_ifd_bytes(entries, tag, "<", 0)  # what Pillow cannot serialise fails here, not mid-write
            return TiffExif(tags, sub_ifds)
        except Exception as error:  # noqa: BLE001 — as in take_orientation
            log.warning("%sthe EXIF cannot be converted for TIFF (%s); the TIFF is written without it",
                        _name(source), error)
            return TiffExif([], {})


def _ascii(value: object) -> str:
    """A TIFF string (7-bit ASCII, which tifffile insists on) for an EXIF text value: UTF-8 text, common
    in EXIF, keeps its characters as escapes rather than failing the write."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.replace("\0", " ").encode("ascii", "backslashreplace").decode("ascii")


def sub_ifd_bytes(entries: dict[int, Any], tag: int, byteorder: str, offset: int) -> bytes:
    """The sub-IFD `tag` holding `entries`, serialised by Pillow to sit at `offset` in a classic TIFF
    of `byteorder` ('<' or '>')."""
    header = (b"II\x2a\x00" if byteorder == "<" else b"MM\x00\x2a") + b"\x00" * 4
    ifd = TiffImagePlugin.ImageFileDirectory_v2(header, group=tag)
    for entry, value in entries.items():
        ifd[entry] = value
    return ifd.tobytes(offset)


def pillow_image_exif(image: Image.Image) -> bytes | None:
    """The EXIF Pillow found in `image` (JPEG, PNG, WebP), as bytes."""
    raw = image.info.get("exif")
    if raw:
        return raw
    with _pillow_parsing():
        exif = image.getexif()
        return exif.tobytes() if len(exif) else None

