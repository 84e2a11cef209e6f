"""A wheel built from the project carries what an installed copy needs without the checkout: the weights
manifest (package data), and the wire, request and address modules the clients and the plug-in import."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_installed_package_finds_its_manifest(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "-w", str(tmp_path), "--no-deps",
         "--no-build-isolation", "-q"],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("image_enhancer-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    needed = {"image_enhancer/weights/manifest.json", "image_enhancer/wire.py", "image_enhancer/address.py"}
    assert needed <= names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel), "-q"],
        check=True, capture_output=True, timeout=300,
    )
    code = (
        "import image_enhancer.weights.manifest as m\n"
        "print(m.packaged_manifest_path())\n"
        "print(m.load_manifest().default.name)\n"
    )
    # Run away from the checkout, with only the installed copy on the path (the editable install's
    # finder comes after it).
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    path, default = result.stdout.split()
    assert Path(path) == site / "image_enhancer" / "weights" / "manifest.json"
    assert default == "realesrgan-x4plus"
