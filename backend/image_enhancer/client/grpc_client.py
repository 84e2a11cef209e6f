"""Client on grpcio (compiled): used by the CLI's `enhance --server`, the tests and scripts.

    with EnhancerClient("127.0.0.1:50051") as client:
        header, data = client.enhance(rgba_bytes, 640, 480, 4, "u8", model="realesr-general-x4v3",
                                      on_progress=lambda p: print(p.stage, p.done, p.total))

`lite.LiteClient` offers the same methods on pure-Python packages.

Several backends behind one target (`dns:///NAME:PORT`, e.g. a Kubernetes headless Service, or
`ipv4:A:PORT,B:PORT`) are balanced by gRPC itself: the `round_robin` policy spreads calls over every
address the target resolves to, and a call refused with UNAVAILABLE (a backend going away) is retried
on another, as gRPC's retry policy allows (a call is retried only until its upload has outgrown gRPC's
retry buffer or a reply has arrived). One plain address keeps gRPC's defaults.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from .. import wire
from ..address import Target
from ..request import EnhanceOptions
from ..v1 import enhancer_pb2 as pb
from . import core
from .core import EnhancerError, ProgressCallback

T = TypeVar("T")
# numpy dtypes of the wire's sample types (little-endian, as the wire is).
_DTYPES = {"u8": np.dtype("<u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}


# gRPC's service config for a balanced target: round_robin, and retries on UNAVAILABLE for every method
# of ours and the health check (maxAttempts counts the first try; gRPC caps it at 5).
BALANCED_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": wire.SERVICE_NAME}, {"service": "grpc.health.v1.Health"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def channel_options(target: Target) -> list[tuple[str, object]]:
    """grpcio channel options for `target`: message limits, and for a balanced one the service config
    (DNS-published configs are ignored: the client's own is the one tested)."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
    ]
    if target.balanced:
        options += [
            ("grpc.service_config", json.dumps(BALANCED_SERVICE_CONFIG)),
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.enable_retries", 1),
        ]
    return options


def _error(error: grpc.RpcError) -> EnhancerError:
    return core.error_from_status(error.code().name, error.details() or "")


class EnhancerClient(core.Client):
    """`core.Client` on a grpcio channel."""

    def _connect(self, target: Target, tls: bool, root_certificates: bytes | None) -> None:
        options = channel_options(target)
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            self._channel = grpc.secure_channel(target.text, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target.text, options=options)

    def close(self) -> None:
        self._channel.close()

    def _unary(
        self,
        method: str,
        request: Message,
        reply_type: type[T],
        timeout: float | None,
        cancelled: Callable[[], bool] | None = None,
    ) -> T:
        call = self._channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply_type.FromString,  # type: ignore[attr-defined]
        )
        try:
            if cancelled is None:
                return call(request, timeout=timeout, metadata=self._metadata)
            future = call.future(request, timeout=timeout, metadata=self._metadata)
            while True:
                try:
                    return future.result(timeout=core.CANCEL_POLL_S)
                except grpc.FutureTimeoutError:
                    if cancelled():
                        future.cancel()
                        raise EnhancerError("cancelled", "cancelled") from None
        except grpc.RpcError as error:
            raise _error(error) from None

    def _server_stream(
        self,
        method: str,
        request: Message,
        reply_type: type[T],
        on_reply: Callable[[T], None],
        timeout: float | None,
    ) -> None:
        call = self._channel.unary_stream(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply_type.FromString,  # type: ignore[attr-defined]
        )
        replies = call(request, timeout=timeout, metadata=self._metadata)
        try:
            for reply in replies:
                on_reply(reply)
        except grpc.RpcError as error:
            raise _error(error) from None
        except BaseException:
            replies.cancel()
            raise

    def _enhance(self, call: core.EnhanceCall) -> tuple[wire.ImageInfo, bytes]:
        method = self._channel.stream_stream(
            wire.ENHANCE_METHOD,
            request_serializer=pb.EnhanceRequest.SerializeToString,
            response_deserializer=pb.EnhanceResponse.FromString,
        )
        requests = itertools.chain([call.start], call.chunks)
        responses = method(requests, timeout=call.timeout, metadata=self._metadata)
        try:
            return core.assemble(responses, call.on_progress)
        except grpc.RpcError as error:
            raise _error(error) from None
        except BaseException:
            responses.cancel()
            raise

    def enhance_array(
        self,
        pixels: np.ndarray,
        options: EnhanceOptions | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **option_fields: Any,
    ) -> np.ndarray:
        """`enhance` for an H×W×C (or H×W) uint8/uint16/float32 array; returns an array of the same kind."""
        sample_type = next(
            (name for name, dtype in _DTYPES.items() if pixels.dtype == dtype.newbyteorder("=")), None
        )
        if sample_type is None or pixels.ndim not in (2, 3):
            raise EnhancerError(
                "invalid",
                f"expected an H×W×C uint8/uint16/float32 array, got {pixels.dtype} with shape {pixels.shape}",
            )
        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        data = np.ascontiguousarray(pixels, dtype=_DTYPES[sample_type])
        info, result = self.enhance(
            data,
            width,
            height,
            channels,
            sample_type,
            options,
            on_progress=on_progress,
            timeout=timeout,
            **option_fields,
        )
        array = np.frombuffer(result, dtype=_DTYPES[sample_type]).reshape(
            info.height, info.width, info.channels
        )
        array = array.astype(pixels.dtype, copy=False)
        return array[:, :, 0] if pixels.ndim == 2 else array
