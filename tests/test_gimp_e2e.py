"""The plug-in in the real GIMP 3.0 (Debian trixie chroot) and 3.2 (Debian forky chroot), against a real
backend on the host. Every test runs on both releases unless it needs what only 3.2 has.

The plug-in is installed with the installer into the chroot GIMP's per-user folder and driven
non-interactively (python-fu-eval and Script-Fu batch). Pixels come back raw and are compared with
what the backend returns for the same input and settings through the Python client.

Needs root (chroot). Outside CI the tests skip when that is impossible; under CI=true they fail.
The chroot comes from .ci/gimp-chroot.sh (reused when cached, built otherwise).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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

MODEL = "realesr-animevideov3"  # the compact model: seconds on CPU for these sizes
DTYPES = {"u8": np.uint8, "u16": np.uint16}
ONE_STEP = {"u8": 1, "u16": 257}  # 1/255 in each sample type


@pytest.fixture(scope="session", params=GIMP_VERSIONS, ids=[f"gimp{v}" for v in GIMP_VERSIONS])
def gimp_version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def gimp_root(gimp_version: str) -> Path:
    """The chroot with that GIMP, built or reused by the CI script."""
    if os.name != "posix" or os.geteuid() != 0:
        unavailable("running GIMP in a chroot needs root")
    try:
        return build_chroot(gimp_version)
    except RuntimeError as error:
        unavailable(str(error))


@pytest.fixture(scope="session")
def backend_address(model_store: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real backend on the host's loopback, which the chroot shares (`model_store` installs the
    weights it serves)."""
    log = tmp_path_factory.mktemp("backend") / "serve.log"
    with backend_process(free_address(), log) as address:
        yield address


@pytest.fixture(scope="session")
def gimp(gimp_root: Path, gimp_version: str, backend_address: str) -> Iterator[ChrootGimp]:
    # The backend is already running, so the recorded start command is never needed here.
    instance = ChrootGimp(gimp_root, backend_address, ["/usr/bin/false"], gimp_version)
    yield instance
    instance.remove()


def _direct(address: str, pixels: np.ndarray, scale: float) -> np.ndarray:
    """What the backend returns for the same samples and settings, without GIMP."""
    height, width, channels = pixels.shape
    sample = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}[pixels.dtype]
    with EnhancerClient(address) as client:
        info, data = client.enhance(
            pixels.tobytes(), width, height, channels, sample, model=MODEL, scale=scale
        )
    return np.frombuffer(data, dtype=pixels.dtype).reshape(info.height, info.width, info.channels)


def _max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def _photo(size: int, offset: int = 0) -> np.ndarray:
    photo = np.asarray(Image.open(REPO / "tests" / "data" / "forest_256.png").convert("RGB"))
    return np.ascontiguousarray(photo[offset : offset + size, offset : offset + size])


def test_rgb_u8_photo_at_x4(gimp: ChrootGimp, backend_address: str) -> None:
    photo = _photo(64)
    result = gimp.run_job("rgb-x4", photo, arguments={"model": MODEL, "scale": "x4"})
    assert result["status"] == "success", result.get("error")
    assert result["image"] == [256, 256]
    # New layer above the original; the background was scaled with GIMP's interpolation.
    assert result["layers"] == [
        ["photo (AI x4, realesr-animevideov3)", 256, 256, 0, 0],
        ["photo", 256, 256, 0, 0],
        ["background", 256, 256, 0, 0],
    ]
    enhanced = gimp.read(result, "new_layer", np.uint8, 3)
    assert _max_difference(enhanced, _direct(backend_address, photo, 4.0)) <= ONE_STEP["u8"]


