"""Colour-managed images in the real GIMP 3.0 and 3.2: wide-gamut layers keep their colours.

Adobe RGB and ProPhoto images (16-bit and float linear light), a gray image with a gray profile, a
linear-curve profile and an sRGB control go through AI Enhance at x1 and x2. Each result must equal,
within a level or two, what the model gives on the layer's raw values: the values in the layer's own
encoding, read with a babl format in the image's colour space (R'G'B' for perceptual-curve images; for
linear light the sRGB curve over the profile's primaries, R~G~B~, which is what the plug-in sends). Before
colour management a saturated Adobe RGB red came back as 56267, 411, 343 (clipped to sRGB); float values
beyond [0, 1] were clamped. The profile must still be assigned afterwards.

All cases of one GIMP release run in one GIMP process, because starting GIMP costs seconds. The profiles
are generated (tests/wide_gamut.py). Needs root (chroot), like the other GIMP tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import wide_gamut

from image_enhancer.client.grpc_client import EnhancerClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gimp"))
from chroot_gimp import (  # noqa: E402
    GIMP_VERSIONS,
    ChrootGimp,
    backend_process,
    build_chroot,
    free_address,
    unavailable,
)

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

MODEL = "ie-compact-x4-psnr"  # the faithful end (strength 0) of the ie-compact-x4 pair
BATCH_SCRIPT = REPO / "tests" / "gimp" / "colour_batch.py"
PROFILES = {
    "adobe-rgb.icc": wide_gamut.rgb_profile(wide_gamut.ADOBE_RGB),
    "prophoto.icc": wide_gamut.rgb_profile(wide_gamut.PROPHOTO),
    # ProPhoto primaries with a linear curve, as raw developers export: R'G'B' would be linear light too.
    "prophoto-linear.icc": wide_gamut.rgb_profile(
        wide_gamut.RgbSpace("ProPhoto linear", wide_gamut.PROPHOTO.primaries, wide_gamut.PROPHOTO.white, 1.0)
    ),
    "gray-1.8.icc": wide_gamut.gray_profile(1.8, "Gray gamma 1.8"),
}
HIGHLIGHT = 1.6  # a float-linear patch brighter than white
WIDE = (1.0, 0.5, -0.15)  # a float-linear colour beyond the profile's primaries


@dataclass(frozen=True)
class Case:
    name: str
    profile: str | None  # a file of PROFILES; None: GIMP's built-in sRGB
    precision: str  # "u16" (GIMP's non-linear 16-bit) or "float-linear"
    scale: int
    gray: bool = False
    linear_curve: bool = False  # the profile's curve is linear: u16 samples are linear light too

    @property
    def sample(self) -> str:
        return "u16" if self.precision == "u16" and not self.linear_curve else "f32"

    @property
    def encoding(self) -> str:
        """The babl encoding the values are compared in: what the plug-in sends for this precision."""
        mark = "'" if self.sample == "u16" else "~"
        component = "u16" if self.sample == "u16" else "float"
        return f"Y{mark} {component}" if self.gray else f"R{mark}G{mark}B{mark} {component}"

    @property
    def stored(self) -> str:
        """The babl encoding the case's samples are written in."""
        if self.precision == "u16":
            return ("Y' u16" if self.gray else "R'G'B' u16") if self.linear_curve else self.encoding
        return "Y float" if self.gray else "RGB float"

    def pixels(self) -> np.ndarray:
        """The layer's samples, written in `encoding` (u16) or as linear light (float)."""
        image, corners = wide_gamut.patch_image()
        if self.gray:
            image = image[:, :, 1:2]
        if self.precision == "u16":
            return np.round(image * 65535).astype(np.uint16)
        image = image.astype(np.float32)
        for patch, value in (("light-grey", HIGHLIGHT), ("orange", WIDE)):
            y, x = corners[patch]
            image[y : y + wide_gamut.PATCH, x : x + wide_gamut.PATCH] = value
        return image

    def job(self) -> dict:
        height, width, channels = self.pixels().shape
        linear = "Y float" if self.gray else "RGB float"
        return {
            "name": self.name,
            "width": width,
            "height": height,
            "channels": channels,
            "precision": "U16_NON_LINEAR" if self.precision == "u16" else "FLOAT_LINEAR",
            "profile": self.profile,
            "input": f"{self.name}.raw",
            "write": self.stored,
            "read": self.encoding,
            "linear": linear,
            "arguments": {"model": MODEL, "scale": f"x{self.scale}"},
        }


CASES = [
    Case(f"{space}-{precision}-x{scale}", f"{space}.icc", precision, scale)
    for space in ("adobe-rgb", "prophoto")
    for precision in ("u16", "float-linear")
    for scale in (1, 2)
] + [
    Case("srgb-u16-x1", None, "u16", 1),
    Case("srgb-u16-x2", None, "u16", 2),
    Case("prophoto-linear-float-linear-x2", "prophoto-linear.icc", "float-linear", 2, linear_curve=True),
    Case("prophoto-linear-u16-x2", "prophoto-linear.icc", "u16", 2, linear_curve=True),
    Case("gray-u16-x2", "gray-1.8.icc", "u16", 2, gray=True),
]


