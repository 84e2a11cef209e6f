#!/usr/bin/env python3
"""Install the AI Enhance plug-in into GIMP 3.x, with its client stack vendored beside it.

Standard library only, so the top-level installer can import it and it can run on its own:

    python gimp_plugin/install_gimp.py                       # every GIMP 3.x profile found
    python gimp_plugin/install_gimp.py --plugin-dir DIR      # one plug-ins folder
    python gimp_plugin/install_gimp.py --check | --uninstall

GIMP runs the plug-in with its own Python (the system one on Linux, the GNOME runtime's in Flatpak,
a bundled one on Windows and macOS), into which nothing can be pip-installed and which may be unable
to load compiled wheels. So the client's dependencies are copied as pure-Python packages into
`ai_enhance/vendor/`, which the plug-in puts first on its import path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType

PLUGIN_NAME = "ai_enhance"
CONFIG_NAME = "ai_enhance.json"  # read by the plug-in's transport.py
SOURCE_DIR = Path(__file__).resolve().parent / PLUGIN_NAME
# Distribution name -> the top-level import folders it provides. All ship pure-Python code; multidict
# and protobuf also ship compiled speed-ups, which the plug-in switches off.
VENDORED = {
    "grpclib": ("grpclib",),
    "h2": ("h2",),
    "hpack": ("hpack",),
    "hyperframe": ("hyperframe",),
    "multidict": ("multidict",),
    "protobuf": ("google/protobuf",),
}
# Our own modules the plug-in needs: the package marker, user paths, the request, the wire, the lite client,
# the bounded JSON reader (its settings file).
OWN_FILES = (
    "image_enhancer/__init__.py",
    "image_enhancer/address.py",
    "image_enhancer/request.py",
    "image_enhancer/wire.py",
    "image_enhancer/paths.py",
    "image_enhancer/safe_json.py",
    "image_enhancer/v1/__init__.py",
    "image_enhancer/v1/enhancer_pb2.py",
    "image_enhancer/client/__init__.py",
    "image_enhancer/client/core.py",
    "image_enhancer/client/lite.py",
)
_COMPILED = (".so", ".pyd", ".dylib", ".dll", ".pyc")
# What pip fetches for a distribution the backend's Python does not have (protobuf must read our gencode).
_FALLBACK_REQUIREMENTS = {"protobuf": "protobuf>=7.35.1,<8"}
_VERSION_DIR = re.compile(r"^3\.\d+$")


class InstallError(Exception):
    """Installation cannot go on; the message says why and what to do."""


def _own_source_root() -> Path:
    """The folder that contains our `image_enhancer` package (source checkout or installed)."""
    checkout = Path(__file__).resolve().parents[1] / "backend"
    if (checkout / "image_enhancer" / "__init__.py").exists():
        return checkout
    spec = importlib.util.find_spec("image_enhancer")
    if spec is None or not spec.origin:
        raise InstallError("The image_enhancer package was not found; run this from the project's checkout.")
    return Path(spec.origin).resolve().parents[1]


def _address_rules() -> ModuleType:
    """The backend's address module (standard library only), loaded by path: the default address and
    the address parser have one home, which this installer shares without importing the package."""
    path = _own_source_root() / "image_enhancer" / "address.py"
    spec = importlib.util.spec_from_file_location("image_enhancer_address", path)
    if spec is None or spec.loader is None:
        raise InstallError(f"{path} is missing from the image_enhancer package.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


ADDRESSES = _address_rules()
DEFAULT_ADDRESS: str = ADDRESSES.DEFAULT_ADDRESS


def gimp_config_roots(
    platform: str | None = None, env: Mapping[str, str] | None = None, home: Path | None = None
) -> list[Path]:
    """The folders that hold GIMP's per-version profiles (`<root>/3.0`, `<root>/3.2`, ...)."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = home or Path.home()
    if platform == "win32":
        appdata = env.get("APPDATA")
        return [Path(appdata) / "GIMP" if appdata else home / "AppData" / "Roaming" / "GIMP"]
    if platform == "darwin":
        return [home / "Library" / "Application Support" / "GIMP"]
    xdg = env.get("XDG_CONFIG_HOME")
    return [
        (Path(xdg) if xdg else home / ".config") / "GIMP",
        home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP",  # Flatpak
        home / "snap" / "gimp" / "current" / ".config" / "GIMP",  # Snap
    ]


