"""The plug-in's transport: config, starting the backend on demand, errors; run on the host's Python.

These modules have no GIMP in them on purpose, so they are tested here directly; the real-GIMP tests
(test_gimp_e2e.py) cover the same paths through GIMP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from image_enhancer.client.core import EnhancerError
from image_enhancer.paths import weights_dir
from image_enhancer.request import EnhanceOptions as Options
from image_enhancer.wire import ImageInfo, ModelInfo

PLUGIN = Path(__file__).resolve().parents[1] / "gimp_plugin" / "ai_enhance"
WEIGHTS = weights_dir()  # the real one, looked up before the tests point IMAGE_ENHANCER_HOME elsewhere


def _load(name: str):  # noqa: ANN202 - a module
    """Import a plug-in module by path under a private name (plain names such as `settings` are generic)."""
    spec = importlib.util.spec_from_file_location(f"ai_enhance_{name}", PLUGIN / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(PLUGIN))  # for the plug-in modules' own imports of each other
transport = _load("transport")
settings = _load("settings")
geometry = _load("geometry")


def _free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _running(pid: int) -> bool:
    """Alive and not a zombie (the backend started here is this process's child, never waited for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _ignore(_text: str, _fraction: float | None) -> None:
    pass


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_ENHANCER_HOME", str(tmp_path / "home"))  # backend logs go here


@pytest.mark.parametrize(
    ("choice", "custom", "expected"),
    [("x1", 3.0, 1.0), ("x2", 3.0, 2.0), ("x4", 3.0, 4.0), ("custom", 2.5, 2.5)],
)
def test_scale_choices(choice: str, custom: float, expected: float) -> None:
    assert settings.Settings(scale_choice=choice, custom_scale=custom).scale == expected


@pytest.mark.parametrize(("choice", "custom"), [("x3", 3.0), ("custom", 0.5), ("custom", 9.0)])
def test_bad_scales_are_refused_with_a_message(choice: str, custom: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        _ = settings.Settings(scale_choice=choice, custom_scale=custom).scale


def test_config_defaults_and_damage(tmp_path: Path) -> None:
    assert transport.load_config(tmp_path) == transport.BackendConfig()
    (tmp_path / transport.CONFIG_NAME).write_text(
        json.dumps({"address": "127.0.0.1:7", "backend_command": ["a"]})
    )
    assert transport.load_config(tmp_path) == transport.BackendConfig("127.0.0.1:7", ("a",))
    (tmp_path / transport.CONFIG_NAME).write_text("{not json")
    with pytest.raises(transport.BackendError, match="damaged.*installer"):
        transport.load_config(tmp_path)


def test_nothing_running_and_no_command_says_how_to_start_one() -> None:
    address = _free_address()
    with pytest.raises(transport.BackendError) as caught:
        transport.connect(address, transport.BackendConfig(address, ()), _ignore)
    assert f"image-enhancer serve --address {address}" in str(caught.value)


def test_a_custom_address_never_starts_the_recorded_command(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    config = transport.BackendConfig(_free_address(), (sys.executable, "-c", f"open({str(marker)!r}, 'w')"))
    with pytest.raises(transport.BackendError, match="no command to start one there"):
        transport.connect(_free_address(), config, _ignore)
    assert not marker.exists()


def test_missing_backend_program_is_explained() -> None:
    address = _free_address()
    with pytest.raises(transport.BackendError, match="starting it failed.*installer again"):
        transport.connect(
            address, transport.BackendConfig(address, ("/no/such/image-enhancer", "serve")), _ignore
        )


def test_backend_that_exits_is_reported_with_its_log() -> None:
    address = _free_address()
    crash = (sys.executable, "-c", "import sys; print('weights folder is empty'); sys.exit(3)")
    stages = []
    with pytest.raises(transport.BackendError) as caught:
        config = transport.BackendConfig(address, crash, 30.0)
        transport.connect(address, config, lambda text, _fraction: stages.append(text))
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "weights folder is empty" in message
    assert str(transport.log_path()) in message
    assert stages[0].startswith("Starting the AI backend")


def test_backend_that_never_answers_times_out() -> None:
    address = _free_address()
    idle = (sys.executable, "-c", "import time; time.sleep(30)")
    with pytest.raises(transport.BackendError, match="did not become ready within 2 s"):
        transport.connect(address, transport.BackendConfig(address, idle, 2.0), _ignore)


MODELS = [
    ModelInfo("fast", "SRVGGNetCompact", 4, True, False, is_default=True),
    ModelInfo("big", "RRDBNet", 4, False, True, installable=True),
    ModelInfo("pair", "RRDBNet", 4, True, True),
]


def test_find_model() -> None:
    assert transport.find_model(MODELS, "").name == "fast"
    assert transport.find_model(MODELS, "pair").has_strength
    with pytest.raises(transport.BackendError, match='"big" is known but not installed'):
        transport.find_model(MODELS, "big")
    with pytest.raises(transport.BackendError, match='no "nope".*Installed models: fast, pair'):
        transport.find_model(MODELS, "nope")


def test_dialog_offers_installed_models_and_opens_on_the_best_choice() -> None:
    assert [m.name for m in settings.installed_models(MODELS)] == ["fast", "pair"]
    assert settings.initial_model(MODELS, "pair", "fast") == "pair"  # the person's last choice
    assert settings.initial_model(MODELS, "", "pair") == "pair"  # else what suits the device
    assert settings.initial_model(MODELS, "big", "") == "fast"  # never one that is not installed
    assert settings.initial_model([MODELS[1]], "", "") == ""
    assert settings.more_models_hint(MODELS) == "1 more model can be installed: Get more models…"
    assert settings.more_models_hint(settings.installed_models(MODELS)) == ""
    described = ModelInfo("m", "RRDBNet", 4, True, False, description="Photo — best detail")
    assert settings.model_label(described) == "Photo — best detail"
    assert settings.model_label(MODELS[0]) == "fast"


@pytest.mark.parametrize(
    ("jobs", "rate", "fixed", "device", "expected"),
    [
        ([1_000_000], 25_000.0, 0.0, "cpu", "Time: about 40 s on this CPU."),
        (
            [1_000_000, 1_000_000],
            50_000.0,
            10.0,
            "cpu",
            "Time: about 60 s on this CPU.",
        ),  # fixed part per layer
        ([1_000_000], 500_000.0, 0.5, "cuda:0", "Time: a few seconds on this GPU."),
        ([16_000_000], 50_000.0, 0.0, "cpu", "Time: about 5 min on this CPU."),
        ([1_000], 0.0, 0.0, "mps", "Time: not yet measured for this model on this Mac's GPU"),
    ],
)
def test_time_estimate_from_the_measured_speed(
    jobs: list[int], rate: float, fixed: float, device: str, expected: str
) -> None:
    model = ModelInfo("m", "RRDBNet", 4, True, False, output_pixels_per_second=rate, job_fixed_seconds=fixed)
    assert settings.estimate_text(jobs, model, device).startswith(expected)


def test_result_text_says_the_size_and_that_the_canvas_grows() -> None:
    grown = settings.result_text((320, 201), 4.0, False)
    assert "1280 × 804 px" in grown and "canvas and every layer grow ×4" in grown
    assert "2.5" in settings.result_text((10, 10), 2.5, False)
    assert "only the selection" in settings.result_text((320, 200), 1.0, True)
    assert "grow" not in settings.result_text((320, 200), 1.0, False)
    assert geometry.scaled_size(3, 3, 1.5) == (4, 4)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not_found", "Model problem: x"),
        ("too_large", "too large"),
        ("queue_full", "busy"),
        ("invalid", "refused the request: x"),
        ("unavailable", "connection to the AI backend was lost"),
        ("unsupported", "older than this plug-in: x"),
        ("internal", "failed in the backend: x"),
    ],
)
def test_errors_are_explained_by_kind(kind: str, expected: str) -> None:
    assert expected in transport.explain(EnhancerError(kind, "x"))


def test_starts_the_recorded_backend_once_then_reuses_it(model_store: object, tmp_path: Path) -> None:
    """The real backend, started on demand with the recorded command, used, and found again later
    (`model_store` installs the weights it serves)."""
    address = _free_address()
    home = transport.log_path().parents[1]
    home.mkdir(parents=True)
    (home / "weights").symlink_to(WEIGHTS)  # the backend's private home sees the installed models
    pid_file = tmp_path / "pid"
    serve = f'echo $$ > {pid_file}; exec "$0" -m image_enhancer serve --address {address} --no-warm-up'
    command = ("/bin/sh", "-c", serve + " --max-input-megapixels 0.01", sys.executable)
    config = transport.BackendConfig(address, command, 120.0)
    stages: list[str] = []
    try:
        with transport.connect(address, config, lambda text, _fraction: stages.append(text)) as client:
            assert stages[0].startswith("Starting the AI backend")
            model = transport.find_model(transport.list_models(client), "realesr-animevideov3")
            transport.check_size(client, 100, 100, "fits")
            with pytest.raises(transport.BackendError, match='"big" is too large.*at most 10,000'):
                transport.check_size(client, 101, 100, "big")
            stages.clear()
            image = ImageInfo(16, 12, 3, "u8")
            got, data = transport.enhance(
                client,
                bytes(16 * 12 * 3),
                image,
                Options(model=model.name, scale=2.0),
                lambda t, f: stages.append(t),
            )
            assert (got.width, got.height, len(data)) == (32, 24, 32 * 24 * 3)
            assert any(stage.startswith("Enhancing ") and " % " in stage for stage in stages)
        pid = int(pid_file.read_text())
        stages.clear()
        with transport.connect(address, config, lambda text, _fraction: stages.append(text)) as again:
            assert again.health() == "SERVING"
        assert stages == []  # found running: nothing was started
        assert int(pid_file.read_text()) == pid
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)


def test_the_estimate_counts_the_work_at_the_models_own_scale():
    """×3 and ×4 from a ×4 model take the same time (the network computes ×4 either way)."""
    model = ModelInfo("m", "RRDBNet", 4, True, False, output_pixels_per_second=1e5, job_fixed_seconds=0.0)
    jobs = settings.network_jobs([(1024, 768)], model)
    assert jobs == [1024 * 768 * 16]
    assert settings.estimate_text(jobs, model, "cpu") == "Time: about 2 min on this CPU."
