"""Client on pure-Python packages only (grpclib, h2, hpack, hyperframe, multidict, protobuf).

For interpreters that cannot load compiled wheels, such as GIMP's Python on Windows; the GIMP plug-in
vendors it with `core.py` and the generated `v1/enhancer_pb2.py`. Set
`PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python` and `MULTIDICT_NO_EXTENSIONS=1` where compiled builds of
those packages might be present but unusable.

The API is `core.Client`'s (blocking calls; an asyncio loop runs inside).

Every failure is an `EnhancerError` with a `kind` ("unavailable", "not_found", "invalid", "too_large",
"queue_full", "cancelled", "deadline", "unauthenticated", "protocol", "internal") and a human message.
If `on_progress` raises, the job is cancelled on the server and the exception propagates.

grpclib has no load balancing. For a target naming several backends (`dns:///NAME:PORT` resolved with the
system's resolver, or an `ipv4:`/`ipv6:` list) this client does what gRPC's default policy, pick_first,
does: it uses the first address that accepts a connection, and moves on to the next when that one refuses
or drops a connection before a call has started. Calls are not spread; where grpcio loads, use
`grpc_client.EnhancerClient`, which balances them round-robin.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from google.protobuf.message import Message
from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from .. import wire
from ..address import Address, Target
from ..v1 import enhancer_pb2 as pb
from . import core
from .core import EnhancerError

# Large HTTP/2 windows: the default 64 KiB window would cap throughput on multi-megabyte chunks.
_WINDOW = 16 * wire.MIB
_CALL_ERRORS = (GRPCError, asyncio.TimeoutError, StreamTerminatedError, OSError)
T = TypeVar("T")


class _NotConnected(Exception):
    """No connection to the current address (refused, unreachable, closed before the call started): the
    call may go to the next address. The cause is the transport's error."""


def _error(error: BaseException) -> EnhancerError:
    if isinstance(error, GRPCError):
        return core.error_from_status(error.status.name, error.message or "")
    if isinstance(error, asyncio.TimeoutError):
        return core.error_from_status("DEADLINE_EXCEEDED", "deadline exceeded")
    if isinstance(error, StreamTerminatedError):
        return core.error_from_status("UNAVAILABLE", f"the connection was closed ({error})")
    return core.error_from_status("UNAVAILABLE", str(error) or type(error).__name__)


async def _until_cancelled(call: Coroutine[Any, Any, T], cancelled: Callable[[], bool]) -> T:
    """`call`'s result, or EnhancerError("cancelled") once `cancelled()` is true: the call's task is then
    cancelled, which resets its HTTP/2 stream, and the server's handler is cancelled with it."""
    task = asyncio.ensure_future(call)
    while not task.done():
        await asyncio.wait({task}, timeout=core.CANCEL_POLL_S)
        if not task.done() and cancelled():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_CALL_ERRORS):
                await task
            raise EnhancerError("cancelled", "cancelled")
    return task.result()


class LiteClient(core.Client):
    """`core.Client` on a grpclib channel driven by a private event loop."""

    def _connect(self, target: Target, tls: bool, root_certificates: bytes | None) -> None:
        self._ssl: ssl.SSLContext | None = None
        if tls:
            self._ssl = ssl.create_default_context(
                cadata=root_certificates.decode() if root_certificates else None
            )
            self._ssl.set_alpn_protocols(["h2"])
        # A dns: target's certificate names the target, not the address a connection goes to.
        name = target.endpoints[0].host if tls and target.scheme == "dns" else None
        self._config = Configuration(
            http2_connection_window_size=_WINDOW,
            http2_stream_window_size=_WINDOW,
            ssl_target_name_override=name,
        )
        self._target = target
        self._addresses: list[Address] = []  # resolved when first needed, again after all have failed
        self._loop = asyncio.new_event_loop()
        self._channel: Channel | None = None

    def _open(self, address: Address) -> None:
        if self._channel is not None:
            self._channel.close()

        async def make_channel() -> Channel:  # grpclib binds the channel to the running loop
            if address.unix_path is not None:
                return Channel(path=address.unix_path, ssl=self._ssl, config=self._config)
            return Channel(address.host, address.port, ssl=self._ssl, config=self._config)

        self._channel = self._loop.run_until_complete(make_channel())

    def _resolve(self) -> list[Address]:
        """The target's addresses in order: a dns: name through the system's resolver, else as written."""
        if self._target.scheme != "dns":
            return list(self._target.endpoints)
        name = self._target.endpoints[0]
        try:
            found = socket.getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise EnhancerError("unavailable", f"cannot resolve {name.host}: {error}") from None
        return list(dict.fromkeys(Address(info[4][0], name.port) for info in found))

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            # The transport closes its socket on the loop's next turn: give it that turn, or the
            # connection stays open (a relay such as `image-enhancer activate` would see a client still
            # there).
            self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def _run(self, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `call()` on the current address; one that cannot be reached hands the call to the next."""
        if not self._addresses:
            self._addresses = self._resolve()
            self._open(self._addresses[0])
        for attempt in range(len(self._addresses)):
            if attempt:  # pick_first: the next address becomes the current one
                self._addresses.append(self._addresses.pop(0))
                self._open(self._addresses[0])
            try:
                return self._loop.run_until_complete(call())
            except _NotConnected as error:
                unreachable = error.__cause__
            except _CALL_ERRORS as error:
                raise _error(error) from None
        self._addresses = []
        raise _error(unreachable) from None

    async def _start(self, stream: Stream) -> None:
        # The loop runs only during calls: one turn first lets it see a connection that the server closed
        # since the last call (it stopped, say), so that this call opens a new one or moves on.
        await asyncio.sleep(0)
        try:
            await stream.send_request()
        except (OSError, StreamTerminatedError) as error:
            raise _NotConnected() from error

    def _unary(
        self,
        method: str,
        request: Message,
        reply_type: type[T],
        timeout: float | None,
        cancelled: Callable[[], bool] | None = None,
    ) -> T:
        call = lambda: self._unary_call(method, request, reply_type, timeout)  # noqa: E731
        return self._run(call if cancelled is None else lambda: _until_cancelled(call(), cancelled))

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
            await self._start(stream)
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            if reply is None:
                raise EnhancerError("protocol", f"{method} returned no reply")
            return reply

    def _server_stream(
        self,
        method: str,
        request: Message,
        reply_type: type[T],
        on_reply: Callable[[T], None],
        timeout: float | None,
    ) -> None:
        self._run(lambda: self._server_stream_call(method, request, reply_type, on_reply, timeout))

    async def _server_stream_call(
        self,
        method: str,
        request: Message,
        reply_type: type[T],
        on_reply: Callable[[T], None],
        timeout: float | None,
    ) -> None:
        async with self._channel.request(
            method,
            Cardinality.UNARY_STREAM,
            type(request),
            reply_type,
            timeout=timeout,
            metadata=self._metadata,
        ) as stream:
            await self._start(stream)
            await stream.send_message(request, end=True)
            try:
                async for reply in stream:
                    on_reply(reply)
            except BaseException:
                with contextlib.suppress(Exception):
                    await stream.cancel()
                raise

    def _enhance(self, call: core.EnhanceCall) -> tuple[wire.ImageInfo, bytes]:
        return self._run(lambda: self._enhance_call(call))

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
            await self._start(stream)
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