def find_plugin_dirs(
    platform: str | None = None, env: Mapping[str, str] | None = None, home: Path | None = None
) -> list[Path]:
    """The per-user plug-in folders of every GIMP 3.x profile on this machine (GIMP creates the profile
    on its first start). `GIMP3_DIRECTORY`, when set, is the one profile GIMP uses."""
    env = os.environ if env is None else env
    override = env.get("GIMP3_DIRECTORY")
    if override:
        return [Path(override) / "plug-ins"]
    found = []
    for root in gimp_config_roots(platform, env, home):
        if root.is_dir():
            versions = sorted(p for p in root.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name))
            found.extend(version / "plug-ins" for version in versions)
    return found


def default_backend_command(address: str) -> list[str]:
    """How the plug-in starts a backend: this Python's `image-enhancer serve`."""
    script = Path(sys.executable).with_name("image-enhancer.exe" if os.name == "nt" else "image-enhancer")
    start = [str(script)] if script.exists() else [sys.executable, "-m", "image_enhancer"]
    return [*start, "serve", "--address", address]


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(
        source,
        target,
        ignore=lambda _d, names: [n for n in names if n == "__pycache__" or n.endswith(_COMPILED)],
    )


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _pure_wheels(wheels_dir: Path) -> dict[str, Path]:
    """The pure-Python wheels in a folder, by normalised distribution name."""
    wheels = {}
    for wheel in sorted(wheels_dir.glob("*.whl")):
        parts = wheel.stem.split("-")
        if len(parts) >= 5 and parts[-1] == "any" and parts[-2] == "none":
            wheels[_normalise(parts[0])] = wheel
    return wheels


# Run by the backend's Python: its import path and its versions of the vendored distributions.
_PROBE = """
import json, sys
from importlib import metadata
versions = {}
for name in sys.argv[1:]:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps({"path": sys.path, "versions": versions}))
"""


@dataclass(frozen=True)
class SourcePython:
    """The Python whose packages are vendored: the backend's, so that the plug-in's protobuf and client
    match the server's, whichever Python runs this installer."""

    executable: str
    path: tuple[str, ...]
    versions: dict[str, str]


def python_of(backend_command: list[str]) -> str:
    """The Python that runs `backend_command` (`python -m ...` or a venv's console script)."""
    if backend_command:
        first = Path(backend_command[0])
        if first.name.lower().startswith("python"):
            return str(first)
        sibling = first.with_name("python.exe" if os.name == "nt" else "python")
        if first.parent != Path() and sibling.exists():
            return str(sibling)
    return sys.executable


def source_python(backend_command: list[str]) -> SourcePython:
    """Ask the backend's Python where its packages are; this Python when that one cannot answer."""
    executable = python_of(backend_command)
    try:
        probe = subprocess.run(
            [executable, "-c", _PROBE, *VENDORED], capture_output=True, text=True, check=True, timeout=60
        )
        answer = json.loads(probe.stdout)
        return SourcePython(executable, tuple(answer["path"]), answer["versions"])
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        versions = {}
        for dist in VENDORED:
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[dist] = metadata.version(dist)
        return SourcePython(sys.executable, tuple(sys.path), versions)


def _package_dir(top: str, search_path: tuple[str, ...]) -> Path | None:
    """Where the import folder `top` (e.g. "google/protobuf") is on `search_path`."""
    for entry in search_path:
        candidate = Path(entry or ".") / top
        if (candidate / "__init__.py").exists():
            return candidate
    return None


