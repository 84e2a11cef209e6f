"""The GIMP plug-in installer: finding GIMP profiles, vendoring a self-contained client, check, uninstall."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import grpclib
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gimp_plugin"))
import install_gimp  # noqa: E402

# Imports the vendored client the way the plug-in does, on an interpreter that cannot see the venv's
# site-packages (-S), and reports which implementations it got.
_VENDOR_PROBE = """
import os, sys
plugin = sys.argv[1]
os.environ["MULTIDICT_NO_EXTENSIONS"] = "1"
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
sys.path[:0] = [plugin, os.path.join(plugin, "vendor")]
import transport
from google.protobuf.internal import api_implementation
import multidict
from image_enhancer.client.lite import LiteClient
print(api_implementation.Type(), multidict.istr.__module__, LiteClient.__module__, transport.__file__)
"""


def _profile(root: Path, *versions: str) -> None:
    for version in versions:
        (root / version).mkdir(parents=True)


@pytest.mark.parametrize(
    ("platform", "layout", "expected"),
    [
        ("linux", {".config/GIMP": ["3.0", "2.10", "sessions"]}, [".config/GIMP/3.0"]),
        (
            "linux",
            {".config/GIMP": ["3.0", "3.2"], ".var/app/org.gimp.GIMP/config/GIMP": ["3.0"]},
            [".config/GIMP/3.0", ".config/GIMP/3.2", ".var/app/org.gimp.GIMP/config/GIMP/3.0"],
        ),
        ("darwin", {"Library/Application Support/GIMP": ["3.2"]}, ["Library/Application Support/GIMP/3.2"]),
        ("win32", {"AppData/Roaming/GIMP": ["3.0"]}, ["AppData/Roaming/GIMP/3.0"]),
        ("linux", {}, []),
    ],
)
def test_find_plugin_dirs_per_platform(
    tmp_path: Path, platform: str, layout: dict, expected: list[str]
) -> None:
    for root, versions in layout.items():
        _profile(tmp_path / root, *versions)
    env = {"APPDATA": str(tmp_path / "AppData" / "Roaming")} if platform == "win32" else {}
    found = install_gimp.find_plugin_dirs(platform=platform, env=env, home=tmp_path)
    assert found == [tmp_path / e / "plug-ins" for e in expected]


def test_find_plugin_dirs_honours_xdg_and_gimp3_directory(tmp_path: Path) -> None:
    _profile(tmp_path / "xdg" / "GIMP", "3.0")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert install_gimp.find_plugin_dirs("linux", env, tmp_path) == [tmp_path / "xdg/GIMP/3.0/plug-ins"]
    env["GIMP3_DIRECTORY"] = str(tmp_path / "custom")
    assert install_gimp.find_plugin_dirs("linux", env, tmp_path) == [tmp_path / "custom/plug-ins"]


@pytest.fixture(scope="module", params=["site-packages", "wheels"])
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An install vendored from this Python's packages, and one from pure wheels that pip downloads."""
    plugin_dir = tmp_path_factory.mktemp("plug-ins")
    wheels = None
    if request.param == "wheels":
        wheels = tmp_path_factory.mktemp("wheels")
        install_gimp.download_wheels(wheels)
    install_gimp.install(plugin_dir, ["/bin/true", "serve"], "127.0.0.1:50999", wheels)
    return plugin_dir


def test_install_writes_plugin_config_and_vendor(installed: Path) -> None:
    target = installed / "ai_enhance"
    entry = target / "ai_enhance.py"
    assert os.access(entry, os.X_OK)
    for module in ("transport.py", "layer_io.py", "placement.py", "settings.py", "dialog.py"):
        assert (target / module).is_file()
    config = json.loads((target / "ai_enhance.json").read_text())
    assert config["address"] == "127.0.0.1:50999"
    assert config["backend_command"] == ["/bin/true", "serve"]
    vendor = target / "vendor"
    for top in (
        "grpclib",
        "h2",
        "hpack",
        "hyperframe",
        "multidict",
        "google/protobuf",
        "image_enhancer/client",
    ):
        assert (vendor / top / "__init__.py").is_file(), top
    compiled = [p for p in vendor.rglob("*") if p.suffix in (".so", ".pyd", ".dll", ".dylib")]
    assert compiled == []
    assert not (vendor / "image_enhancer" / "engine").exists()  # the plug-in never gets torch code


