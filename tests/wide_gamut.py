"""Wide-gamut test material: ICC profiles generated from their published primaries, and patch images.

The profiles are minimal ICC v2 matrix/TRC profiles (a display profile: description, white point,
D50-adapted colorants, one tone curve per channel; gray profiles: a single gray curve), written here so
that no third-party profile file is needed. Little CMS and babl both read them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

D50 = np.array([0.9642, 1.0, 0.8249])
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
# The sRGB curve as an ICC parametric curve of type 3: (gamma, a, b, c, d).
SRGB_CURVE = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)


@dataclass(frozen=True)
class RgbSpace:
    name: str
    primaries: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]  # xy of R, G, B
    white: tuple[float, float]  # xy
    curve: float | tuple[float, ...]  # a gamma, or the parameters of a type-3 parametric curve


ADOBE_RGB = RgbSpace("Adobe RGB (1998) compatible", ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06)),
                     (0.3127, 0.3290), 563 / 256)  # fmt: skip
PROPHOTO = RgbSpace("ProPhoto RGB compatible", ((0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001)),
                    (0.3457, 0.3585), 1.8)  # fmt: skip
DISPLAY_P3 = RgbSpace("Display P3 compatible", ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
                      (0.3127, 0.3290), SRGB_CURVE)  # fmt: skip
SRGB = RgbSpace("sRGB compatible", ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), (0.3127, 0.3290), SRGB_CURVE)


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def colorants(space: RgbSpace) -> np.ndarray:
    """The RGB → XYZ matrix (columns R, G, B) adapted to D50 with Bradford, as ICC profiles store it."""
    primaries = np.stack([_xyz(p) for p in space.primaries], axis=1)
    white = _xyz(space.white)
    matrix = primaries * np.linalg.solve(primaries, white)  # scale each primary so R+G+B = white
    cone_ratio = (_BRADFORD @ D50) / (_BRADFORD @ white)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone_ratio) @ _BRADFORD
    return adapt @ matrix


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _curve_tag(curve: float | tuple[float, ...]) -> bytes:
    if isinstance(curve, tuple):
        return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(v) for v in curve)
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(curve * 256)) + b"\0\0"


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(4 + 4 + 2 + 1 + 67)


def _profile(colour_space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, data = struct.pack(">I", len(tags)), b""
    for signature, content in tags:
        table += signature + struct.pack(">II", offset + len(data), len(content))
        data += content + bytes(-len(content) % 4)
    size = 128 + table_size + len(data)
    header = (
        struct.pack(">I", size)
        + bytes(4)
        + struct.pack(">I", 0x02100000)
        + b"mntr"
        + colour_space
        + b"XYZ "
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(24)  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # perceptual intent
        + b"".join(_s15(v) for v in D50)
        + bytes(4 + 16 + 28)  # creator, profile id, reserved
    )
    assert len(header) == 128
    return header + table + data


def rgb_profile(space: RgbSpace) -> bytes:
    """An ICC v2 RGB display profile of `space`."""
    matrix = colorants(space)
    curve = _curve_tag(space.curve)
    return _profile(
        b"RGB ",
        [
            (b"desc", _desc_tag(space.name)),
            (b"cprt", b"text\0\0\0\0No copyright, use freely\0"),
            (b"wtpt", _xyz_tag(D50)),
            (b"rXYZ", _xyz_tag(matrix[:, 0])),
            (b"gXYZ", _xyz_tag(matrix[:, 1])),
            (b"bXYZ", _xyz_tag(matrix[:, 2])),
            (b"rTRC", curve),
            (b"gTRC", curve),
            (b"bTRC", curve),
        ],
    )


def gray_profile(gamma: float, name: str) -> bytes:
    """An ICC v2 gray display profile with a pure gamma curve."""
    return _profile(
        b"GRAY",
        [
            (b"desc", _desc_tag(name)),
            (b"cprt", b"text\0\0\0\0No copyright, use freely\0"),
            (b"wtpt", _xyz_tag(D50)),
            (b"kTRC", _curve_tag(gamma)),
        ],
    )


# Named patches of the test image as fractions of full scale (R, G, B); each is one square of the grid.
PATCHES: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "mid-green": (0.25, 0.75, 0.25),
    "cyan": (0.0, 1.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "dark-grey": (516 / 65535, 516 / 65535, 516 / 65535),
    "mid-grey": (0.5, 0.5, 0.5),
    "light-grey": (0.9, 0.9, 0.9),
}
PATCH = 16  # side of one patch, in pixels


def patch_image(columns: int = 3) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """A float64 RGB image in [0, 1]: the PATCHES on a grid, then a red → green ramp and a black → white
    ramp, each PATCH pixels high. Returns the image and each patch's top-left corner (y, x)."""
    rows = -(-len(PATCHES) // columns)
    width = columns * PATCH
    image = np.zeros((rows * PATCH + 2 * PATCH, width, 3))
    corners = {}
    for index, (name, colour) in enumerate(PATCHES.items()):
        y, x = divmod(index, columns)
        corners[name] = (y * PATCH, x * PATCH)
        image[y * PATCH : (y + 1) * PATCH, x * PATCH : (x + 1) * PATCH] = colour
    t = np.linspace(0.0, 1.0, width)
    ramp_top = rows * PATCH
    image[ramp_top : ramp_top + PATCH, :, 0] = 1 - t
    image[ramp_top : ramp_top + PATCH, :, 1] = t
    image[ramp_top + PATCH :, :] = t[:, None]
    corners["red-green ramp"] = (ramp_top, 0)
    corners["grey ramp"] = (ramp_top + PATCH, 0)
    return image, corners


def patch_means(image: np.ndarray, corners: dict[str, tuple[int, int]], scale: int, margin: int = 4) -> dict:
    """The mean of each patch's inner part (away from its edges) in an image `scale` times larger; ramps
    give their largest deviation instead through patch_errors."""
    means = {}
    for name, (y, x) in corners.items():
        if "ramp" in name:
            continue
        inner = image[(y + margin) * scale : (y + PATCH - margin) * scale,
                      (x + margin) * scale : (x + PATCH - margin) * scale]  # fmt: skip
        means[name] = inner.reshape(-1, image.shape[-1]).mean(axis=0)
    return means


def write_png16(path, pixels: np.ndarray, icc: bytes) -> None:
    """A 16-bit PNG of `pixels` (H×W×C uint16) with `icc` in its iCCP chunk, written with pypng alone so
    that the file does not depend on the writer under test."""
    import io
    import zlib

    import png

    height, width, channels = pixels.shape
    buffer = io.BytesIO()
    writer = png.Writer(width, height, greyscale=channels <= 2, alpha=channels in (2, 4), bitdepth=16)
    writer.write(buffer, pixels.reshape(height, width * channels))
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    chunks.insert(1, (b"iCCP", b"embedded\0\0" + zlib.compress(icc)))  # right after IHDR
    with open(path, "wb") as handle:
        png.write_chunks(handle, chunks)
