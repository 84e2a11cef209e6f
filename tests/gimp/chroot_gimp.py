"""The real GIMP 3 in a Debian chroot, with the plug-in installed: used by the GIMP tests, the dialog
screenshot and the round-trip benchmark. Runs on the host, as root.

The chroots come from `.ci/gimp-chroot.sh` (GIMP 3.0 in Debian trixie, GIMP 3.2 in Debian forky); they
share the host's loopback network, so a backend started on the host is reachable from the plug-in inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gimp_plugin"))
import install_gimp  # noqa: E402

GIMP_TIMEOUT = 300
BATCH_SCRIPT = Path(__file__).resolve().parent / "batch_enhance.py"
DIALOG_SCRIPT = Path(__file__).resolve().parent / "drive_dialog.py"
GIMP_VERSIONS = ("3.0", "3.2")  # the releases the plug-in is tested on, each in its own chroot


def unavailable(reason: str) -> None:
    """Skip a real-GIMP test that cannot run here; fail it under CI=true, where these tests must run."""
    import pytest  # only tests call this; the scripts that use this module run without pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"the real-GIMP tests must run in CI: {reason}")
    pytest.skip(reason)


def build_chroot(version: str = "3.0", *flags: str) -> Path:
    """Build or reuse the chroot with GIMP `version`; raises RuntimeError with the script's output when
    that fails."""
    script = [str(REPO / ".ci" / "gimp-chroot.sh"), "--gimp", version, *flags]
    built = subprocess.run(["bash", *script], capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        raise RuntimeError(f"no GIMP chroot could be built:\n{built.stderr[-3000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def backend_process(address: str, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`image-enhancer serve` on the host's loopback (which the chroots share), serving once warm;
    stopped with SIGTERM afterwards, and its log shown if it did not stop cleanly."""
    from image_enhancer.client.grpc_client import EnhancerClient

    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "image_enhancer", "serve", "--address", address, "--no-warm-up"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        with EnhancerClient(address) as client:
            client.wait_until_serving(timeout=120)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode in (0, -signal.SIGTERM, -signal.SIGKILL), log.read_text()


