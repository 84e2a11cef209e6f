"""Measured model speeds and the suggested model: what clients (the GIMP dialog) estimate times from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.server.app import serve
from image_enhancer.server.model_speed import KEPT_JOBS, ModelSpeeds, fit, suggested_model
from image_enhancer.server.service import SPEEDS_FILE

FAST_MODEL = "realesr-animevideov3"


def test_fit_separates_the_fixed_part_from_the_per_pixel_part() -> None:
    assert fit([]) == (0.0, 0.0)
    # 0.2 s fixed plus 1 s per million pixels, measured at three sizes.
    rate, fixed = fit([(100_000, 0.3), (400_000, 0.6), (1_000_000, 1.2)])
    assert rate == pytest.approx(1_000_000) and fixed == pytest.approx(0.2)
    # Sizes too close together: all of the time counts as per-pixel time (an overestimate, never under).
    assert fit([(100_000, 0.3), (120_000, 0.32)]) == (pytest.approx(220_000 / 0.62), 0.0)
    # Noise that would make bigger jobs faster falls back the same way.
    assert fit([(100_000, 0.9), (1_000_000, 0.5)]) == (pytest.approx(1_100_000 / 1.4), 0.0)


def test_speeds_are_kept_per_model_and_device_across_restarts(tmp_path: Path) -> None:
    record = tmp_path / SPEEDS_FILE
    speeds = ModelSpeeds("CPU A", record)
    assert speeds.speed("m") == (0.0, 0.0)
    for pixels, seconds in [(100_000, 0.3), (400_000, 0.6), (1_000_000, 1.2)]:
        speeds.record("m", pixels, seconds)
    speeds.record("m", 0, 1.0)  # nothing made: says nothing
    assert speeds.speed("m") == (pytest.approx(1_000_000), pytest.approx(0.2))
    assert ModelSpeeds("CPU A", record).speed("m") == speeds.speed("m")  # survives a restart
    assert ModelSpeeds("GPU B", record).speed("m") == (0.0, 0.0)  # another device knows nothing of it
    ModelSpeeds("GPU B", record).record("m", 1_000_000, 0.1)
    assert json.loads(record.read_text()).keys() == {"CPU A", "GPU B"}
    for _ in range(KEPT_JOBS):  # the oldest jobs are forgotten: the speed follows a changed load
        speeds.record("m", 500_000, 5.0)
    assert speeds.speed("m") == (pytest.approx(100_000), 0.0)


def test_an_unreadable_record_is_ignored(tmp_path: Path) -> None:
    record = tmp_path / SPEEDS_FILE
    record.write_text("{not json")
    speeds = ModelSpeeds("CPU A", record)
    assert speeds.speed("m") == (0.0, 0.0)
    speeds.record("m", 100_000, 1.0)  # and replaced by a good one
    assert json.loads(record.read_text()) == {"CPU A": {"m": [[100_000, 1.0]]}}
    record.write_text(json.dumps({"CPU A": {"m": 12.5, "n": [[10, 1.0]]}}))  # an older layout
    assert ModelSpeeds("CPU A", record).speed("m") == (0.0, 0.0)
    assert ModelSpeeds("CPU A", record).speed("n") == (10.0, 0.0)


def test_suggested_model_is_the_best_on_a_gpu_and_the_lightest_pair_on_a_cpu(model_store) -> None:
    assert suggested_model(model_store, on_gpu=True) == model_store.default_model
    on_cpu = suggested_model(model_store, on_gpu=False)
    installed = [m.name for m in model_store.list() if m.installed and model_store.manifest.get(m.name)]
    sizes = {name: model_store.path_of(name).stat().st_size for name in installed}
    paired = {name: size for name, size in sizes.items() if model_store.manifest.get(name).pair}
    assert sizes[on_cpu] == min(paired.values())  # the lightest model that has a strength control
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
            # Two sizes, so the fixed part can be told apart; the second at ×2, which the ×4 network
            # computes at ×4: its work, and what is recorded, is ×4's.
            for width, height, scale in ((32, 24, 4), (96, 72, 2)):
                image = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
                samples = image.tobytes()
                info, _ = client.enhance(samples, width, height, 3, "u8", model=FAST_MODEL, scale=scale)
                assert (info.width, info.height) == (width * scale, height * scale)
            after = {m.name: (m.output_pixels_per_second, m.job_fixed_seconds) for m in client.list_models()}
    finally:
        running.stop()
    rate, fixed = after[FAST_MODEL]
    # Real work on 2 shared cores: between a few thousand and a few hundred million pixels a second.
    assert 1e3 < rate < 5e8 and 0 <= fixed < 60
    assert all(speed == (0.0, 0.0) for name, speed in after.items() if name != FAST_MODEL)
    recorded = json.loads((tmp_path / SPEEDS_FILE).read_text())
    jobs = list(recorded.values())[0][FAST_MODEL]
    assert [pixels for pixels, _ in jobs] == [128 * 96, 384 * 288]
    assert fit([tuple(job) for job in jobs]) == (pytest.approx(rate), pytest.approx(fixed))