def run_cases(gimp: ChrootGimp, cases: list[Case]) -> dict[str, dict]:
    """Every case in one GIMP process; returns each case's result with its dumps as arrays."""
    inside = gimp.job_dir("colour")
    folder = gimp.host(inside)
    for name, content in PROFILES.items():
        (folder / name).write_bytes(content)
    for case in cases:
        (folder / f"{case.name}.raw").write_bytes(np.ascontiguousarray(case.pixels()).tobytes())
    (folder / "cases.json").write_text(json.dumps([case.job() for case in cases]))
    (folder / BATCH_SCRIPT.name).write_bytes(BATCH_SCRIPT.read_bytes())
    code = f'exec(open("{inside / BATCH_SCRIPT.name}").read())'
    done = subprocess.run(
        gimp.command(code, env={"JOB_DIR": str(inside)}), capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"GIMP exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    results = json.loads((folder / "result.json").read_text())
    for case in cases:
        result = results[case.name]
        channels = 1 if case.gray else 3
        for key in ("before", "after", "before_linear", "after_linear"):
            if key in result:
                entry = result[key]
                dtype = np.uint16 if key in ("before", "after") and case.sample == "u16" else np.float32
                data = np.fromfile(folder / entry["file"], dtype=dtype)
                result[key] = data.reshape(entry["height"], entry["width"], channels)
    return results


def model_on(address: str, raw: np.ndarray, scale: int) -> np.ndarray:
    """What the backend gives on these samples, without GIMP."""
    height, width, channels = raw.shape
    sample = "u16" if raw.dtype == np.uint16 else "f32"
    with EnhancerClient(address) as client:
        info, data = client.enhance(raw.tobytes(), width, height, channels, sample, model=MODEL, scale=scale)
    return np.frombuffer(data, dtype=raw.dtype).reshape(info.height, info.width, info.channels)


def as_unit(values: np.ndarray) -> np.ndarray:
    return values / 65535.0 if values.dtype == np.uint16 else values.astype(np.float64)


@pytest.fixture(scope="module", params=GIMP_VERSIONS, ids=[f"gimp{v}" for v in GIMP_VERSIONS])
def gimp_version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def backend_address(model_store: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("backend") / "serve.log"
    with backend_process(free_address(), log) as address:
        yield address


@pytest.fixture(scope="module")
def results(gimp_version: str, backend_address: str) -> Iterator[dict[str, dict]]:
    """All cases, run once per GIMP release."""
    if os.name != "posix" or os.geteuid() != 0:
        unavailable("running GIMP in a chroot needs root")
    try:
        root = build_chroot(gimp_version)
    except RuntimeError as error:
        unavailable(str(error))
    gimp = ChrootGimp(root, backend_address, ["/usr/bin/false"], gimp_version)
    try:
        yield run_cases(gimp, CASES)
    finally:
        gimp.remove()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_patch_is_what_the_model_gives_on_the_raw_values(
    case: Case, results: dict[str, dict], backend_address: str
) -> None:
    result = results[case.name]
    assert result["status"] == "success", result.get("error")
    assert result["profile_kept"], "the image's profile must still be assigned, unchanged"
    before, after = result["before"], result["after"]
    if case.sample == "u16":  # the layer holds exactly what was written: nothing converted it
        assert np.array_equal(before, case.pixels())
    expected = model_on(backend_address, before, case.scale)
    assert after.shape == expected.shape
    level = 1 / 255
    _, corners = wide_gamut.patch_image()
    got = wide_gamut.patch_means(as_unit(after), corners, case.scale)
    want = wide_gamut.patch_means(as_unit(expected), corners, case.scale)
    for name in got:
        assert np.abs(got[name] - want[name]).max() <= level, (name, got[name] * 65535, want[name] * 65535)
    assert np.abs(as_unit(after) - as_unit(expected)).max() <= 2 * level  # ramps and edges too


@pytest.mark.parametrize("case", [c for c in CASES if c.precision == "float-linear"], ids=lambda c: c.name)
def test_float_linear_values_beyond_the_unit_range_survive(case: Case, results: dict[str, dict]) -> None:
    result = results[case.name]
    assert result["status"] == "success", result.get("error")
    _, corners = wide_gamut.patch_image()
    means = wide_gamut.patch_means(result["after_linear"].astype(np.float64), corners, case.scale)
    np.testing.assert_allclose(means["light-grey"], (HIGHLIGHT,) * 3, rtol=0.02)
    np.testing.assert_allclose(means["orange"], WIDE, atol=0.02)
