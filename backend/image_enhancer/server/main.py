"""`image-enhancer serve`: command-line arguments and the process's life (start, wait, stop on signal)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from image_enhancer.arguments import add_device_arguments, add_renamed, float_in, int_in, positive_float
from image_enhancer.server import DEFAULT_MAX_QUEUE, DEFAULT_MAX_RESULT_MIB, DEFAULT_READER_IDLE_S, MAX_QUEUE
from image_enhancer.wire import DEFAULT_ADDRESS, MIB, TOKEN_ENV

if TYPE_CHECKING:
    from image_enhancer.server.app import TlsFiles

MAX_READER_IDLE_S = 24 * 3600.0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        help=f"HOST:PORT or unix:PATH (default {DEFAULT_ADDRESS}); public addresses need a token or TLS",
    )
    parser.add_argument(
        "--token", default=None, help=f"access token clients must send (default: ${TOKEN_ENV})"
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain for TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key for TLS")
    add_device_arguments(parser)
    parser.add_argument(
        "--max-queue", type=int_in(1, MAX_QUEUE), default=DEFAULT_MAX_QUEUE,
        help="jobs that may wait; more are refused",
    )
    parser.add_argument(
        "--max-result-memory", type=positive_float, default=DEFAULT_MAX_RESULT_MIB, metavar="MIB",
        help=f"MiB that results not yet read by their clients may hold before new jobs wait in the queue "
        f"(default {DEFAULT_MAX_RESULT_MIB})",
    )
    parser.add_argument(
        "--reader-idle-timeout", type=float_in(1.0, MAX_READER_IDLE_S), default=DEFAULT_READER_IDLE_S,
        metavar="SECONDS",
        help=f"drop a client that takes no data of its reply for this long "
        f"(default {DEFAULT_READER_IDLE_S:g})",
    )
    add_renamed(
        parser, "--max-input-megapixels", "--max-megapixels",
        type=positive_float, default=None, help="largest input image accepted",
    )
    parser.add_argument("--no-warm-up", action="store_true", help="do not load the default model at start")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    from image_enhancer.server.app import TlsFiles

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    return TlsFiles(certificate_chain=args.tls_cert.read_bytes(), private_key=args.tls_key.read_bytes())


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; returns the process exit status."""
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Our own level, not only the root's: OpenVINO's converter sets the root logger to ERROR while it
    # converts a network (seconds; 30 s for x4plus), and every other thread's log went silent meanwhile.
    logging.getLogger("image_enhancer").setLevel(level)
    # Imported here, not at the top: every `image-enhancer` command builds these arguments, and only
    # `serve` needs grpc, torch and the engine.
    from image_enhancer.engine.enhancer import Enhancer
    from image_enhancer.server.app import serve
    from image_enhancer.server.auth import check_listen_safety
    from image_enhancer.weights.store import ModelStore

    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        tls = _tls_files(args)
        # Checked before models load, so a refused address fails at once.
        check_listen_safety(args.address, token, tls is not None)
    except (ValueError, OSError) as error:
        print(f"image-enhancer serve: {error}", file=sys.stderr)
        return 2

    megapixels = args.max_input_megapixels
    limits = {} if megapixels is None else {"max_pixels": max(1, round(megapixels * 1e6))}
    try:
        enhancer = Enhancer(
            ModelStore(), device=args.device, precision=args.precision, runtime=args.runtime, **limits
        )
        running = serve(
            enhancer,
            args.address,
            max_queue=args.max_queue,
            token=token,
            tls=tls,
            warm_up=[] if args.no_warm_up else None,
            max_result_bytes=max(1, round(args.max_result_memory * MIB)),
            reader_idle_s=args.reader_idle_timeout,
        )
    except (ValueError, OSError) as error:
        print(f"image-enhancer serve: {error}", file=sys.stderr)
        return 2

    stop = threading.Event()
    received: list[int] = []

    def on_signal(number: int, _frame: object) -> None:
        received.append(number)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    print(f"image-enhancer serving on {running.address} (device {enhancer.compute.describe()})", flush=True)
    stop.wait()
    log = logging.getLogger(__name__)
    log.info("%s received", signal.Signals(received[0]).name)
    if not running.stop():
        # The job worker is still inside a runtime's code that cannot be stopped (one ncnn extraction,
        # the warm-up's timing of the runtimes). Tearing the interpreter down under it destroys what
        # that code uses: ncnn's allocator then reports "pool allocator destroyed too early" and the
        # process may crash. Nothing is lost by leaving at once: what is kept on disk is written whole
        # or not at all.
        log.warning("a job was still running after it was cancelled; leaving without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
