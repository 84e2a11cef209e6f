"""The dialog's preview (gimp_plugin/ai_enhance/preview.py) against a real backend, without GIMP: it runs,
it shows the same pixels as the real run in the same crop (16-bit, alpha), and a newer request cancels
the running job so that at most one preview job is ever with the backend. The real-GIMP side (reading
the crop, showing it) is exercised by tests/gimp/dialog_screenshot.py."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from image_enhancer.client.lite import LiteClient
from image_enhancer.request import EnhanceOptions as Options
from image_enhancer.wire import ImageInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gimp_plugin" / "ai_enhance"))
import preview  # noqa: E402
from newest import NewestOnly  # noqa: E402

FAST_MODEL = "realesr-animevideov3"
SLOW_MODEL = "realesrgan-x4plus-anime"  # RRDBNet: minutes for the slow job below on 2 CPU cores


def _rgba16(width: int, height: int) -> np.ndarray:
    photo = np.asarray(Image.open(REPO / "tests" / "data" / "forest_256.png").convert("RGB"))[:height, :width]
    colour = photo.astype(np.uint16) * 257 + np.random.default_rng(3).integers(0, 200, photo.shape, np.uint16)
    ys, xs = np.mgrid[0:height, 0:width]
    alpha = np.clip(65535 * (1.3 - np.hypot(ys - height / 2, xs - width / 2) / (height / 2)), 0, 65535)
    return np.ascontiguousarray(np.dstack([colour, alpha.astype(np.uint16)]))


def _job(layer: np.ndarray, crop: preview.Crop, options: Options) -> preview.PreviewJob:
    height, width, channels = layer.shape
    info, data = preview.cut(layer.tobytes(), ImageInfo(width, height, channels, "u16"), crop.read)
    return preview.PreviewJob(data, info, options, crop)


def _array(info: ImageInfo, data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint16).reshape(info.height, info.width, info.channels).astype(np.int64)


def test_crop_is_centred_and_clamped_into_the_layer() -> None:
    crop = preview.plan_crop(1000, 800, 500, 400, 4.0)
    assert crop.shown_input == preview.Rect(452, 352, 96, 96)
    assert crop.read == preview.Rect(452 - preview.CONTEXT, 352 - preview.CONTEXT, 144, 144)
    assert crop.shown_output == preview.Rect(4 * preview.CONTEXT, 4 * preview.CONTEXT, 384, 384)
    corner = preview.plan_crop(1000, 800, 990, 2, 2.0)
    assert corner.shown_input == preview.Rect(808, 0, 192, 192) and corner.read.y == 0
    small = preview.plan_crop(40, 30, 20, 15, 1.0)  # a layer smaller than the preview: all of it
    assert small.read == small.shown_input == preview.Rect(0, 0, 40, 30)


def test_preview_shows_the_same_pixels_as_the_real_run(grpc_server) -> None:
    layer = _rgba16(96, 80)
    options = Options(model=FAST_MODEL, scale=4.0)
    crop = preview.plan_crop(96, 80, 60, 20, 4.0, zoom=2)  # off-centre: clamped at the top, context around
    shown = preview.run_preview(grpc_server.address, _job(layer, crop, options), lambda: False)
    assert (shown.image.width, shown.image.height, shown.image.channels) == (192, 192, 4)
    assert shown.image.sample_type == "u16"

    with LiteClient(grpc_server.address) as client:
        whole_info, whole = client.enhance(layer.tobytes(), 96, 80, 4, "u16", options)
    x, y = crop.shown_input.x * 4, crop.shown_input.y * 4
    real = _array(whole_info, whole)[y : y + 192, x : x + 192]
    got = _array(shown.image, shown.data)
    # The context makes even the crop's edges match. Colour under (partly) transparent pixels may differ,
    # as the backend fills fully transparent areas from what surrounds them: compare what shows.
    assert np.abs(got[..., 3] - real[..., 3]).max() <= 257
    shows = real[..., 3:] / 65535
    assert (np.abs(got[..., :3] - real[..., :3]) * shows).max() <= 2 * 257
    # Where it is opaque, within one 8-bit level: the runtime may pick kernels by the window's shape
    # (ncnn does), which rounds the crop and the whole apart by a 16-bit step or two.
    opaque = real[..., 3] == 65535
    assert np.abs(got[opaque].astype(np.int32) - real[opaque]).max() <= 257
    assert len(np.unique(got[..., :3])) > 4096  # 16-bit samples, not 8-bit ones
    assert got[..., 3].min() < 20000 and got[..., 3].max() > 60000  # the alpha went through the model


def test_a_newer_preview_cancels_the_running_one(grpc_server) -> None:
    layer = _rgba16(256, 256)
    # The slow job would take minutes on two cores; small tiles let the backend stop it between them.
    slow = _job(
        layer, preview.plan_crop(256, 256, 128, 128, 1.0), Options(model=SLOW_MODEL, scale=1.0, tile=32)
    )
    fast = _job(layer, preview.plan_crop(256, 256, 128, 128, 2.0), Options(model=FAST_MODEL, scale=2.0))
    delivered: list[object] = []
    running, most_running, lock = [0], [0], threading.Lock()
    started = threading.Event()

    def run(job: preview.PreviewJob, cancelled) -> preview.PreviewResult:  # noqa: ANN001
        def watched() -> bool:
            started.set()  # the backend sent progress: the job is there
            return cancelled()

        with lock:
            running[0] += 1
            most_running[0] = max(most_running[0], running[0])
        try:
            return preview.run_preview(grpc_server.address, job, watched)
        finally:
            with lock:
                running[0] -= 1

    runner = NewestOnly(run, delivered.append, "The preview")
    try:
        runner.request(slow)
        assert started.wait(60), "the slow preview never reached the backend"
        time.sleep(3)  # the model is loaded and tiles are running: a cancel must stop work in progress
        superseded_at = time.monotonic()
        runner.request(fast)
        deadline = superseded_at + 150
        while not delivered and time.monotonic() < deadline:
            time.sleep(0.1)
        finished_in = time.monotonic() - superseded_at
    finally:
        runner.stop()
    assert [result.job for result in delivered] == [fast]  # the slow one never arrives
    assert finished_in < 90, f"the fast preview waited {finished_in:.0f} s: the slow job kept running"
    assert most_running[0] == 1
    with LiteClient(grpc_server.address) as client:
        assert client.health() == "SERVING"
