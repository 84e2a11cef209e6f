"""`python3 install.py --check`: what is installed and what is missing, with the command that fixes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def check(tmp_path: Path, *extra: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the check against this interpreter's environment and an empty GIMP plug-ins folder."""
    plugins = tmp_path / "plug-ins"
    plugins.mkdir(exist_ok=True)
    env = dict(os.environ)
    if home is not None:
        env["IMAGE_ENHANCER_HOME"] = str(home)
    command = [sys.executable, str(REPO / "install.py"), "--check", "--gimp-plugin-dir", str(plugins)]
    return subprocess.run(
        [*command, "--venv", sys.prefix, *extra], capture_output=True, text=True, env=env, timeout=300
    )


def test_check_reports_environment_weights_and_plugin(model_store, tmp_path: Path) -> None:
    done = check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"environment: ok ({sys.prefix})" in done.stdout
    assert f"{model_store.default_model}: installed" in done.stdout
    assert f"GIMP plug-in in {tmp_path / 'plug-ins'}:" in done.stdout
    assert "not installed" in done.stdout


def test_check_with_missing_weights_fails_and_names_the_command(tmp_path: Path) -> None:
    done = check(tmp_path, home=tmp_path / "empty-home")
    assert done.returncode == 1
    assert "realesrgan-x4plus: missing (run: python install.py --models realesrgan-x4plus)" in done.stdout


def test_check_without_an_environment_says_how_to_set_up(tmp_path: Path) -> None:
    done = check(tmp_path, "--venv", str(tmp_path / "no-venv"))
    assert done.returncode == 1
    assert "environment: missing or broken" in done.stdout and "run: python3 install.py" in done.stdout
    assert not (tmp_path / "no-venv").exists(), "--check must not create anything"


def test_the_environment_has_a_matching_torchvision() -> None:
    """spandrel imports torchvision, whose compiled operators only register with the torch it was built
    for: the installer must have installed a matching pair."""
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.9]])
    assert torchvision.ops.nms(boxes, torch.tensor([1.0, 0.9]), 0.5).tolist() == [0]
