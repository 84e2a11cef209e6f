"""Start the backend on demand: `image-enhancer activate` listens on the plug-in's loopback address, starts
the real server on the first connection and relays every connection to it.

A sandboxed GIMP (Flatpak, or the chroot the tests use) cannot start programs outside its sandbox, but it
can connect to the loopback network. This listener imports neither torch nor grpc, so it can run from
login (a systemd user socket hands it the listening socket; launchd or a login item can start it
plainly) and costs nothing until GIMP connects. The server it starts listens on an owner-only Unix
socket and keeps running, models loaded, until the listener stops or `--idle-stop` minutes pass
without a connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from image_enhancer.arguments import float_in
from image_enhancer.paths import backend_log, user_home
from image_enhancer.wire import DEFAULT_ADDRESS, parse_address

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # until the server's socket accepts: imports torch, so a slow disk needs minutes
_POLL_S = 0.1
_CHUNK = 1 << 20
MAX_IDLE_STOP_MINUTES = 7 * 24 * 60.0
SYSTEMD_FIRST_FD = 3  # sd_listen_fds(3): the first socket systemd passes


def systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed to this process (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=SYSTEMD_FIRST_FD)


def _host_port(address: str) -> tuple[str, int]:
    parsed = parse_address(address)
    if parsed.port is None:
        raise ValueError(f"the listen address must be HOST:PORT, got {address!r}")
    return parsed.host, parsed.port


class Activator:
    """Relays connections to a server it starts on the first one (and again after it stopped)."""

    def __init__(self, serve_command: list[str], socket_path: Path, idle_stop_s: float = 0.0) -> None:
        self._command = serve_command
        self._socket_path = socket_path
        self._idle_stop_s = idle_stop_s
        self._process: subprocess.Popen | None = None
        self._starting = asyncio.Lock()
        self._connections = 0
        self._last_seen = time.monotonic()
        self._relays: set[asyncio.Task] = set()  # one task per client connection
        self._closing = False

    async def _backend_ready(self) -> None:
        """Start the server unless it runs; return once its socket accepts connections."""
        async with self._starting:
            if self._process is None or self._process.poll() is not None:
                self._socket_path.parent.mkdir(parents=True, exist_ok=True)
                log_file = backend_log()
                log_file.parent.mkdir(parents=True, exist_ok=True)
                log.info("starting the backend: %s", " ".join(self._command))
                with open(log_file, "ab") as out:
                    self._process = subprocess.Popen(
                        self._command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                    )
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    _, writer = await asyncio.open_unix_connection(str(self._socket_path))
                except OSError:
                    if self._process.poll() is not None:
                        raise RuntimeError(
                            f"the backend exited with code {self._process.returncode}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("the backend did not start listening in time") from None
                    await asyncio.sleep(_POLL_S)
                    continue
                writer.close()
                return

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, relayed both ways until either side closes (or `close_connections`)."""
        self._connections += 1
        relay = asyncio.current_task()
        self._relays.add(relay)
        backend_writer = None
        try:
            try:
                await self._backend_ready()
                backend_reader, backend_writer = await asyncio.open_unix_connection(str(self._socket_path))
            except (OSError, RuntimeError) as error:
                log.error("no backend for a client: %s (log: %s)", error, backend_log())
                return
            await asyncio.gather(_pipe(reader, backend_writer), _pipe(backend_reader, writer))
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Closed because the listener stops: an ordinary end (a cancelled connection task would be
            # reported with a traceback by asyncio's stream server on Python 3.11).
        finally:
            self._relays.discard(relay)
            self._connections -= 1
            self._last_seen = time.monotonic()
            if backend_writer is not None:
                backend_writer.close()
            writer.close()

    async def close_connections(self) -> int:
        """End every relayed connection (the listener is stopping); how many there were."""
        self._closing = True
        relays = list(self._relays)
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        return len(relays)

    async def stop_when_idle(self) -> None:
        """Stop the server after `idle_stop_s` without connections (it starts again on the next one)."""
        while self._idle_stop_s > 0:
            await asyncio.sleep(min(30.0, self._idle_stop_s / 4))
            idle = time.monotonic() - self._last_seen
            if self._connections == 0 and idle > self._idle_stop_s and self.running:
                log.info("no connection for %.0f s: stopping the backend", idle)
                await asyncio.to_thread(self.stop_backend)  # waits for it to exit

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop_backend(self) -> None:
        if self.running:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await source.read(_CHUNK):
            target.write(data)
            await target.drain()
    with contextlib.suppress(OSError):
        target.close()


def add_activate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        help=f"loopback HOST:PORT to listen on (default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--idle-stop", type=float_in(0.0, MAX_IDLE_STOP_MINUTES), default=0.0,
        help="stop the server after this many idle minutes (0: never)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each start and stop")
    parser.add_argument(
        "serve_arguments", nargs=argparse.REMAINDER, help="after --: more `image-enhancer serve` options"
    )


def run_activate(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    passed = systemd_socket()
    host, port = passed.getsockname()[:2] if passed is not None else _host_port(args.address)
    if passed is None and host not in ("127.0.0.1", "::1", "localhost"):
        print("image-enhancer activate: listens on loopback only (127.0.0.1 or ::1)", file=sys.stderr)
        return 2
    socket_path = user_home() / "run" / f"backend-{port}.sock"
    extra = [a for a in args.serve_arguments if a != "--"]
    command = [sys.executable, "-m", "image_enhancer", "serve", "--address", f"unix:{socket_path}", *extra]
    activator = Activator(command, socket_path, args.idle_stop * 60)

    async def main() -> None:
        if passed is not None:
            server = await asyncio.start_server(activator.handle, sock=passed)
        else:
            server = await asyncio.start_server(activator.handle, host, port)
        stop = asyncio.Event()
        received: list[int] = []

        def on_signal(number: int) -> None:
            received.append(number)
            stop.set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        print(
            f"image-enhancer activate: listening on {args.address}; the backend starts on demand", flush=True
        )
        idle = asyncio.ensure_future(activator.stop_when_idle())
        async with server:
            await stop.wait()
            server.close()  # no new connections; then the open ones end, before the loop does
            closed = await activator.close_connections()
            log.info(
                "%s received: stopping; %d relayed connection(s) closed",
                signal.Signals(received[0]).name, closed,
            )
        idle.cancel()

    try:
        asyncio.run(main())
    except OSError as error:
        print(f"image-enhancer activate: cannot listen on {args.address}: {error}", file=sys.stderr)
        return 1
    finally:
        activator.stop_backend()
    return 0
