"""Who may call the server: loopback and Unix-socket listeners are open to local users; anything else
needs an access token (sent as `authorization: Bearer <token>` call metadata) or TLS.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc

from image_enhancer.wire import parse_address

# Health checks stay open so that supervisors and load balancers can probe without the token.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


class UnsafeListenError(ValueError):
    """A non-loopback address without a token or TLS."""


def is_local_address(address: str) -> bool:
    """True for Unix sockets and loopback hosts (127.0.0.0/8, ::1, localhost)."""
    return parse_address(address).is_local


def check_listen_safety(address: str, token: str | None, tls: bool) -> None:
    """Raise ValueError (AddressError) for a malformed address, UnsafeListenError for an unprotected
    public one."""
    if not parse_address(address).is_local and not token and not tls:
        raise UnsafeListenError(
            f"refusing to listen on {address} without protection: other machines could use this server. "
            "Set an access token (--token or the IMAGE_ENHANCER_TOKEN environment variable) or TLS "
            "(--tls-cert and --tls-key), or listen on 127.0.0.1 or a unix: socket."
        )


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only answers UNAUTHENTICATED."""

    async def abort(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to calls whose `authorization` metadata is not `Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        sent = next(
            (value for key, value in details.invocation_metadata or () if key == "authorization"), None
        )
        if sent is None:
            return _deny(handler, "this server requires an access token (authorization: Bearer <token>)")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if not hmac.compare_digest(sent_bytes, self._expected):
            return _deny(handler, "the access token is wrong")
        return handler
