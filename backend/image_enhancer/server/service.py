"""The Enhancer gRPC service (asyncio): protobuf messages in, the job queue and model store behind,
messages out.

This is the only module that converts between protobuf messages and the engine's and store's types.
Calls are coroutines on the server's event loop, so a client that opens a stream and sends nothing
costs no thread: idle or slow uploads cannot starve health checks or other calls. The engine runs on
the job queue's worker thread.

Replies are written one message at a time, each within the reader idle limit: gRPC's write waits while
the client's flow-control window is full, so a client that stops reading is noticed there, dropped with
DEADLINE_EXCEEDED, and its result freed. Ordinary client and shutdown events are one INFO line each.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import grpc
import numpy as np

import image_enhancer
from image_enhancer import wire
from image_enhancer.engine import pixels
from image_enhancer.engine.enhancer import ImageTooLargeError, JobCancelled
from image_enhancer.estimate import JobShape, Planner
from image_enhancer.faces.catalogue import FaceModels
from image_enhancer.paths import user_home
from image_enhancer.request import EnhanceOptions, shorten
from image_enhancer.server import DEFAULT_READER_IDLE_S, validation
from image_enhancer.server.device_info import describe_device
from image_enhancer.server.jobs import Event, Job, JobQueue, QueueFullError
from image_enhancer.server.model_install import InstallCancelled, ModelInstaller, ProvisionError
from image_enhancer.server.model_speed import ModelSpeeds, suggested_model
from image_enhancer.server.validation import RequestError
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.v1 import enhancer_pb2_grpc
from image_enhancer.weights.safe_load import WeightsError
from image_enhancer.weights.store import INSTALL_COMMAND, Survey
from image_enhancer.wire import PROTOCOL_VERSION, ModelInfo, TimeEstimate, printable

log = logging.getLogger(__name__)
T = TypeVar("T")

SPEEDS_FILE = "network_throughput.json"  # in the user cache: network pixels per second, per device
# How long a short upload waits for a cancellation that may be on its way (see Upload.ended_early).
CANCEL_SETTLE_S = 0.1
# Longest status message sent: gRPC carries it in a header, and a long one would not arrive at all.
MAX_STATUS_MESSAGE = 1000
# Results go out in the smallest chunks the wire allows: a client that stops reading leaves at most one
# of them in gRPC's buffers, and a slow but steady reader is never taken for one that stopped.
RESULT_CHUNK = wire.MIN_CHUNK


class ReaderStalled(Exception):
    """The client took none of its reply for the reader idle limit."""


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
    if isinstance(error, ReaderStalled):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error)
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


class Replies:
    """An Enhance call's outgoing messages, each of which the client must start taking within `idle_s`.

    gRPC says only when a message found room in the client's flow-control window, not when the client
    read it; so a message also waits while the client reads the ones before it, and a client that lags
    many messages behind looks idle for as long as those take it (a reader pausing 0.3 s per message
    with ten small progress messages ahead of a result chunk waits 3 s for the chunk)."""

    def __init__(self, context: grpc.aio.ServicerContext, idle_s: float) -> None:
        self._context = context
        self._idle_s = idle_s

    async def send(self, message: pb.EnhanceResponse) -> None:
        try:
            await _within(self._idle_s, self._context.write(message))
        except TimeoutError:
            raise ReaderStalled(
                f"the client took no data for {self._idle_s:g} s: the call was dropped and its result freed"
            ) from None
        except grpc.aio.InternalError:
            # The message could not be sent: the client cancelled or went away, and its cancellation
            # reaches this task a moment later (then reported as what it is, not as a failure).
            await Upload.ended_early()
            raise


class EnhancerService(enhancer_pb2_grpc.EnhancerServicer):
    def __init__(
        self,
        planner: Planner,
        jobs: JobQueue,
        limits: UploadLimits,
        reader_idle_s: float = DEFAULT_READER_IDLE_S,
        face_models: FaceModels | None = None,
    ) -> None:
        """`planner` estimates jobs from the times `jobs` records through it (see `serve`)."""
        enhancer = planner.enhancer
        self._planner = planner
        self._enhancer = enhancer
        self._face_models = face_models
        self._store = enhancer.store
        self._jobs = jobs
        self._max_pixels = enhancer.max_pixels
        self._limits = limits
        self._reader_idle_s = reader_idle_s
        self._device = describe_device(enhancer.compute)
        self._speeds = ModelSpeeds(self._device[1], user_home() / SPEEDS_FILE)
        self._stopping = False
        self._endings: set[asyncio.Future] = set()  # statuses still waiting to be sent (see _end)
        self._installer = ModelInstaller(self._store, user_home() / "downloads")

    def stopping(self) -> None:
        """The server is shutting down: calls it ends are logged as that, not as clients leaving."""
        self._stopping = True

    # --- Enhance -------------------------------------------------------------------------------------

    async def Enhance(
        self, request_iterator: AsyncIterator[pb.EnhanceRequest], context: grpc.aio.ServicerContext
    ) -> None:
        peer = context.peer()
        try:
            failure = None
            try:
                await self._enhance(request_iterator, Replies(context, self._reader_idle_s))
            except grpc.aio.BaseError:
                raise  # gRPC's own, e.g. a reply that could not go to a client that left: it knows them
            except Exception as error:  # every failure becomes a status with a message, never a crash
                failure = status_for(error)
                if failure[0] == grpc.StatusCode.INTERNAL:
                    log.exception("Enhance from %s failed", peer)
                else:
                    log.info("Enhance from %s: %s: %s", peer, failure[0].name, failure[1])
            # Outside the handler: the error's frames (which may hold the result) are freed by now.
            if failure is not None:
                await self._end(context, *failure)
        except asyncio.CancelledError:
            # Ordinary client behaviour (cancel, disconnect, its own deadline) or shutdown: not a fault.
            if self._stopping:
                log.info("Enhance from %s: ended because the server is stopping", peer)
            elif _deadline_passed(context):
                log.info("Enhance from %s: the client's deadline passed", peer)
            else:
                log.info("Enhance from %s: the client cancelled or went away", peer)
            raise

    async def _end(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        """End the call with `code` and `message`. The status goes out after every reply already written,
        which a client that stopped reading may never take: it is sent from a task of its own, so this
        call ends now and frees what it held (gRPC keeps the unsent messages until the client reads them,
        cancels or disconnects)."""
        ending = asyncio.ensure_future(context.abort(code, message))
        self._endings.add(ending)
        ending.add_done_callback(self._ended)
        await asyncio.wait([ending], timeout=CANCEL_SETTLE_S)  # at once, unless the client is not reading

    def _ended(self, ending: asyncio.Future) -> None:
        self._endings.discard(ending)
        if ending.cancelled():
            return
        error = ending.exception()
        # AbortError once the status is sent; gRPC's batch error when the client left before taking it.
        if not isinstance(error, grpc.aio.AbortError | grpc.aio.InternalError):
            log.error("sending a status failed", exc_info=error)

    async def _enhance(self, requests: AsyncIterator[pb.EnhanceRequest], replies: Replies) -> None:
        upload = Upload(requests, self._limits)
        first = await upload.next()
        if first is None:
            await upload.ended_early()
            raise validation.invalid("the Enhance call ended before its start message")
        start = validation.start_message(first)
        spec = validation.image_info(start.image, self._max_pixels)
        options, model_scale = await self._with_model(validation.request_options(start.options, spec))
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
        try:
            # The model's work follows its own scale, not the one asked for (×2 from a ×4 model is ×4's).
            network_pixels = spec.width * spec.height * model_scale**2
            result = await self._outcome(events, replies, options.model, network_pixels)
            height, width = result.shape[:2]
            channels = result.shape[2] if result.ndim == 3 else 1
            header = wire.header_message(
                wire.ImageInfo(width, height, channels, spec.sample_type, spec.colour_encoding)
            )
            # A large result may take a moment to lay out: off the event loop, so other calls go on.
            data = await asyncio.to_thread(_wire_bytes, result)
            del result  # `data` is the one copy kept while it is sent
            await replies.send(pb.EnhanceResponse(result=header))
            for offset in range(0, len(data), RESULT_CHUNK):
                await replies.send(pb.EnhanceResponse(chunk=data[offset : offset + RESULT_CHUNK].tobytes()))
        finally:
            job.cancel()  # the client left or the job failed: stop any work still pending (else a no-op)
            self._jobs.finished(job)  # its result no longer counts against the budget

    async def _outcome(
        self, events: asyncio.Queue[Event], replies: Replies, model: str, network_pixels: int
    ) -> np.ndarray:
        """Send the job's progress on until its result arrives; a failed job's error is raised."""
        model_ready_at = None  # when loading ended: the model's work is timed from there
        while True:
            event = await events.get()
            if _model_loaded(event):
                model_ready_at = time.perf_counter()
            message = self._handle_event(event)
            if not isinstance(message, pb.EnhanceResponse):
                break
            await replies.send(message)
        if model_ready_at is not None and network_pixels:
            took = time.perf_counter() - model_ready_at
            await asyncio.to_thread(self._speeds.record, model, network_pixels, took)  # writes a file
        return message

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

    async def _models(self) -> Survey:
        # Listing may read a newly dropped-in model file: off the event loop.
        return await asyncio.to_thread(self._store.survey)

    async def _with_model(self, options: EnhanceOptions) -> tuple[EnhanceOptions, int]:
        """The options with the model named ("" is the default), and the model's own scale; unknown or
        uninstalled models and a strength the model cannot take are refused before the upload, not after
        it. Faces only uses no enhancement model: none is checked (scale 0: no model work to time)."""
        if options.faces_only:
            return replace(options, model=""), 0
        survey = await self._models()
        models = survey.models
        info = wire.find_model(models, options.model)
        broken = next((b for b in survey.broken if b.name in (options.model, printable(options.model))), None)
        if info is None and broken is not None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the model file {broken.file} in the server's models folder cannot be used: {broken.reason}",
            )
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
        return replace(options, model=info.name), info.scale

    # --- EstimateTime --------------------------------------------------------------------------------

    async def EstimateTime(
        self, request: pb.EstimateTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TimeEstimate:
        try:
            return await self._estimate(request)
        except Exception as error:  # a status with a message, as Enhance's
            code, message = status_for(error)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("EstimateTime from %s failed", context.peer())
        await context.abort(code, message)  # outside the handler, as Enhance's: it raises
        raise AssertionError("unreachable: abort raises")

    async def _estimate(self, request: pb.EstimateTimeRequest) -> pb.TimeEstimate:
        """The job's estimate, made on the engine's worker: it may time the model first, and the engine
        runs one thing at a time (so the answer waits for the jobs queued before it)."""
        spec = validation.image_info(request.image, self._max_pixels)
        options, _ = await self._with_model(validation.request_options(request.options, spec))
        if options.faces_only:
            raise validation.invalid("restoring faces only runs no enhancement model: no time to estimate")
        second_pass = request.varying_alpha and spec.channels in (2, 4) and options.alpha_mode == "model"
        shape = JobShape(spec.height, spec.width, spec.channels, 2 if second_pass else 1)

        def estimate(cancelled: Callable[[], bool]) -> TimeEstimate:
            seconds = self._planner.estimate(options.model, shape, options, cancelled)
            if seconds is None:
                raise RuntimeError(f"{options.model} could not be timed on this device")
            choice = self._enhancer.job_choice(shape.height, shape.width, options)
            return TimeEstimate(seconds, choice.runtime, choice.precision)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        self._jobs.reserve()
        job = Job(None, options, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), estimate)
        self._jobs.submit(job)
        try:
            while (event := await events.get()).result is None:
                if event.error is not None:
                    raise event.error
            return wire.time_estimate_message(event.result)
        finally:
            job.cancel()  # the client left: no timing for nobody
            self._jobs.finished(job)

    # --- metadata ------------------------------------------------------------------------------------

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        survey = await self._models()
        faces = await asyncio.to_thread(self._face_models.infos) if self._face_models is not None else []
        return pb.ListModelsResponse(
            models=[wire.model_message(_with_speed(m, *self._speeds.speed(m.name))) for m in survey.models],
            broken_models=[wire.broken_model_message(b) for b in survey.broken],
            face_models=[f.name for f in faces if f.installed],
            face_model_details=[wire.model_message(f) for f in faces],
        )

    async def InstallModel(
        self, request: pb.InstallModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InstallProgress]:
        """Progress of installing a manifest model, from a thread of its own (a download may take
        minutes); a client that goes away stops the download at its next block."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[wire.InstallEvent | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def put(item: wire.InstallEvent | BaseException | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def work() -> None:
            try:
                self._installer.install(request.name, put, stop.is_set)
            except BaseException as error:  # noqa: BLE001 - reported to the client below
                put(error)
            else:
                put(None)

        threading.Thread(target=work, name="install-model", daemon=True).start()
        try:
            while (item := await events.get()) is not None:
                if isinstance(item, BaseException):
                    code, message = _install_status(item, request.name)
                    log.info("InstallModel %s from %s: %s: %s", shorten(request.name), context.peer(),
                             code.name, message)
                    await context.abort(code, message)
                yield wire.install_event_message(item)
        finally:
            stop.set()

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


