"""The dialog's time estimate, without GIMP or GTK: asked of the backend for the layers' real sizes.

A backend of protocol 3 estimates a job from the work its model really does on an image of that size
(the model's own scale, the window plan, the runtime and precision it picks for that size), timing what
it never measured first: a few seconds for x4plus, once. An older backend only lists one speed per
model, which the preview's small crop measured (on a CPU often with another runtime than the layer
gets: x4plus was put at half its real time); then that is what the estimate comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import settings
import transport
from newest import Superseded

from image_enhancer.client.core import EnhancerError
from image_enhancer.client.lite import LiteClient
from image_enhancer.request import EnhanceOptions
from image_enhancer.wire import ESTIMATE_PROTOCOL_VERSION, ModelInfo

MEASURING = "Time: being measured on {where}…"
ANSWER_TIMEOUT_S = 600.0  # waits behind the backend's queued jobs (a preview of x4plus, another job)


@dataclass(frozen=True)
class LayerWork:
    """What the cost of one layer's job depends on besides the options."""

    width: int
    height: int
    channels: int
    varying_alpha: bool  # the model makes its alpha in a second pass


@dataclass(frozen=True)
class EstimateJob:
    layers: tuple[LayerWork, ...]
    options: EnhanceOptions


@dataclass(frozen=True)
class Answer:
    job: EstimateJob
    seconds: float | None  # None: see `problem`
    problem: str = ""


def ask_backend(address: str, job: EstimateJob, cancelled: Callable[[], bool]) -> Answer:
    """The seconds the backend at `address` expects the job's layers to take, one after another, or why
    it cannot say."""
    try:
        with LiteClient(address) as client:
            seconds = 0.0
            for layer in job.layers:
                if cancelled():
                    raise Superseded
                seconds += client.estimate_time(
                    layer.width, layer.height, layer.channels, options=job.options,
                    varying_alpha=layer.varying_alpha, timeout=ANSWER_TIMEOUT_S, cancelled=cancelled,
                ).seconds  # fmt: skip
    except EnhancerError as error:
        if error.kind == "cancelled" and cancelled():
            raise Superseded from None  # the backend dropped the question: OK's job is not kept waiting
        return Answer(job, None, transport.explain(error))
    return Answer(job, seconds)


class TimeEstimates:
    """The dialog's time line: answers kept per job; the backend is asked (in the background, through
    `ask`) for a job it has not answered yet."""

    def __init__(self, protocol_version: int, device: str, ask: Callable[[EstimateJob], None]) -> None:
        self._by_request = protocol_version >= ESTIMATE_PROTOCOL_VERSION
        self._device = device
        self._ask = ask
        self._known: dict[EstimateJob, Answer] = {}
        self._asked: EstimateJob | None = None

    def answered(self, outcome: Answer | transport.BackendError) -> None:
        """An answer from the background (a failure of the asking itself belongs to the last question)."""
        if isinstance(outcome, transport.BackendError):
            if self._asked is None:
                return
            outcome = Answer(self._asked, None, str(outcome))
        self._known[outcome.job] = outcome

    def line(self, job: EstimateJob, model: ModelInfo) -> str:
        """What the dialog says of the time now; asks the backend when it is not known yet."""
        if not self._by_request:
            sizes = [(layer.width, layer.height) for layer in job.layers]
            return settings.estimate_text(settings.network_jobs(sizes, model), model, self._device)
        known = self._known.get(job)
        if known is not None and known.seconds is None:
            return f"Time: unknown ({known.problem})"
        if known is not None:
            return settings.time_text(known.seconds, self._device)
        if self._asked != job:
            self._asked = job
            self._ask(job)
        return MEASURING.format(where=settings.device_words(self._device))
