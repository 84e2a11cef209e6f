"""A real `image-enhancer serve` in a process of its own, for tests that measure what it holds: resident
memory (now and at its peak), open file descriptors and threads, read from /proc; and its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from image_enhancer.client import core
from image_enhancer.client.core import EnhancerError
from image_enhancer.client.grpc_client import EnhancerClient
from image_enhancer.request import EnhanceOptions
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.wire import ImageInfo

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_requests(pixels: np.ndarray, options: EnhanceOptions) -> list[pb.EnhanceRequest]:
    """The Enhance request stream for an H×W×C u8/u16/f32 array, as the clients send it."""
    height, width, channels = pixels.shape
    sample_type = {"uint8": "u8", "uint16": "u16", "float32": "f32"}[pixels.dtype.name]
    image = ImageInfo(width, height, channels, sample_type)
    return list(core.enhance_requests(pixels.tobytes(), image, options))


class ServerProcess:
    """`image-enhancer serve -v --no-warm-up` on a free loopback port with `options`; its log (stderr) goes
    to `log_path`."""

    def __init__(self, log_path: Path, *options: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path = log_path
        command = [sys.executable, "-m", "image_enhancer", "serve", "-v", "--no-warm-up"]
        # glibc returns a freed block to the system at once only when it was mapped on its own; its
        # threshold for that otherwise grows with the blocks freed, and resident memory would then keep
        # freed results and say nothing about what is still held. Fixed, it makes the measure exact.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 * 1024)}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*command, "--address", self.address, *options],
                stdout=subprocess.DEVNULL, stderr=log, env=env,
            )
        self.pid = self.process.pid

    def wait_until_serving(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        with EnhancerClient(self.address) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    client.wait_until_serving(1.0)
                    return
                except EnhancerError:
                    if time.monotonic() > deadline:
                        raise

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise LookupError(field)

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return self._status("VmRSS") * 1024

    def reset_peak(self) -> None:
        """Start measuring the peak resident memory from now (Linux: clear_refs 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss(self) -> int:
        """The largest resident memory since `reset_peak`, in bytes."""
        return self._status("VmHWM") * 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return self._status("Threads")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_for(condition, timeout: float, interval: float = 0.1) -> bool:
    """True once `condition()` is, False if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