@contextlib.contextmanager
def virtual_display(root: Path, size: str = "1280x900x24") -> Iterator[str]:
    """An X server inside the chroot (built --with-xvfb) on a display number it picks itself, so that
    runs never meet an earlier server's leftovers; yields the DISPLAY value."""
    if not (root / "usr" / "bin" / "Xvfb").exists():
        raise RuntimeError(f"{root} has no X server: build it with .ci/gimp-chroot.sh --with-xvfb")
    command = ["chroot", str(root), "Xvfb", "-displayfd", "1", "-screen", "0", size, "-nolisten", "tcp"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        number = server.stdout.readline().strip()  # written once the server accepts clients
        if not number.isdigit():
            raise RuntimeError(f"Xvfb did not start (exit status {server.poll()})")
        yield f":{number}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def plugin_pids() -> list[int]:
    """Host ids of AI Enhance plug-in processes running a procedure (not GIMP's short query of a new
    plug-in); chroot processes are ordinary host processes."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"ai_enhance/ai_enhance.py") for part in command) and b"-run" in command:
                pids.append(int(entry.name))
    return pids


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


class ChrootGimp:
    """A fresh GIMP profile inside the chroot with the plug-in installed by the installer."""

    def __init__(
        self,
        root: Path,
        address: str,
        backend_command: list[str],
        version: str = "3.0",
        timeout: int = GIMP_TIMEOUT,
    ) -> None:
        self.root = root
        self.version = version
        self.timeout = timeout  # seconds before a GIMP run is killed
        self.sandbox = Path("/tmp") / f"image-enhancer-test-{uuid.uuid4().hex[:8]}"  # as GIMP sees it
        self.home = self.sandbox / "home"
        plugins = self.host(self.home / ".config" / "GIMP" / version / "plug-ins")
        self.plugin = install_gimp.install(plugins, backend_command, address)
        shutil.copy(BATCH_SCRIPT, self.host(self.sandbox / BATCH_SCRIPT.name))

    def host(self, inside: Path) -> Path:
        """The host path of a path inside the chroot."""
        return self.root / inside.relative_to("/")

    def command(
        self, code: str, interpreter: str = "python-fu-eval", env: dict[str, str] | None = None
    ) -> list[str]:
        """The command line that runs batch `code` in GIMP (killed after ``timeout`` seconds)."""
        variables = [f"{key}={value}" for key, value in (env or {}).items()]
        return [
            "timeout", "-k", "10", str(self.timeout), "chroot", str(self.root),
            "env", "-i", f"HOME={self.home}", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", *variables,
            f"gimp-console-{self.version}", "-i", "--quit", "--batch-interpreter", interpreter, "-b", code,
        ]  # fmt: skip

    def job_dir(self, name: str) -> Path:
        """A fresh folder for one job, as GIMP sees it."""
        inside = self.sandbox / name
        shutil.rmtree(self.host(inside), ignore_errors=True)
        self.host(inside).mkdir(parents=True)
        return inside

    def start_job(
        self,
        name: str,
        pixels: np.ndarray,
        env: dict[str, str] | None = None,
        files: dict[str, bytes] | None = None,
        **job: object,
    ) -> tuple[subprocess.Popen, Path]:
        """Start GIMP on batch_enhance.py: `pixels` (H x W x C, u8, u16 or f32) become the layer "photo" above
        a white background; `job` holds the rest of job.json (arguments, selection, canvas, offset);
        `files` are written into the job's folder first (by name)."""
        inside = self.job_dir(name)
        folder = self.host(inside)
        for file_name, content in (files or {}).items():
            (folder / file_name).write_bytes(content)
        height, width, channels = pixels.shape
        sample = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}[
            pixels.dtype
        ]
        spec = {"width": width, "height": height, "channels": channels, "sample_type": sample, **job}
        (folder / "job.json").write_text(json.dumps(spec))
        (folder / "input.raw").write_bytes(np.ascontiguousarray(pixels).tobytes())
        code = f'exec(open("{self.sandbox / BATCH_SCRIPT.name}").read())'
        process = subprocess.Popen(
            self.command(code, env={"JOB_DIR": str(inside), **(env or {})}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return process, folder

    def run_job(
        self,
        name: str,
        pixels: np.ndarray,
        env: dict[str, str] | None = None,
        files: dict[str, bytes] | None = None,
        **job: object,
    ) -> dict:
        """Run a job to its end; returns result.json plus "folder" (host path) and "output" (GIMP's)."""
        process, folder = self.start_job(name, pixels, env, files, **job)
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"GIMP exited with {process.returncode}:\n{output}")
        result = json.loads((folder / "result.json").read_text())
        result["folder"] = folder
        result["output"] = output
        return result

    def drive_dialog(self, name: str, photo: Path, display: str, **job: object) -> dict:
        """Open the plug-in's dialog on `photo` on `display` and work it with drive_dialog.py; `job` holds
        the rest of its job.json (the scenarios). Returns result.json plus "output" (GIMP's) and
        "returncode"."""
        inside = self.job_dir(name)
        folder = self.host(inside)
        shutil.copy(photo, folder / photo.name)
        shutil.copy(DIALOG_SCRIPT, folder / DIALOG_SCRIPT.name)
        plugin_inside = Path("/") / self.plugin.relative_to(self.root)
        spec = {"photo": photo.name, "plugin_dir": str(plugin_inside), **job}
        (folder / "job.json").write_text(json.dumps(spec))
        code = f'exec(open("{inside / DIALOG_SCRIPT.name}").read())'
        env = {"JOB_DIR": str(inside), "DISPLAY": display}
        done = subprocess.run(self.command(code, env=env), capture_output=True, text=True)
        result_file = folder / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        result["output"] = done.stdout + done.stderr
        result["returncode"] = done.returncode
        return result

    def read(self, result: dict, key: str, dtype: type, channels: int) -> np.ndarray:
        """A raw dump from a job's result (e.g. "new_layer") as an H x W x C array."""
        entry = result[key]
        data = np.fromfile(result["folder"] / entry["file"], dtype=dtype)
        return data.reshape(entry["height"], entry["width"], channels)

    def remove(self) -> None:
        shutil.rmtree(self.host(self.sandbox), ignore_errors=True)
