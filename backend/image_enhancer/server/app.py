"""Assembles and starts the gRPC server: Enhancer service, job queue, health, reflection, auth, listener."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from image_enhancer.client.core import DEFAULT_ADDRESS, MAX_MESSAGE_BYTES, SERVICE_NAME
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer
from image_enhancer.server import DEFAULT_MAX_QUEUE
from image_enhancer.server.auth import TokenInterceptor, check_listen_safety
from image_enhancer.server.jobs import JobQueue
from image_enhancer.server.service import DEFAULT_UPLOAD_IDLE_S, EnhancerService
from image_enhancer.v1 import enhancer_pb2, enhancer_pb2_grpc

log = logging.getLogger(__name__)

# A tiny image run once at start so the first real job does not pay for lazy initialisation.
_WARM_UP_SIDE = 16


@dataclass(frozen=True)
class TlsFiles:
    certificate_chain: bytes
    private_key: bytes


class RunningServer:
    """A started server. `address` is where it listens (with the real port when 0 was asked for)."""

    def __init__(
        self,
        server: grpc.Server,
        address: str,
        jobs: JobQueue,
        health_servicer: health.HealthServicer,
        socket_path: Path | None,
    ) -> None:
        self.server = server
        self.address = address
        self.jobs = jobs
        self._health = health_servicer
        self._socket_path = socket_path

    @property
    def port(self) -> int | None:
        return None if self._socket_path else int(self.address.rpartition(":")[2])

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """True once warm-up is over and health says SERVING."""
        return self.jobs.ready.wait(timeout)

    def stop(self, grace: float = 2.0) -> None:
        self._health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.jobs.stop(timeout=grace + 5.0)
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()


def _set_health(health_servicer: health.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, status)


def _warm_up(enhancer: Enhancer, models: Sequence[str], health_servicer: health.HealthServicer) -> None:
    """Load the models and run each once, then report SERVING (also when that failed)."""
    try:
        for model in models:
            log.info("loading and warming up %s", model)
            enhancer.enhance(
                np.zeros((_WARM_UP_SIDE, _WARM_UP_SIDE, 3), np.uint8), EnhanceOptions(model=model)
            )
    finally:
        _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)


def _prepare_socket(path: Path) -> None:
    """Refuse a socket another server is using; remove a stale one left by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise OSError(f"{path} exists and is not a socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a leftover
    else:
        raise OSError(f"another server is already listening on {path}")
    finally:
        probe.close()


def _listen(server: grpc.Server, address: str, tls: TlsFiles | None) -> tuple[str, Path | None]:
    """Bind the listener; Unix sockets are created owner-only (mode 0600)."""
    socket_path = None
    if address.startswith("unix:"):
        socket_path = Path(address[len("unix:") :].removeprefix("//"))
        _prepare_socket(socket_path)
    credentials = grpc.ssl_server_credentials([(tls.private_key, tls.certificate_chain)]) if tls else None
    # The umask makes the socket private from the moment it exists; chmod below makes sure of it.
    old_umask = os.umask(0o177) if socket_path else None
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise OSError(f"cannot listen on {address}: {error}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    if port == 0:
        raise OSError(f"cannot listen on {address} (address in use or not available)")
    if socket_path is not None:
        os.chmod(socket_path, 0o600)
        return address, socket_path
    return f"{address.rpartition(':')[0]}:{port}", None


def serve(
    enhancer: Enhancer,
    address: str = DEFAULT_ADDRESS,
    *,
    max_queue: int = DEFAULT_MAX_QUEUE,
    token: str | None = None,
    tls: TlsFiles | None = None,
    warm_up: Sequence[str] | None = None,
    upload_idle_s: float = DEFAULT_UPLOAD_IDLE_S,
) -> RunningServer:
    """Start serving `enhancer` on `address` (host:port, port 0 picks one, or unix:PATH) and return.

    Health answers NOT_SERVING until the `warm_up` models (default: the store's default model; empty:
    none) are loaded and have run once. An upload silent for `upload_idle_s` seconds is cancelled.

    Raises UnsafeListenError (a ValueError) for a non-loopback address without token or TLS, and
    OSError when the address cannot be bound.
    """
    check_listen_safety(address, token, tls is not None)

    models = [enhancer.store.default_model] if warm_up is None else list(warm_up)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    jobs = JobQueue(
        lambda pixels, options, progress, cancelled: enhancer.enhance(pixels, options, progress, cancelled),
        max_queue,
        warm_up=lambda: _warm_up(enhancer, models, health_servicer),
    )

    server = grpc.server(
        # Threads for every queued upload, the running job, downloads of finished jobs and small calls.
        ThreadPoolExecutor(max_workers=2 * max_queue + 8, thread_name_prefix="grpc"),
        interceptors=[TokenInterceptor(token)] if token else [],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    enhancer_pb2_grpc.add_EnhancerServicer_to_server(EnhancerService(enhancer, jobs, upload_idle_s), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            enhancer_pb2.DESCRIPTOR.services_by_name["Enhancer"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    bound, socket_path = _listen(server, address, tls)
    jobs.start()
    server.start()
    log.info("listening on %s", bound)
    return RunningServer(server, bound, jobs, health_servicer, socket_path)
