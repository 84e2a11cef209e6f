"""A small CMYK ICC profile (version 2, printer class, Lab PCS, one 2-point lut16 A2B0 table) for tests:
no CMYK profile ships with Pillow or littleCMS, and real printer profiles are too large (and mostly not
free) to keep in the repository. Its inks are deliberately unlike the uncalibrated formula's (its cyan
is a mid blue, not (0, 255, 255)), so a conversion that ignores the profile is easy to tell apart."""

from __future__ import annotations

import itertools
import struct

import numpy as np
from PIL import Image, ImageCms

# sRGB colour of each pure ink at full strength on white paper; mixtures multiply.
INKS = {"c": (40, 110, 200), "m": (210, 40, 120), "y": (250, 220, 30), "k": (25, 25, 30)}


def _corner_colours() -> np.ndarray:
    """sRGB (0–1) at the 16 corners of the CMYK cube, C varying slowest as ICC's CLUT order wants."""
    colours = []
    for corner in itertools.product((0, 1), repeat=4):
        rgb = np.ones(3)
        for on, ink in zip(corner, "cmyk", strict=True):
            if on:
                rgb = rgb * np.array(INKS[ink]) / 255.0
        colours.append(rgb)
    return np.array(colours)


def _lab16(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0–1) -> ICC v2 16-bit Lab (L 0–100 -> 0–0xFF00, a and b +128 -> ×256)."""
    image = Image.fromarray(np.round(rgb * 255).astype(np.uint8)[None, :, :], "RGB")
    srgb, lab_profile = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    to_lab = ImageCms.buildTransform(srgb, lab_profile, "RGB", "LAB")
    lab = np.asarray(ImageCms.applyTransform(image, to_lab))[0]
    lightness = lab[:, 0].astype(np.float64) / 255.0 * 0xFF00
    ab = (lab[:, 1:].view(np.int8).astype(np.float64) + 128.0) * 256.0  # Pillow keeps a and b signed
    return np.column_stack([lightness, ab]).round()


def _tag(kind: bytes, body: bytes) -> bytes:
    data = kind + b"\0\0\0\0" + body
    return data + b"\0" * (-len(data) % 4)


def cmyk_profile() -> bytes:
    text = b"Image Enhancer test CMYK\0"
    description = _tag(b"desc", struct.pack(">I", len(text)) + text + b"\0" * (4 + 4 + 2 + 1 + 67))
    white = _tag(b"XYZ ", struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249))))
    copyright_ = _tag(b"text", b"public domain\0")
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536)
    curve = struct.pack(">2H", 0, 65535)
    clut = struct.pack(">48H", *_lab16(_corner_colours()).astype(np.uint16).ravel())
    lut = _tag(b"mft2", struct.pack(">4B", 4, 3, 2, 0) + identity + struct.pack(">2H", 2, 2) + curve * 4
               + clut + curve * 3)
    tags = [(b"desc", description), (b"wtpt", white), (b"cprt", copyright_), (b"A2B0", lut)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        table += signature + struct.pack(">2I", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"prtr", b"CMYK", b"Lab ")
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">3i", 63190, 65536, 54061)
    header += b"\0" * (128 - len(header))
    return header + table + body
