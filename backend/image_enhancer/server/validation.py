"""Checks an Enhance call's messages and turns them into the engine's request.

Everything a header or option can get wrong is caught here, before the server allocates memory for the
upload or queues the job, so a bad request costs nothing and gets a human message.
"""

from __future__ import annotations

import grpc

from image_enhancer import wire
from image_enhancer.request import EnhanceOptions
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.wire import ImageInfo


class RequestError(Exception):
    """A request the server refuses; carries the gRPC status code to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def image_info(header: pb.ImageHeader, max_pixels: int) -> ImageInfo:
    """The uploaded image's layout, as announced by its header, once every field is checked."""
    if header.width == 0 or header.height == 0:
        raise invalid(f"image width and height must be positive, got {header.width}x{header.height}")
    if header.channels not in (1, 2, 3, 4):
        raise invalid(
            f"channels must be 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA), got {header.channels}"
        )
    try:
        image = wire.image_info(header)
    except wire.WireError as error:
        raise invalid(str(error)) from None
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the image has {header.width}x{header.height} = {pixels / 1e6:.1f} megapixels; this server takes"
            f" at most {max_pixels / 1e6:.1f} megapixels",
        )
    return image


def request_options(message: pb.EnhanceOptions, image: ImageInfo) -> EnhanceOptions:
    """The request's options, checked by the same `validate()` the clients run ("" model: the default)."""
    try:
        options = wire.request_options(message, image)
        options.validate()
    except ValueError as error:
        raise invalid(str(error)) from None
    return options


def start_message(request: pb.EnhanceRequest) -> pb.EnhanceStart:
    if request.WhichOneof("message") != "start":
        raise invalid("the first message of an Enhance call must be `start` (image header and options)")
    if not request.start.HasField("image"):
        raise invalid("the start message has no image header")
    return request.start


class SampleCollector:
    """Collects an image's chunks, as they arrive, into one buffer of exactly the announced size.

    Chunks are 1-4 MiB; only the one that completes the image may be smaller. Extra bytes, a second
    start message or a stream that ends early are refused. The buffer grows with the bytes that really
    arrive, so a header announcing a huge image costs nothing until its bytes come.
    """

    def __init__(self, spec: ImageInfo) -> None:
        self._spec = spec
        self._buffer = bytearray()
        self._messages = 1  # the start message came first
        self._short_chunk = 0  # number of a chunk under 1 MiB; only the last chunk may be one

    @property
    def received(self) -> int:
        return len(self._buffer)

    def add(self, request: pb.EnhanceRequest) -> None:
        self._messages += 1
        if request.WhichOneof("message") != "chunk":
            raise invalid(
                f"message {self._messages} of the upload is not a chunk; `start` must come exactly once"
            )
        index = self._messages - 1
        size = len(request.chunk)
        spec = self._spec
        if len(self._buffer) + size > spec.nbytes:
            raise invalid(
                f"too many bytes: a {spec.width}x{spec.height} image with {spec.channels} {spec.sample_type}"
                f" channels has {spec.nbytes} bytes, got at least {len(self._buffer) + size}"
            )
        if self._short_chunk or size == 0 or size > wire.MAX_CHUNK:
            short = self._short_chunk
            bad, bad_size = (short, "under 1 MiB") if short else (index, f"{size} bytes")
            raise invalid(f"chunk {bad} has {bad_size}; chunks are 1-4 MiB, only the last may be smaller")
        if size < wire.MIN_CHUNK:
            self._short_chunk = index
        self._buffer += request.chunk

    def finish(self) -> bytearray:
        """The whole image's samples; refuses an upload that ended early."""
        received, expected = len(self._buffer), self._spec.nbytes
        if received != expected:
            raise invalid(f"the upload ended early: received {received} of {expected} bytes")
        return self._buffer
