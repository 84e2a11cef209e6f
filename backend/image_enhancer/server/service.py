"""The Enhancer gRPC service: protobuf messages in, the job queue and model store behind, messages out.

This is the only module that converts between protobuf messages and the engine's and store's types.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc
import numpy as np

import image_enhancer
from image_enhancer.client.core import MAX_CHUNK
from image_enhancer.engine import pixels
from image_enhancer.engine.enhancer import EnhanceOptions, Enhancer, ImageTooLargeError, JobCancelled
from image_enhancer.server import validation
from image_enhancer.server.device_info import describe_device
from image_enhancer.server.jobs import Event, Job, JobQueue, QueueFullError
from image_enhancer.server.validation import RequestError
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.v1 import enhancer_pb2_grpc
from image_enhancer.weights.safe_load import WeightsError
from image_enhancer.weights.store import INSTALL_COMMAND, ModelInfo

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
# How often an RPC thread waiting for its job checks that the client is still there.
_LIVENESS_POLL_S = 0.5
# An upload that sends nothing for this long is abandoned.
DEFAULT_UPLOAD_IDLE_S = 60.0


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and human message a failure is reported with."""
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


def watched(
    requests: Iterator[pb.EnhanceRequest], context: grpc.ServicerContext, idle_s: float
) -> Iterator[pb.EnhanceRequest]:
    """The requests, but the call is cancelled when the client sends nothing for `idle_s` seconds,
    so a stalled upload cannot hold a queue slot and a thread forever."""
    while True:
        timer = threading.Timer(idle_s, context.cancel)
        timer.daemon = True
        timer.start()
        try:
            request = next(requests, None)
        finally:
            timer.cancel()
        if request is None:
            return
        yield request


class EnhancerService(enhancer_pb2_grpc.EnhancerServicer):
    def __init__(
        self, enhancer: Enhancer, jobs: JobQueue, upload_idle_s: float = DEFAULT_UPLOAD_IDLE_S
    ) -> None:
        self._enhancer = enhancer
        self._store = enhancer.store
        self._jobs = jobs
        self._max_pixels = enhancer.max_pixels
        self._upload_idle_s = upload_idle_s

    # --- Enhance -------------------------------------------------------------------------------------

    def Enhance(
        self, request_iterator: Iterator[pb.EnhanceRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.EnhanceResponse]:
        try:
            yield from self._enhance(request_iterator, context)
        except Exception as error:  # every failure becomes a status with a message, never a crash
            code, message = status_for(error)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("Enhance failed")
            context.abort(code, message)

    def _enhance(
        self, requests: Iterator[pb.EnhanceRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.EnhanceResponse]:
        requests = watched(requests, context, self._upload_idle_s)
        first = next(requests, None)
        if first is None:
            raise validation.invalid("the Enhance call ended before its start message")
        start = validation.start_message(first)
        spec = validation.image_spec(start.image, self._max_pixels)
        options = validation.engine_options(start.options, spec, self._store.default_model)
        self._check_model(options)

        self._jobs.reserve()
        try:
            samples = validation.receive_samples(requests, spec)
            image = pixels.from_bytes(samples, spec.width, spec.height, spec.channels, spec.sample_type)
        except BaseException:
            self._jobs.release()
            raise
        del samples  # `image` is a view of the same buffer
        job = Job(image, options)
        del image
        if not context.add_callback(job.cancel):  # the client already left
            job.cancel()
        self._jobs.submit(job)

        result = None
        while result is None:
            try:
                event = job.events.get(timeout=_LIVENESS_POLL_S)
            except queue.Empty:
                if not context.is_active():
                    job.cancel()
                    return
                continue
            result = self._handle_event(event)
            if isinstance(result, pb.EnhanceResponse):
                yield result
                result = None

        header = pb.ImageHeader(
            width=result.shape[1],
            height=result.shape[0],
            channels=result.shape[2] if result.ndim == 3 else 1,
            sample_type=validation.SAMPLE_TYPE_VALUES[spec.sample_type],
            colour_encoding=start.image.colour_encoding or pb.COLOUR_ENCODING_SRGB,
        )
        data = pixels.to_bytes(result)
        del result
        yield pb.EnhanceResponse(result=header)
        for offset in range(0, len(data), MAX_CHUNK):
            yield pb.EnhanceResponse(chunk=data[offset : offset + MAX_CHUNK])

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

    def _check_model(self, options: EnhanceOptions) -> None:
        """Refuse unknown models and unsupported strength before the upload, not after it."""
        info = next((m for m in self._store.list() if m.name == options.model), None)
        if info is None:
            names = ", ".join(m.name for m in self._store.list())
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"unknown model {options.model!r}; known models: {names}"
            )
        if not info.installed:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"model {options.model!r} is not installed; install it with: "
                f"{INSTALL_COMMAND} --models {info.name}",
            )
        if options.strength is not None and not info.has_strength:
            raise validation.invalid(
                f"model {options.model!r} takes no strength: that needs its PSNR/GAN pair, both installed"
            )

    # --- metadata ------------------------------------------------------------------------------------

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_message(m) for m in self._store.list()])

    def DescribeServer(
        self, request: pb.DescribeServerRequest, context: grpc.ServicerContext
    ) -> pb.ServerDescription:
        device, name, memory = describe_device(self._enhancer.compute)
        return pb.ServerDescription(
            version=image_enhancer.__version__,
            device=device,
            device_name=name,
            device_memory_bytes=memory,
            max_queue=self._jobs.max_waiting,
            max_pixels=self._max_pixels,
            default_model=self._store.default_model,
            protocol_version=PROTOCOL_VERSION,
        )


def model_message(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        architecture=info.architecture,
        scale=info.scale,
        installed=info.installed,
        has_strength=info.has_strength,
        precisions=list(info.precisions),
        license=info.license,
        description=info.description,
        is_default=info.is_default,
    )
