"""A backend that starts from any GIMP, sandboxed or not: a systemd user socket on the plug-in's address.

A Flatpak GIMP cannot run the host's Python, but it shares the network: when the first connection
reaches the socket, systemd starts `image-enhancer activate`, which starts the real backend and relays
to it. The plug-in then never needs a command of its own. Standard library only (run by install.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOCKET_UNIT = "image-enhancer.socket"
SERVICE_UNIT = "image-enhancer.service"


def unit_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def units(python: Path, address: str) -> dict[str, str]:
    """The two unit files: the socket on `address` (loopback HOST:PORT) and the service it starts."""
    return {
        SOCKET_UNIT: (
            "[Unit]\n"
            "Description=Image Enhancer backend for GIMP (starts on the first connection)\n\n"
            "[Socket]\n"
            f"ListenStream={address}\n\n"
            "[Install]\n"
            "WantedBy=sockets.target\n"
        ),
        SERVICE_UNIT: (
            "[Unit]\n"
            "Description=Image Enhancer backend for GIMP\n\n"
            "[Service]\n"
            f"ExecStart={python} -m image_enhancer activate --idle-stop 30\n"
        ),
    }


def write_units(python: Path, address: str, folder: Path | None = None) -> Path:
    """Write the unit files into `folder` (default: the user's systemd folder); returns the folder."""
    folder = folder or unit_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in units(python, address).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def enable(address: str) -> str:
    """Have the user's systemd listen now and at every login; says what happened."""
    if shutil.which("systemctl") is None:
        return "no systemctl here: start `image-enhancer activate` at login instead"
    for command in (["daemon-reload"], ["enable", "--now", SOCKET_UNIT]):
        result = subprocess.run(["systemctl", "--user", *command], capture_output=True, text=True)
        if result.returncode != 0:
            return f"systemctl --user {' '.join(command)} failed: {result.stderr.strip()}"
    return f"enabled {SOCKET_UNIT}: the backend starts when GIMP first connects to {address}"