def test_rgba_u16_layer_with_offset_at_x2(gimp: ChrootGimp, backend_address: str) -> None:
    photo = _photo(48, offset=100).astype(np.uint16) * 257
    rng = np.random.default_rng(7)
    photo += rng.integers(0, 200, photo.shape, dtype=np.uint16)  # true 16-bit content, not u8 scaled
    ys, xs = np.mgrid[0:48, 0:48]
    alpha = np.clip(65535 * (1.2 - np.hypot(ys - 24, xs - 24) / 24), 0, 65535).astype(np.uint16)
    layer = np.dstack([photo[:, :40], alpha[:, :40]])  # 48 high, 40 wide: catches swapped sides
    result = gimp.run_job(
        "rgba16-x2", layer, canvas=[64, 56], offset=[8, 4], arguments={"model": MODEL, "scale": "x2"}
    )
    assert result["status"] == "success", result.get("error")
    assert result["image"] == [128, 112]
    assert result["layers"][0] == ["photo (AI x2, realesr-animevideov3)", 80, 96, 16, 8]
    assert result["layers"][1] == ["photo", 80, 96, 16, 8]
    enhanced = gimp.read(result, "new_layer", np.uint16, 4)
    direct = _direct(backend_address, layer, 2.0)
    assert _max_difference(enhanced, direct) <= ONE_STEP["u16"]
    assert enhanced[..., 3].min() < 1000 and enhanced[..., 3].max() > 64500  # alpha kept, not flattened


def test_float_image_keeps_its_precision(gimp: ChrootGimp, backend_address: str) -> None:
    layer = (_photo(40, offset=60) / 255).astype(np.float32)
    result = gimp.run_job("float-x2", layer, arguments={"model": MODEL, "scale": "x2"})
    assert result["status"] == "success", result.get("error")
    assert result["precision"] == "float-non-linear"
    enhanced = gimp.read(result, "new_layer", np.float32, 3)
    assert np.abs(enhanced - _direct(backend_address, layer, 2.0)).max() <= 1 / 255
    assert len(np.unique(enhanced)) > 256 * 3  # not squeezed through 8 bits on the way


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def test_soft_selection_at_x1_blends_through_a_layer_mask(gimp: ChrootGimp, backend_address: str) -> None:
    photo = _photo(96, offset=40)
    result = gimp.run_job(
        "selection-x1",
        photo,
        ellipse=[40, 30, 28, 24],
        feather=8.0,
        arguments={"model": MODEL, "scale": "x1"},
    )
    assert result["status"] == "success", result.get("error")
    assert result["image"] == [96, 96]
    layer = result["new_layer"]
    x, y, w, h = layer["x"], layer["y"], layer["width"], layer["height"]
    # The selection's (feathered) bounds plus some context, well inside the layer.
    assert 0 < x < 40 and 0 < y < 30 and 68 < x + w < 96 and 54 < y + h < 96
    assert (
        gimp.read(result, "original", np.uint8, 3).tobytes() == photo.tobytes()
    )  # the original is untouched

    enhanced = gimp.read(result, "new_layer", np.uint8, 3)
    assert _max_difference(enhanced, _direct(backend_address, photo[y : y + h, x : x + w], 1.0)) <= 1
    mask = gimp.read(result, "mask", np.uint8, 1)
    selection = gimp.read(result, "selection", np.uint8, 1)[y : y + h, x : x + w]
    assert np.array_equal(mask, selection)
    assert np.count_nonzero((mask > 0) & (mask < 255)) > 0  # the selection really is soft

    # What GIMP shows: original and result blended by the mask (GIMP 3 blends in linear light).
    coverage = mask.astype(np.float64) / 255
    under = _srgb_to_linear(photo[y : y + h, x : x + w] / 255)
    over = _srgb_to_linear(enhanced / 255)
    expected = _linear_to_srgb(under * (1 - coverage) + over * coverage) * 255
    visible = gimp.read(result, "visible", np.uint8, 3)
    assert np.abs(visible[y : y + h, x : x + w] - expected).max() <= 2
    outside = np.ones((96, 96), bool)
    outside[y : y + h, x : x + w] = False
    assert np.array_equal(visible[outside], photo[outside])


