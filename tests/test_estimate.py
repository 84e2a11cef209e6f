"""The command line says what a job will cost before it starts, and starts with the device's model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from image_enhancer.cli import main
from image_enhancer.estimate import CALIBRATION_MAX_SIDE, SLOW_JOB_ENV, JobShape, NetworkSpeeds, Planner
from image_enhancer.paths import HOME_ENV, user_home
from image_enhancer.request import EnhanceOptions
from image_enhancer.server.model_speed import suggested_model
from tests.conftest import REPO_ROOT

SLOW_MODEL = "realesrgan-x4plus"


def _photo(folder: Path, side: int) -> Path:
    with Image.open(REPO_ROOT / "tests" / "data" / "forest_256.png") as im:
        im.convert("RGB").crop((0, 0, side, side)).save(folder / "photo.png")
    return folder / "photo.png"


@pytest.fixture(scope="module")
def planner(model_store, tmp_path_factory) -> Planner:
    from image_enhancer.engine.enhancer import Enhancer

    enhancer = Enhancer(model_store, device="cpu")
    speeds = NetworkSpeeds(enhancer.compute.describe(), tmp_path_factory.mktemp("speeds") / "speeds.json")
    return Planner(enhancer, speeds, slow_seconds=180.0)


def test_a_request_below_the_models_scale_is_estimated_at_the_models_scale(planner) -> None:
    shape = JobShape(300, 200)
    model = suggested_model(planner.enhancer.store, on_gpu=False)
    at = {s: planner.estimate(model, shape, EnhanceOptions(model=model, scale=s)) for s in (1, 2, 3, 4)}
    assert at[4] and at[4] > 0
    assert at[1] == at[2] == at[3] == at[4]  # the network makes ×4 every time; shrinking is not the work
    bigger = planner.estimate(model, JobShape(600, 400), EnhanceOptions(model=model, scale=2))
    assert bigger > at[2]


def test_the_cli_prints_the_estimate_first_and_names_the_faster_model(model_store, tmp_path: Path) -> None:
    photo = _photo(tmp_path, 96)
    # A home of its own, so the speeds earlier jobs left on this machine do not decide the wording (the
    # models, converted networks and runtime timings are linked in, not made again).
    home = tmp_path / "home"
    home.mkdir()
    for name in ("weights", "openvino", "ncnn", "runtime_choice.json"):
        if (user_home() / name).exists():
            (home / name).symlink_to(user_home() / name)
    env = {**os.environ, SLOW_JOB_ENV: "0.001", HOME_ENV: str(home)}  # every job counts as slow
    run = subprocess.run(
        [sys.executable, "-m", "image_enhancer", "enhance", str(photo), "-o", str(tmp_path / "out.png"),
         "-m", SLOW_MODEL, "-s", "2", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    fast = suggested_model(model_store, on_gpu=False)
    line = next(line for line in run.stderr.splitlines() if "estimated time" in line)
    assert f"with {SLOW_MODEL} on this CPU" in line
    assert f"{fast} would take" in line and f"-m {fast}" in line
    assert run.stderr.index("estimated time") < run.stderr.index("enhancing")  # said before the work
    assert Image.open(tmp_path / "out.png").size == (192, 192)


def test_the_default_model_is_the_devices_suggestion_and_m_wins(model_store, tmp_path: Path, capfd) -> None:
    photo = _photo(tmp_path, 24)
    assert main(["enhance", str(photo), "-o", str(tmp_path / "a.png"), "--device", "cpu"]) == 0
    suggested = suggested_model(model_store, on_gpu=False)
    assert suggested != model_store.default_model  # on a CPU the fast pair, not x4plus
    assert f"with {suggested} on this CPU" in capfd.readouterr().err
    assert main(["enhance", str(photo), "-o", str(tmp_path / "b.png"), "--device", "cpu",
                 "-m", "realesr-animevideov3"]) == 0
    err = capfd.readouterr().err
    assert "with realesr-animevideov3 on this CPU" in err
    assert "would take" not in err  # not slow: no other model named


def test_a_fast_model_is_timed_on_the_jobs_own_window_not_only_a_small_one(planner) -> None:
    """A compact model's 256² window is mostly per-call cost; the estimate for a big photo must come from a
    window like the job's, or it says twice the real time."""
    model = suggested_model(planner.enhancer.store, on_gpu=False)
    shape = JobShape(1500, 2000)
    options = EnhanceOptions(model=model, scale=2)
    scale = planner.enhancer.tile_settings(1500, 2000, options).scale
    planner.calibrate(model, shape, options)
    timed = [pixels for pixels, _ in planner.speeds._jobs[planner.speed_key(shape, options)]]
    # How far it grows depends on this machine's speed; past the first window it always goes.
    assert max(timed) >= (2 * CALIBRATION_MAX_SIDE) ** 2 * scale**2


def test_speeds_measured_with_another_runtime_do_not_make_the_estimate(model_store, tmp_path: Path) -> None:
    """The CPU's runtime is chosen by measurement and can change when it is measured again; what a model
    took on the runtime it ran with before says little about the one it runs with now (x4plus: 1.5×)."""
    from image_enhancer.engine import runtime_choice
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.engine.runtime_choice import RuntimeTable, Timing

    enhancer = Enhancer(model_store, device="cpu")
    enhancer.runtime_table = RuntimeTable(tmp_path / runtime_choice.TABLE_FILE)
    planner = Planner(enhancer, NetworkSpeeds("a CPU", tmp_path / "speeds.json"), slow_seconds=180.0)
    model = "realesr-animevideov3"
    shape = JobShape(96, 128)
    options = EnhanceOptions(model=model, scale=2)
    graph = runtime_choice.graph_key(model_store.get(model), enhancer.threads)

    def measured_winner(runtime: str) -> None:
        others = [Timing(r, "fp32", 9e-6) for r in ("pytorch", "openvino") if r != runtime]
        enhancer.runtime_table.put(graph, [*others, Timing(runtime, "fp32", 1e-6)])

    measured_winner("pytorch")
    before = planner.speed_key(shape, options)
    assert before == f"{model} (pytorch, fp32)"
    for pixels in (100_000, 400_000):  # jobs a thousand times slower than this model is
        planner.speeds.record(before, pixels, pixels / 100.0)
    assert planner.estimate(model, shape, options) > 1000
    measured_winner("openvino")  # measured again: another runtime wins
    after = planner.speed_key(shape, options)
    assert after == f"{model} (openvino, fp32)"
    seconds = planner.estimate(model, shape, options)
    assert planner.speeds.speed(after)[0] > 0  # timed again, with the job's own runtime
    assert seconds is not None and seconds < 60, seconds
