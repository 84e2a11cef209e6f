"""Measured model speeds and the suggested model: what clients (the GIMP dialog) estimate times from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.server.app import serve
from image_enhancer.server.model_speed import MIN_MEASURED_PIXELS, ModelSpeeds, suggested_model

FAST_MODEL = "realesr-animevideov3"


def test_speeds_are_measured_per_model_and_kept_per_device(tmp_path: Path) -> None:
    record = tmp_path / "throughput.json"
    speeds = ModelSpeeds("CPU A", record)
    assert speeds.rate("m") == 0.0
    speeds.record("m", 100_000, 2.0)
    assert speeds.rate("m") == pytest.approx(50_000)
    speeds.record("m", 100_000, 1.0)  # the newest counts half: follows a change without jumping
    assert speeds.rate("m") == pytest.approx(75_000)
    speeds.record("m", MIN_MEASURED_PIXELS - 1, 0.001)  # too small to say anything about the model
    assert speeds.rate("m") == pytest.approx(75_000)

    assert ModelSpeeds("CPU A", record).rate("m") == pytest.approx(75_000)  # survives a restart
    assert ModelSpeeds("GPU B", record).rate("m") == 0.0  # another device knows nothing of it
    ModelSpeeds("GPU B", record).record("m", 1_000_000, 0.1)
    assert json.loads(record.read_text()).keys() == {"CPU A", "GPU B"}


def test_an_unreadable_record_is_ignored(tmp_path: Path) -> None:
    record = tmp_path / "throughput.json"
    record.write_text("{not json")
    speeds = ModelSpeeds("CPU A", record)
    assert speeds.rate("m") == 0.0
    speeds.record("m", 100_000, 1.0)  # and replaced by a good one
    assert json.loads(record.read_text()) == {"CPU A": {"m": 100_000.0}}


def test_suggested_model_is_the_best_on_a_gpu_and_the_lightest_installed_on_a_cpu(model_store) -> None:
    assert suggested_model(model_store, on_gpu=True) == model_store.default_model
    on_cpu = suggested_model(model_store, on_gpu=False)
    installed = [m.name for m in model_store.list() if m.installed and model_store.manifest.get(m.name)]
    sizes = {name: model_store.path_of(name).stat().st_size for name in installed}
    assert sizes[on_cpu] == min(sizes.values())
    assert sizes[on_cpu] < sizes[model_store.default_model]


def test_server_reports_the_speed_a_job_measured(
    make_enhancer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGE_ENHANCER_HOME", str(tmp_path))  # a fresh record, nothing measured yet
    running = serve(make_enhancer(), "127.0.0.1:0", warm_up=[])
    try:
        with EnhancerClient(running.address) as client:
            client.wait_until_serving(timeout=60)
            assert client.describe().suggested_model == suggested_model(make_enhancer().store, on_gpu=False)
            before = {m.name: m.output_pixels_per_second for m in client.list_models()}
            assert before[FAST_MODEL] == 0.0
            image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            info, _ = client.enhance(image.tobytes(), 64, 48, 3, "u8", model=FAST_MODEL, scale=4.0)
            after = {m.name: m.output_pixels_per_second for m in client.list_models()}
    finally:
        running.stop()
    assert (info.width, info.height) == (256, 192)
    # Real work on 2 shared cores: between a few thousand and a few hundred million pixels a second.
    assert 1e3 < after[FAST_MODEL] < 5e8
    assert all(rate == 0.0 for name, rate in after.items() if name != FAST_MODEL)
    recorded = json.loads((tmp_path / "throughput.json").read_text())
    assert list(recorded.values())[0][FAST_MODEL] == pytest.approx(after[FAST_MODEL])