def download_wheels(target: Path, dists: list[str] | None = None, source: SourcePython | None = None) -> None:
    """Fetch the pure-Python wheels with pip (needs the network); `--platform any` skips compiled ones.
    Versions follow `source` where it has the package."""
    source = source or source_python([sys.executable])
    requirements = [
        f"{dist}=={source.versions[dist]}"
        if dist in source.versions
        else _FALLBACK_REQUIREMENTS.get(dist, dist)
        for dist in dists or VENDORED
    ]
    command = [source.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps"]
    command += ["--platform", "any", "--dest", str(target), *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(
            f"pip could not download the plug-in's dependencies:\n{result.stderr.strip()[-2000:]}"
        )


def _extract_wheel(wheel: Path, tops: tuple[str, ...], vendor: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        prefixes = tuple(top + "/" for top in tops)
        members = [m for m in archive.namelist() if m.startswith(prefixes) and not m.endswith(_COMPILED)]
        archive.extractall(vendor, members)


def _vendor_dependencies(vendor: Path, wheels_dir: Path | None, source: SourcePython) -> dict[str, str]:
    """Fill `vendor` with the pure-Python packages; returns where each came from.

    From `wheels_dir` when given (it must hold them all), else the source Python's site-packages
    (without compiled files), and pip for whatever that Python lacks.
    """
    origins = {}
    if wheels_dir is None:
        for dist, tops in VENDORED.items():
            folders = [_package_dir(top, source.path) for top in tops]
            if all(folders):
                for top, folder in zip(tops, folders, strict=True):
                    _copy_tree(folder, vendor / top)
                origins[dist] = "site-packages"
    missing = [dist for dist in VENDORED if dist not in origins]
    if not missing:
        return origins
    with tempfile.TemporaryDirectory() as download:
        if wheels_dir is None:
            wheels_dir = Path(download)
            download_wheels(wheels_dir, missing, source)
        wheels = _pure_wheels(wheels_dir)
        absent = [dist for dist in missing if _normalise(dist) not in wheels]
        if absent:
            raise InstallError(
                f"{wheels_dir} has no pure-Python (py3-none-any) wheel for: {', '.join(absent)}"
            )
        for dist in missing:
            wheel = wheels[_normalise(dist)]
            _extract_wheel(wheel, VENDORED[dist], vendor)
            origins[dist] = wheel.name
    return origins


def install(
    plugin_dir: Path,
    backend_command: list[str],
    address: str = DEFAULT_ADDRESS,
    wheels_dir: Path | None = None,
) -> Path:
    """Install the plug-in into a GIMP plug-ins folder; returns the plug-in's own folder.

    `backend_command` is what the plug-in runs when no backend answers at `address`. Dependencies
    come from `wheels_dir` (pure-Python wheels), else from the site-packages of the Python that runs
    `backend_command` (this one if it is not a Python), else from pip.
    """
    plugin_dir = Path(plugin_dir)
    target = plugin_dir / PLUGIN_NAME
    if target.resolve() == SOURCE_DIR.resolve():
        raise InstallError("The plug-in folder is the source folder itself; choose GIMP's plug-ins folder.")
    staging = plugin_dir / f".{PLUGIN_NAME}.installing"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for source in SOURCE_DIR.glob("*.py"):
            shutil.copy2(source, staging / source.name)
        entry = staging / f"{PLUGIN_NAME}.py"
        entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        vendor = staging / "vendor"
        own_root = _own_source_root()
        for relative in OWN_FILES:
            source = own_root / relative
            if not source.exists():
                raise InstallError(f"{source} is missing from the image_enhancer package.")
            (vendor / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, vendor / relative)
        origins = _vendor_dependencies(vendor, wheels_dir, source_python(backend_command))
        config = {"address": address, "backend_command": list(backend_command), "vendored": origins}
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        # Replace the old install only once the new one is complete.
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def uninstall(plugin_dir: Path) -> bool:
    """Remove the plug-in from a plug-ins folder; False when it was not there."""
    target = Path(plugin_dir) / PLUGIN_NAME
    if not (target / f"{PLUGIN_NAME}.py").exists():
        return False
    shutil.rmtree(target)
    return True


# Run with a plain Python by `check(..., try_start=True)`: the installed plug-in's own transport and
# vendored packages find or start the recorded backend exactly as they do inside GIMP, and wait for it.
_START_PROBE = """
import os, sys
from pathlib import Path
plugin = Path(sys.argv[1])
os.environ["MULTIDICT_NO_EXTENSIONS"] = "1"
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
sys.path[:0] = [str(plugin), str(plugin / "vendor")]
import transport
try:
    config = transport.load_config(plugin)
    client = transport.connect(config.address, config, lambda text, fraction: None)
    try:
        server = transport.describe(client)
    finally:
        client.close()
except transport.BackendError as error:
    print(error)
    sys.exit(1)
print(f"serving at {config.address} on {server.device_name}")
"""


def try_backend(plugin_dir: Path, python: str = sys.executable) -> tuple[bool, str]:
    """Reach the backend the way the installed plug-in does in GIMP, starting it with the recorded command
    when nothing answers; (it answers, what happened)."""
    probe = subprocess.run(
        [python, "-c", _START_PROBE, str(Path(plugin_dir) / PLUGIN_NAME)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    message = (probe.stdout.strip() or probe.stderr.strip()[-2000:]).strip()
    return probe.returncode == 0, message


@dataclass
class CheckReport:
    plugin_dir: Path
    installed: bool = False
    address: str = ""
    backend_command: list[str] = field(default_factory=list)
    backend_listening: bool = False
    backend_start: str = ""  # what starting the recorded backend as GIMP would did, when tried
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.installed and not self.problems

    def __str__(self) -> str:
        lines = [f"{self.plugin_dir / PLUGIN_NAME}: " + ("installed" if self.installed else "not installed")]
        if self.installed:
            lines.append(f"  backend address: {self.address}")
            lines.append(f"  backend command: {' '.join(self.backend_command) or '(none)'}")
            lines.append(f"  backend listening now: {'yes' if self.backend_listening else 'no'}")
            if self.backend_start:
                lines.append(f"  started as GIMP would: {self.backend_start}")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _listening(address: str) -> bool:
    """Whether something accepts connections at HOST:PORT (a cheap probe, no gRPC needed)."""
    try:
        parsed = ADDRESSES.parse_address(address)
    except ValueError:
        return False
    if parsed.unix_path is not None:
        return Path(parsed.unix_path).exists()
    try:
        with socket.create_connection((parsed.host, parsed.port), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def check(plugin_dir: Path, try_start: bool = False) -> CheckReport:
    """What is installed in a plug-ins folder and what is wrong with it. With `try_start`, a backend
    that is not running is started with the recorded command, as the plug-in would (it keeps running)."""
    target = Path(plugin_dir) / PLUGIN_NAME
    report = CheckReport(Path(plugin_dir))
    entry = target / f"{PLUGIN_NAME}.py"
    if not entry.exists():
        return report
    report.installed = True
    if os.name != "nt" and not os.access(entry, os.X_OK):
        report.problems.append(f"{entry} is not executable; GIMP will not run it.")
    for source in SOURCE_DIR.glob("*.py"):
        if not (target / source.name).exists():
            report.problems.append(f"{source.name} is missing; install again.")
    for relative in [*OWN_FILES, *(f"{top}/__init__.py" for tops in VENDORED.values() for top in tops)]:
        if not (target / "vendor" / relative).exists():
            report.problems.append(f"vendor/{relative} is missing; install again.")
    try:
        config = json.loads((target / CONFIG_NAME).read_text(encoding="utf-8"))
        report.address = config["address"]
        report.backend_command = list(config["backend_command"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.problems.append(f"{CONFIG_NAME} is missing or damaged ({error}); install again.")
        return report
    report.backend_listening = _listening(report.address)
    if report.backend_command and shutil.which(report.backend_command[0]) is None:
        report.problems.append(f"the backend command {report.backend_command[0]} does not exist.")
    elif try_start and not report.backend_listening and not report.problems:
        answered, report.backend_start = try_backend(Path(plugin_dir))
        if not answered:
            report.problems.append("the plug-in cannot reach or start its backend (see above).")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the AI Enhance plug-in into GIMP 3.x.")
    parser.add_argument("--plugin-dir", type=Path, action="append", help="GIMP plug-ins folder (repeatable)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="backend address (HOST:PORT or unix:PATH)")
    parser.add_argument(
        "--backend-command", help="JSON list: the command that starts the backend (default: this Python's)"
    )
    parser.add_argument(
        "--wheels", type=Path, help="folder of pure-Python wheels to vendor (offline install)"
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--uninstall", action="store_true")
    action.add_argument(
        "--check", action="store_true", help="report; start the backend as GIMP would when it is not running"
    )
    args = parser.parse_args(argv)

    plugin_dirs = args.plugin_dir or find_plugin_dirs()
    if not plugin_dirs:
        print(
            "No GIMP 3 profile was found. Start GIMP 3 once (it creates its profile), or pass --plugin-dir."
        )
        return 1
    if args.check:
        reports = [check(d, try_start=True) for d in plugin_dirs]
        print("\n".join(str(r) for r in reports))
        return 0 if all(r.ok for r in reports) else 1
    if args.uninstall:
        for d in plugin_dirs:
            print(f"{d / PLUGIN_NAME}: " + ("removed" if uninstall(d) else "was not installed"))
        return 0
    command = (
        json.loads(args.backend_command) if args.backend_command else default_backend_command(args.address)
    )
    try:
        for d in plugin_dirs:
            print(f"Installed {install(d, command, args.address, args.wheels)}")
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("Restart GIMP: the plug-in is under Filters > Enhance > AI Enhance...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
