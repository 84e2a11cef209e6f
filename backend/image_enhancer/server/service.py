"""The Enhancer gRPC service (asyncio): protobuf messages in, the job queue and model store behind,
messages out.

This is the only module that converts between protobuf messages and the engine's and store's types.
Calls are coroutines on the server's event loop, so a client that opens a stream and sends nothing
costs no thread: idle or slow uploads cannot starve health checks or other calls. The engine runs on
the job queue's worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import TypeVar

import grpc
import numpy as np

import image_enhancer
from image_enhancer import wire
from image_enhancer.engine import pixels
from image_enhancer.engine.enhancer import Enhancer, ImageTooLargeError, JobCancelled
from image_enhancer.paths import user_home
from image_enhancer.request import EnhanceOptions, shorten
from image_enhancer.server import validation
from image_enhancer.server.device_info import describe_device
from image_enhancer.server.jobs import Event, Job, JobQueue, QueueFullError
from image_enhancer.server.model_speed import ModelSpeeds, suggested_model
from image_enhancer.server.validation import RequestError
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.v1 import enhancer_pb2_grpc
from image_enhancer.weights.safe_load import WeightsError
from image_enhancer.weights.store import INSTALL_COMMAND
from image_enhancer.wire import PROTOCOL_VERSION, ModelInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

SPEEDS_FILE = "throughput.json"  # in the user cache: measured model speeds, per device
# How long a short upload waits for a cancellation that may be on its way (see Upload.ended_early).
CANCEL_SETTLE_S = 0.1
# Longest status message sent: gRPC carries it in a header, and a long one would not arrive at all.
MAX_STATUS_MESSAGE = 1000


@dataclass(frozen=True)
class UploadLimits:
    """How long a client may take to send its image.

    `idle_s`: the longest silence between two messages (the start message included). The whole upload
    must also finish within `idle_s` plus the time its bytes take at `min_bytes_per_s`, so a client
    that drips a few bytes at a time cannot hold a queue slot for ever.
    """

    idle_s: float = 60.0
    min_bytes_per_s: float = 256 * 1024

    def deadline_for(self, nbytes: int, started: float) -> float:
        return started + self.idle_s + nbytes / self.min_bytes_per_s


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and human message a failure is reported with."""
    code, message = _status_for(error)
    if len(message) > MAX_STATUS_MESSAGE:
        message = message[: MAX_STATUS_MESSAGE - 1] + "…"
    return code, message


def _status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, RequestError):
        return error.code, error.message
    if isinstance(error, QueueFullError | ImageTooLargeError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, MemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the server ran out of memory; try a smaller image or tile"
    if isinstance(error, JobCancelled):
        return grpc.StatusCode.CANCELLED, "the job was cancelled"
    if isinstance(error, WeightsError):
        # The server's own files are damaged, not the request: its message says how to reinstall.
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, LookupError):
        return grpc.StatusCode.NOT_FOUND, str(error).strip("'\"")
    if isinstance(error, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"


async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result, or TimeoutError after `seconds`. Unlike `asyncio.wait_for`, it runs in the
    calling task: gRPC cancels the call's own task when the client goes away, and a read running in a
    task of its own would hide that."""
    if hasattr(asyncio, "timeout"):  # Python 3.11+
        async with asyncio.timeout(seconds):
            return await awaitable
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if expired:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()


class Upload:
    """An Enhance call's incoming messages, each awaited no longer than the limits allow."""

    def __init__(self, requests: AsyncIterator[pb.EnhanceRequest], limits: UploadLimits) -> None:
        self._requests = requests
        self._limits = limits
        self._started = time.monotonic()
        self._deadline: float | None = None

    def expect(self, nbytes: int) -> None:
        """The image has `nbytes` bytes: from now on the whole upload has a deadline."""
        self._deadline = self._limits.deadline_for(nbytes, self._started)

    @staticmethod
    async def ended_early() -> None:
        """Called when the messages stop before the image is complete. A call the client cancelled
        (or that gRPC ended, e.g. for a message over the size limit) looks just like that at first;
        its cancellation reaches this task a moment later, and is then reported as what it is rather
        than as a short upload."""
        await asyncio.sleep(CANCEL_SETTLE_S)

    async def next(self) -> pb.EnhanceRequest | None:
        """The next message, or None when the client has finished sending."""
        idle = self._limits.idle_s
        remaining = idle if self._deadline is None else self._deadline - time.monotonic()
        try:
            return await _within(min(idle, max(remaining, 0.0)), anext(self._requests))
        except StopAsyncIteration:
            return None
        except TimeoutError:
            if remaining < idle:
                took = time.monotonic() - self._started
                raise RequestError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"upload timed out after {took:.0f} s: this image has to arrive at "
                    f"{self._limits.min_bytes_per_s / 1024:.0f} KiB/s or faster",
                ) from None
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"upload timed out after {idle:g} s without data from the client",
            ) from None