def test_backend_down_and_not_startable_leaves_the_image_unchanged(
    gimp_root: Path, gimp_version: str
) -> None:
    down = ChrootGimp(gimp_root, free_address(), ["/usr/bin/false"], gimp_version)
    try:
        photo = _photo(32)
        result = down.run_job("down", photo, arguments={"model": MODEL, "scale": "x2"})
        original = down.read(result, "original", np.uint8, 3)
    finally:
        down.remove()
    assert result["status"] == "execution-error"
    assert "could not be started (it exited with code 1)" in result["error"]
    assert "Traceback" not in result["error"]
    assert result["image"] == [32, 32]
    assert [name for name, *_ in result["layers"]] == ["photo", "background"]
    assert result["dirty"] is False
    assert original.tobytes() == photo.tobytes()


def _plugin_pids(plugin: Path) -> list[int]:
    """Host ids of the plug-in's processes (chroot processes are ordinary processes on the host)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"ai_enhance/ai_enhance.py") for part in command):
                pids.append(int(entry.name))
    return pids


class _Probe(threading.Thread):
    """A small job sent straight to the backend; it waits in the queue while another job runs."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.finished_at: float | None = None
        self.size: tuple[int, int] | None = None

    def run(self) -> None:
        with EnhancerClient(self.address) as client:
            small = _photo(32)
            info, _ = client.enhance(small.tobytes(), 32, 32, 3, "u8", model=MODEL, scale=2.0, timeout=240)
        self.size = (info.width, info.height)
        self.finished_at = time.monotonic()


def test_killed_plugin_leaves_the_backend_serving(gimp: ChrootGimp, backend_address: str) -> None:
    big = np.asarray(Image.open(REPO / "tests" / "data" / "forest_256.png").convert("RGB"))
    # 1024 × 1024 at ×4 in 64-pixel tiles: about 10 s on a CPU with native bf16, minutes without. The job
    # must outlast the probing below on the fastest CPU (512² took 2–3 s in bf16 and ended unseen); it is
    # killed as soon as it holds the backend, so a slower CPU does not wait for it.
    big = np.ascontiguousarray(np.tile(big, (4, 4, 1)))
    process, folder = gimp.start_job(
        "killed", big, arguments={"model": MODEL, "scale": "x4", "tile-size": 64}
    )
    try:
        # Wait until the plug-in's job occupies the backend: a small probe job then stays queued.
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and process.poll() is None, "the plug-in's job never ran"
            probe = _Probe(backend_address)
            probe.start()
            probe.join(timeout=3.0)
            if probe.is_alive() and (pids := _plugin_pids(gimp.plugin)):
                break
            probe.join()
        killed_at = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # what GIMP does when the person cancels from the status bar
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] != "success", output
    assert [name for name, *_ in result["layers"]] == ["photo", "background"]

    # The backend noticed the dropped stream: the queued job runs at once, not after the killed one.
    probe.join(timeout=60)
    assert probe.size == (64, 64)
    assert probe.finished_at - killed_at < 15
    with EnhancerClient(backend_address) as client:
        assert client.health() == "SERVING"