def test_vendored_client_imports_as_pure_python_without_site_packages(installed: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-S", "-c", _VENDOR_PROBE, str(installed / "ai_enhance")],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert probe.returncode == 0, probe.stderr
    protobuf_impl, multidict_module, lite_module, transport_file = probe.stdout.split()
    assert protobuf_impl == "python"
    assert multidict_module == "multidict._multidict_py"
    assert lite_module == "image_enhancer.client.lite"
    assert Path(transport_file).parent == installed / "ai_enhance"


def test_check_reports_a_good_install_then_damage(installed: Path, tmp_path: Path) -> None:
    report = install_gimp.check(installed)
    assert report.installed and report.ok, str(report)
    assert report.address == "127.0.0.1:50999" and not report.backend_listening

    damaged = tmp_path / "plug-ins"
    install_gimp.install(damaged, ["/no/such/image-enhancer", "serve"], "127.0.0.1:50999")
    (damaged / "ai_enhance" / "vendor" / "h2" / "__init__.py").unlink()
    (damaged / "ai_enhance" / "ai_enhance.py").chmod(0o644)
    problems = "\n".join(install_gimp.check(damaged).problems)
    assert "vendor/h2/__init__.py is missing" in problems
    assert "not executable" in problems
    assert "/no/such/image-enhancer does not exist" in problems


def test_reinstall_replaces_and_uninstall_removes(tmp_path: Path) -> None:
    install_gimp.install(tmp_path, ["/bin/true"], "127.0.0.1:1")
    stale = tmp_path / "ai_enhance" / "stale.py"
    stale.write_text("")
    install_gimp.install(tmp_path, ["/bin/true"], "127.0.0.1:2")
    assert not stale.exists()
    assert json.loads((tmp_path / "ai_enhance" / "ai_enhance.json").read_text())["address"] == "127.0.0.1:2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ai_enhance"]  # no staging folder left
    assert install_gimp.uninstall(tmp_path) is True
    assert not (tmp_path / "ai_enhance").exists()
    assert install_gimp.uninstall(tmp_path) is False


def test_install_from_a_wheels_folder_without_pure_wheels_fails_clearly(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with pytest.raises(install_gimp.InstallError, match="no pure-Python .* wheel for: grpclib, h2"):
        install_gimp.install(tmp_path / "plug-ins", ["/bin/true"], "127.0.0.1:1", wheels)
    assert not (tmp_path / "plug-ins" / "ai_enhance").exists()


def test_command_line_install_check_uninstall(tmp_path: Path) -> None:
    # -S: the installer's own Python sees no site-packages (like a system Python running install.py);
    # the packages must come from the backend's Python, named by --backend-command.
    script = [
        sys.executable,
        "-S",
        str(REPO / "gimp_plugin" / "install_gimp.py"),
        "--plugin-dir",
        str(tmp_path),
    ]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*script, *args], capture_output=True, text=True)

    assert run("--check").returncode == 1
    # A backend command that exits at once: --check starts it as GIMP would and reports how it ended.
    backend = json.dumps([sys.executable, "-c", "raise SystemExit(3)"])
    done = run("--address", "127.0.0.1:50998", "--backend-command", backend)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "ai_enhance" / "ai_enhance.json").read_text())
    assert set(config["vendored"].values()) == {"site-packages"}
    checked = run("--check")
    assert checked.returncode == 1, checked.stdout
    assert "backend address: 127.0.0.1:50998" in checked.stdout
    assert "could not be started (it exited with code 3)" in checked.stdout
    assert "removed" in run("--uninstall").stdout
    assert not (tmp_path / "ai_enhance").exists()


def test_packages_come_from_the_backends_python(tmp_path: Path) -> None:
    venv_script = Path(sys.executable).with_name("image-enhancer")
    assert install_gimp.python_of([sys.executable, "-m", "image_enhancer", "serve"]) == sys.executable
    assert install_gimp.python_of([str(venv_script), "serve"]) == str(venv_script.with_name("python"))
    assert install_gimp.python_of(["/bin/true"]) == sys.executable  # not a Python: the installer's own
    source = install_gimp.source_python([sys.executable, "-m", "image_enhancer", "serve"])
    assert source.versions["protobuf"] == metadata.version("protobuf")
    assert any(Path(entry) / "grpclib" == Path(grpclib.__file__).parent for entry in source.path)


def _pids_with(argument: str) -> list[int]:
    """Processes whose command line has `argument` (to stop a backend started detached, as GIMP leaves it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the started backend through /proc")
def test_check_starts_the_recorded_backend_as_gimp_would(model_store: object, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [sys.executable, "-m", "image_enhancer", "serve", "--address", address, "--no-warm-up"]
    install_gimp.install(tmp_path, command, address)
    try:
        report = install_gimp.check(tmp_path, try_start=True)
    finally:
        for pid in _pids_with(address):
            os.kill(pid, signal.SIGTERM)
    assert report.ok, str(report)
    assert report.backend_start.startswith(f"serving at {address} on ")