def _install_status(error: BaseException, name: str) -> tuple[grpc.StatusCode, str]:
    """How a failed install is reported: a download or check that failed says which and why."""
    if isinstance(error, ProvisionError):
        message = f"installing {shorten(name)} failed: {error}"
        return grpc.StatusCode.FAILED_PRECONDITION, message[:MAX_STATUS_MESSAGE]
    if isinstance(error, InstallCancelled):
        return grpc.StatusCode.CANCELLED, "the install was cancelled"
    return status_for(error)


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's own deadline has come (gRPC's clock and ours may differ by a moment)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining < CANCEL_SETTLE_S


def _wire_bytes(result: np.ndarray) -> memoryview:
    """The result's samples as the wire lays them out: a view of the array when it already is."""
    dtype = pixels.SAMPLE_DTYPES[pixels.sample_type_of(result)]
    return memoryview(np.ascontiguousarray(result, dtype=dtype)).cast("B")


def _model_loaded(event: Event) -> bool:
    """The engine's event that ends model loading: the model's own work starts there."""
    p = event.progress
    return p is not None and p.stage == "loading model" and p.total > 0 and p.done == p.total


def _with_speed(info: ModelInfo, output_pixels_per_second: float, job_fixed_seconds: float) -> ModelInfo:
    return replace(
        info, output_pixels_per_second=output_pixels_per_second, job_fixed_seconds=job_fixed_seconds
    )