def test_script_fu_call_returns_the_new_layer(gimp: ChrootGimp) -> None:
    code = f"""
(let* ((image (car (gimp-image-new 24 16 RGB)))
       (layer (car (gimp-layer-new image "l" 24 16 RGB-IMAGE 100 LAYER-MODE-NORMAL))))
  (gimp-image-insert-layer image layer 0 0)
  (gimp-drawable-fill layer FILL-WHITE)
  (let* ((new (car (python-fu-ai-enhance #:run-mode RUN-NONINTERACTIVE #:image image
                                         #:drawables (vector layer) #:model "{MODEL}" #:scale "x2"))))
    (gimp-message (string-append "new layer " (number->string (car (gimp-drawable-get-width new))) "x"
                                 (number->string (car (gimp-drawable-get-height new)))))))
"""
    done = subprocess.run(gimp.command(code, "plug-in-script-fu-eval"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "new layer 48x32" in done.stdout + done.stderr


def test_layer_group_is_refused_with_a_clear_message(gimp: ChrootGimp) -> None:
    result = gimp.run_job("group", _photo(24), group=True, arguments={"model": MODEL, "scale": "x2"})
    assert result["status"] == "execution-error"
    assert '"group" is a layer group' in result["error"]
    assert result["image"] == [24, 24] and result["dirty"] is False


def test_text_layer_is_enhanced_as_pixels_and_stays_text(gimp: ChrootGimp, backend_address: str) -> None:
    # At x1 nothing else changes, so the text layer must stay plain editable text. (Above x1 GIMP scales
    # it with the image, as Image > Scale Image does, which marks its text as modified.)
    result = gimp.run_job("text", _photo(64), text="AI", arguments={"model": MODEL, "scale": "x1"})
    assert result["status"] == "success", result.get("error")
    assert result["target_is_text"] is True
    before = gimp.read(result, "target_before", np.uint8, 4)
    enhanced = gimp.read(result, "new_layer", np.uint8, 4)
    assert result["new_layer"]["name"] == "AI (AI x1, realesr-animevideov3)"
    assert _max_difference(enhanced, _direct(backend_address, before, 1.0)) <= 1
    if gimp.version != "3.0":  # 3.2: a text layer is Gimp.Rasterizable, and still live text
        assert result["target_rasterized"] is False


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("kind", ["vector", "link"])
def test_rasterizable_layer_is_enhanced_as_rendered_and_stays_live(
    gimp: ChrootGimp, backend_address: str, kind: str
) -> None:
    # GIMP 3.2's vector and link layers are drawn from a description (a path, a file): the plug-in enhances
    # the pixels GIMP rendered and must not rasterize the layer, which GIMP keeps live through the x2.
    if gimp.version == "3.0":
        pytest.skip("vector and link layers are new in GIMP 3.2")
    shape = {"vector": {"vector": [32.0, 24.0, 20.0, 14.0]}, "link": {"link": "linked.png"}}[kind]
    files = {"linked.png": _png(_photo(40, offset=30))} if kind == "link" else None
    result = gimp.run_job(kind, _photo(64), files=files, arguments={"model": MODEL, "scale": "x2"}, **shape)
    assert result["status"] == "success", result.get("error")
    assert result["target_kind"] == {"vector": "VectorLayer", "link": "LinkLayer"}[kind]
    assert result["target_rasterized"] is False
    before = gimp.read(result, "target_before", np.uint8, 4)
    assert before[..., 3].max() == 255  # GIMP really rendered something
    enhanced = gimp.read(result, "new_layer", np.uint8, 4)
    assert enhanced.shape == (before.shape[0] * 2, before.shape[1] * 2, 4)
    assert _max_difference(enhanced, _direct(backend_address, before, 2.0)) <= 1


def test_backend_starts_on_demand_for_a_sandboxed_gimp(gimp_root: Path, gimp_version: str) -> None:
    # The chroot sees no host program, so the plug-in has no command to start (as in Flatpak); the host's
    # `image-enhancer activate` (what the systemd user socket runs) starts the backend on its connection.
    if gimp_version == "3.0":
        pytest.skip("one GIMP release is enough: the plug-in's side of this does not depend on it")
    address = free_address()
    command = [sys.executable, "-m", "image_enhancer", "activate", "--address", address, "--", "--no-warm-up"]
    activator = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    sandboxed = ChrootGimp(gimp_root, address, [], gimp_version)
    try:
        time.sleep(1.0)  # the listener is up long before any backend could be
        photo = _photo(32)
        result = sandboxed.run_job("on-demand", photo, arguments={"model": MODEL, "scale": "x2"})
    finally:
        sandboxed.remove()
        activator.send_signal(signal.SIGTERM)
        activator.wait(timeout=60)
    assert result["status"] == "success", result.get("error")
    assert result["layers"][0] == ["photo (AI x2, realesr-animevideov3)", 64, 64, 0, 0]
    assert activator.returncode == 0
