"""Assembles and starts the gRPC server: Enhancer service, job queue, health, reflection, auth, listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from image_enhancer.engine.enhancer import Enhancer
from image_enhancer.estimate import Planner
from image_enhancer.faces.pipeline import FacePass, with_faces
from image_enhancer.request import EnhanceOptions
from image_enhancer.server import DEFAULT_MAX_QUEUE, DEFAULT_READER_IDLE_S
from image_enhancer.server.auth import TokenInterceptor, check_listen_safety
from image_enhancer.server.jobs import DEFAULT_MAX_RESULT_BYTES, JobQueue
from image_enhancer.server.service import EnhancerService, UploadLimits
from image_enhancer.v1 import enhancer_pb2, enhancer_pb2_grpc
from image_enhancer.wire import DEFAULT_ADDRESS, MAX_MESSAGE_BYTES, SERVICE_NAME, parse_address

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMITS = UploadLimits()
# A tiny image run once at start so the first real job does not pay for lazy initialisation.
_WARM_UP_SIDE = 16
# Threads for the calls' blocking work (model listing, speed records, laying out results), all started
# with the server: its thread count does not grow with load.
OFFLOAD_THREADS = 4


@dataclass(frozen=True)
class TlsFiles:
    certificate_chain: bytes
    private_key: bytes


class RunningServer:
    """A started server, running on its own event-loop thread. `address` is where it listens (with the
    real port when 0 was asked for)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        server: grpc.aio.Server,
        address: str,
        jobs: JobQueue,
        health_servicer: health.aio.HealthServicer,
        socket_path: Path | None,
        service: EnhancerService,
    ) -> None:
        self.server = server
        self.address = address
        self.jobs = jobs
        self._service = service
        self._loop = loop
        self._thread = thread
        self._health = health_servicer
        self._socket_path = socket_path

    @property
    def port(self) -> int | None:
        return None if self._socket_path else int(self.address.rpartition(":")[2])

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """True once warm-up is over and health says SERVING."""
        return self.jobs.ready.wait(timeout)

    def stop(self, grace: float = 2.0) -> bool:
        """Refuse new calls, give running ones `grace` seconds, cancel the jobs and end the loop; False
        when the job worker is still busy after that (see ``JobQueue.stop``)."""
        if self._loop.is_closed():
            return True
        log.info("stopping: new calls are refused, calls in progress get %g s to finish", grace)

        async def shut_down() -> None:
            self._service.stopping()
            await self._health.enter_graceful_shutdown()
            await self.server.stop(grace)

        asyncio.run_coroutine_threadsafe(shut_down(), self._loop).result(grace + 30)
        ended = self.jobs.stop(timeout=grace + 5.0)
        _end_loop(self._loop, self._thread)
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        return ended


def _end_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


async def _set_health(health_servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


def _warm_up(enhancer: Enhancer, models: Sequence[str], report_serving: Callable[[], None]) -> None:
    """Load the models and run each once, then report SERVING (also when that failed)."""
    try:
        for model in models:
            log.info("loading and warming up %s", model)
            enhancer.enhance(
                np.zeros((_WARM_UP_SIDE, _WARM_UP_SIDE, 3), np.uint8), EnhanceOptions(model=model)
            )
    finally:
        report_serving()


def _started_executor(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose `threads` threads are running already (a pool starts them only as work comes
    in otherwise)."""
    executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
    everyone = threading.Barrier(threads + 1)
    for _ in range(threads):
        executor.submit(everyone.wait)  # each blocks its thread until all are started
    everyone.wait()
    return executor


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


def _listen(server: grpc.aio.Server, address: str, tls: TlsFiles | None) -> tuple[str, Path | None]:
    """Bind the listener; Unix sockets are created owner-only (mode 0600)."""
    unix_path = parse_address(address).unix_path
    socket_path = Path(unix_path) if unix_path is not None else None
    if socket_path is not None:
        _prepare_socket(socket_path)
    credentials = grpc.ssl_server_credentials([(tls.private_key, tls.certificate_chain)]) if tls else None
    # The umask makes the socket private from the moment it exists; chmod below makes sure of it.
    old_umask = os.umask(0o177) if socket_path else None
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # gRPC's own message only says "failed to bind"
        port = 0
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    if port == 0:
        raise OSError(
            f"cannot listen on {address}: the address is in use (is another server listening there?) "
            "or not available on this machine"
        )
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
    upload_limits: UploadLimits = DEFAULT_UPLOAD_LIMITS,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    reader_idle_s: float = DEFAULT_READER_IDLE_S,
) -> RunningServer:
    """Start serving `enhancer` on `address` (host:port, port 0 picks one, or unix:PATH) and return.

    Health answers NOT_SERVING until the `warm_up` models (default: the store's default model; empty:
    none) are loaded and have run once. Uploads are held to `upload_limits`; results not yet sent in full
    may hold `max_result_bytes` before jobs wait, and a client that takes no data of its reply for
    `reader_idle_s` is dropped.

    Raises UnsafeListenError (a ValueError) for a non-loopback address without token or TLS, and
    OSError when the address cannot be bound (another server listening there included).
    """
    check_listen_safety(address, token, tls is not None)
    models = [enhancer.store.default_model] if warm_up is None else list(warm_up)
    # The face pass reads face models from the same folders as the store it runs beside, and lists the
    # face models of the manifest the store installs from.
    store = enhancer.store
    manifest = getattr(store, "manifest", None)
    face_pass = FacePass(
        getattr(store, "models_dir", None),
        getattr(store, "weights_dir", None),
        getattr(manifest, "face_models", None),
    )
    # Every job is timed per model, runtime and precision, in the work its network does: what
    # EstimateTime answers from (and what the command line's estimates use on this machine too).
    planner = Planner.for_enhancer(enhancer)
    jobs = JobQueue(
        with_faces(lambda pixels, options, progress, cancelled: planner.run(
            pixels, options, progress, cancelled=cancelled), face_pass),
        max_queue,
        warm_up=lambda: _warm_up(enhancer, models, report_serving),
        max_result_bytes=max_result_bytes,
    )
    service = EnhancerService(planner, jobs, upload_limits, reader_idle_s, face_pass.models)
    loop = asyncio.new_event_loop()
    loop.set_default_executor(_started_executor(OFFLOAD_THREADS, "server-offload"))
    thread = threading.Thread(target=loop.run_forever, name="grpc-server", daemon=True)
    thread.start()
    try:
        server, health_servicer, bound, socket_path = asyncio.run_coroutine_threadsafe(
            _start(service, address, token, tls), loop
        ).result()
    except BaseException:
        _end_loop(loop, thread)
        raise

    def report_serving() -> None:  # called by the queue's worker thread once warm-up is over
        serving = _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        asyncio.run_coroutine_threadsafe(serving, loop).result(30)

    jobs.start()
    log.info("listening on %s", bound)
    return RunningServer(loop, thread, server, bound, jobs, health_servicer, socket_path, service)


async def _start(
    service: EnhancerService, address: str, token: str | None, tls: TlsFiles | None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, str, Path | None]:
    """Build, bind and start the server on the running event loop."""
    server = grpc.aio.server(
        interceptors=[TokenInterceptor(token)] if token else [],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC shares a TCP port between servers by default: a second server would silently take
            # half of the connections. Binding must fail instead.
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    enhancer_pb2_grpc.add_EnhancerServicer_to_server(service, server)
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
    await server.start()
    return server, health_servicer, bound, socket_path