class EnhancerService(enhancer_pb2_grpc.EnhancerServicer):
    def __init__(self, enhancer: Enhancer, jobs: JobQueue, limits: UploadLimits) -> None:
        self._enhancer = enhancer
        self._store = enhancer.store
        self._jobs = jobs
        self._max_pixels = enhancer.max_pixels
        self._limits = limits
        self._device = describe_device(enhancer.compute)
        self._speeds = ModelSpeeds(self._device[1], user_home() / SPEEDS_FILE)

    # --- Enhance -------------------------------------------------------------------------------------

    async def Enhance(
        self, request_iterator: AsyncIterator[pb.EnhanceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EnhanceResponse]:
        peer = context.peer()
        try:
            try:
                async for response in self._enhance(request_iterator):
                    yield response
            except Exception as error:  # every failure becomes a status with a message, never a crash
                code, message = status_for(error)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("Enhance from %s failed", peer)
                else:
                    log.info("Enhance from %s: %s: %s", peer, code.name, message)
                await context.abort(code, message)
        except asyncio.CancelledError:
            # Ordinary client behaviour (cancel, disconnect, its own deadline): not a fault.
            log.info("Enhance from %s: the client cancelled or went away", peer)
            raise

    async def _enhance(self, requests: AsyncIterator[pb.EnhanceRequest]) -> AsyncIterator[pb.EnhanceResponse]:
        upload = Upload(requests, self._limits)
        first = await upload.next()
        if first is None:
            await upload.ended_early()
            raise validation.invalid("the Enhance call ended before its start message")
        start = validation.start_message(first)
        spec = validation.image_info(start.image, self._max_pixels)
        options = await self._with_model(validation.request_options(start.options, spec))
        upload.expect(spec.nbytes)

        self._jobs.reserve()
        try:
            collector = validation.SampleCollector(spec)
            while (request := await upload.next()) is not None:
                collector.add(request)
            if collector.received < spec.nbytes:
                await upload.ended_early()
            samples = collector.finish()
            image = pixels.from_bytes(samples, spec.width, spec.height, spec.channels, spec.sample_type)
        except BaseException:
            self._jobs.release()
            raise
        del samples, collector  # `image` is a view of the same buffer

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = Job(image, options, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        del image
        self._jobs.submit(job)
        result = None
        model_ready_at = None  # when loading ended: the model's work is timed from there
        try:
            while result is None:
                event = await events.get()
                if _model_loaded(event):
                    model_ready_at = time.perf_counter()
                message = self._handle_event(event)
                if isinstance(message, pb.EnhanceResponse):
                    yield message
                else:
                    result = message
        finally:
            if result is None:  # the client left, or the job failed: stop any work still pending
                job.cancel()
        if model_ready_at is not None:
            made = result.shape[0] * result.shape[1]
            took = time.perf_counter() - model_ready_at
            await asyncio.to_thread(self._speeds.record, options.model, made, took)  # writes a file

        height, width = result.shape[:2]
        channels = result.shape[2] if result.ndim == 3 else 1
        header = wire.header_message(
            wire.ImageInfo(width, height, channels, spec.sample_type, spec.colour_encoding)
        )
        # A large result takes a moment to convert: off the event loop, so other calls go on meanwhile.
        data = await asyncio.to_thread(pixels.to_bytes, result)
        del result
        yield pb.EnhanceResponse(result=header)
        for offset in range(0, len(data), wire.MAX_CHUNK):
            yield pb.EnhanceResponse(chunk=data[offset : offset + wire.MAX_CHUNK])

    @staticmethod
    def _handle_event(event: Event) -> pb.EnhanceResponse | np.ndarray:
        """A progress message to send on, or the finished result; a failed job's error is raised."""
        if event.error is not None:
            raise event.error
        if event.result is not None:
            return event.result
        if event.progress is not None:
            p = event.progress
            return pb.EnhanceResponse(progress=pb.Progress(stage=p.stage, done=p.done, total=p.total))
        return pb.EnhanceResponse(progress=pb.Progress(stage="queued", queue_position=event.queue_position))

    async def _models(self) -> list[ModelInfo]:
        # Listing may read a newly dropped-in model file: off the event loop.
        return await asyncio.to_thread(self._store.list)

    async def _with_model(self, options: EnhanceOptions) -> EnhanceOptions:
        """The options with the model named ("" is the default); unknown or uninstalled models and a
        strength the model cannot take are refused before the upload, not after it."""
        models = await self._models()
        info = wire.find_model(models, options.model)
        if info is None:
            names = ", ".join(m.name for m in models)
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"unknown model {shorten(options.model)}; known models: {names}"
            )
        if not info.installed:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"model {info.name!r} is not installed; install it with: "
                f"{INSTALL_COMMAND} --models {info.name}",
            )
        if options.strength is not None and not info.has_strength:
            raise validation.invalid(
                f"model {info.name!r} takes no strength: that needs its faithful/sharp (PSNR/GAN) pair, "
                "both installed"
            )
        return replace(options, model=info.name)

    # --- metadata ------------------------------------------------------------------------------------

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                wire.model_message(_with_speed(m, *self._speeds.speed(m.name))) for m in await self._models()
            ]
        )

    async def DescribeServer(
        self, request: pb.DescribeServerRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerDescription:
        device, name, memory = self._device
        return pb.ServerDescription(
            version=image_enhancer.__version__,
            device=device,
            device_name=name,
            device_memory_bytes=memory,
            max_queue=self._jobs.max_waiting,
            max_pixels=self._max_pixels,
            default_model=self._store.default_model,
            protocol_version=PROTOCOL_VERSION,
            suggested_model=suggested_model(self._store, on_gpu=self._enhancer.compute.key != "cpu"),
        )


def _model_loaded(event: Event) -> bool:
    """The engine's event that ends model loading: the model's own work starts there."""
    p = event.progress
    return p is not None and p.stage == "loading model" and p.total > 0 and p.done == p.total


def _with_speed(info: ModelInfo, output_pixels_per_second: float, job_fixed_seconds: float) -> ModelInfo:
    return replace(
        info, output_pixels_per_second=output_pixels_per_second, job_fixed_seconds=job_fixed_seconds
    )
