"""Client on pure-Python packages only (grpclib, h2, hpack, hyperframe, multidict, protobuf).

For interpreters that cannot load compiled wheels, such as GIMP's Python on Windows; the GIMP plug-in
vendors it with `core.py` and the generated `v1/enhancer_pb2.py`. Set
`PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python` and `MULTIDICT_NO_EXTENSIONS=1` where compiled builds of
those packages might be present but unusable.

The API is `core.Client`'s (blocking calls; an asyncio loop runs inside).

Every failure is an `EnhancerError` with a `kind` ("unavailable", "not_found", "invalid", "too_large",
"queue_full", "cancelled", "deadline", "unauthenticated", "protocol", "internal") and a human message.
If `on_progress` raises, the job is cancelled on the server and the exception propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Coroutine
from typing import Any, TypeVar

from google.protobuf.message import Message
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from .. import wire
from ..v1 import enhancer_pb2 as pb
from . import core
from .core import EnhancerError

# Large HTTP/2 windows: the default 64 KiB window would cap throughput on multi-megabyte chunks.
_WINDOW = 16 * wire.MIB
_CALL_ERRORS = (GRPCError, asyncio.TimeoutError, StreamTerminatedError, OSError)
T = TypeVar("T")


def _error(error: BaseException) -> EnhancerError:
    if isinstance(error, GRPCError):
        return core.error_from_status(error.status.name, error.message or "")
    if isinstance(error, asyncio.TimeoutError):
        return core.error_from_status("DEADLINE_EXCEEDED", "deadline exceeded")
    if isinstance(error, StreamTerminatedError):
        return core.error_from_status("UNAVAILABLE", f"the connection was closed ({error})")
    return core.error_from_status("UNAVAILABLE", str(error) or type(error).__name__)


class LiteClient(core.Client):
    """`core.Client` on a grpclib channel driven by a private event loop."""

    def _connect(
        self, address: str, parsed: wire.Address, tls: bool, root_certificates: bytes | None
    ) -> None:
        context: ssl.SSLContext | None = None
        if tls:
            context = ssl.create_default_context(
                cadata=root_certificates.decode() if root_certificates else None
            )
            context.set_alpn_protocols(["h2"])
        config = Configuration(http2_connection_window_size=_WINDOW, http2_stream_window_size=_WINDOW)
        self._loop = asyncio.new_event_loop()

        async def make_channel() -> Channel:  # grpclib binds the channel to the running loop
            if parsed.unix_path is not None:
                return Channel(path=parsed.unix_path, ssl=context, config=config)
            return Channel(parsed.host, parsed.port, ssl=context, config=config)

        self._channel = self._loop.run_until_complete(make_channel())

    def close(self) -> None:
        self._channel.close()
        # The transport closes its socket on the loop's next turn: give it that turn, or the connection
        # stays open (a relay such as `image-enhancer activate` would see a client still there).
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop.run_until_complete(coroutine)
        except _CALL_ERRORS as error:
            raise _error(error) from None

    def _unary(self, method: str, request: Message, reply_type: type[T], timeout: float | None) -> T:
        return self._run(self._unary_call(method, request, reply_type, timeout))

    async def _unary_call(
        self, method: str, request: Message, reply_type: type[T], timeout: float | None
    ) -> T:
        async with self._channel.request(
            method,
            Cardinality.UNARY_UNARY,
            type(request),
            reply_type,
            timeout=timeout,
            metadata=self._metadata,
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            if reply is None:
                raise EnhancerError("protocol", f"{method} returned no reply")
            return reply

    def _enhance(self, call: core.EnhanceCall) -> tuple[wire.ImageInfo, bytes]:
        return self._run(self._enhance_call(call))

    async def _enhance_call(self, call: core.EnhanceCall) -> tuple[wire.ImageInfo, bytes]:
        async with self._channel.request(
            wire.ENHANCE_METHOD,
            Cardinality.STREAM_STREAM,
            pb.EnhanceRequest,
            pb.EnhanceResponse,
            timeout=call.timeout,
            metadata=self._metadata,
        ) as stream:
            # Upload concurrently with reading replies, so an early rejection (full queue, bad header)
            # ends the call without sending the rest of the image.
            await stream.send_request()
            sender = asyncio.ensure_future(self._send_all(stream, call))
            assembler = core.ResultAssembler(call.on_progress)
            try:
                async for response in stream:
                    assembler.feed(response)
            except BaseException:
                with contextlib.suppress(Exception):
                    await stream.cancel()
                raise
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_CALL_ERRORS):
                    await sender
        # Only after the block: leaving it reads the call's status, so a call the server ended with an
        # error after some progress (its deadline, a damaged model) reports that error, not a short result.
        return assembler.result()

    @staticmethod
    async def _send_all(stream: Stream, call: core.EnhanceCall) -> None:
        await stream.send_message(call.start)
        for chunk in call.chunks:
            await stream.send_message(chunk)
        await stream.end()
