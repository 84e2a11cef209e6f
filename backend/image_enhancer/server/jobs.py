"""The job queue: a bounded first-come-first-served queue and the one worker thread that owns the engine.

Calls upload and download images concurrently; only the worker runs the engine, so the GPU (or the
CPU cores) serve one job at a time at full speed. A job's events (queue position, progress, the result
or the error) flow back to its call through the job's `deliver` function.

Slots are taken when an upload *starts* (so a full queue refuses a client before it sends megabytes)
and given back when the job starts running, is cancelled, or its upload fails.

A finished job's result stays in memory until its call has sent it all (or gave up on a client that
stopped reading). Those results are held against a byte budget: while they hold the budget or more, the
worker starts no new job, so jobs wait in the queue (and, once it is full, new calls are refused) instead
of the server's memory growing with every client that stops reading. At most the budget plus one result
is held.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from image_enhancer.engine.enhancer import Progress
from image_enhancer.request import EnhanceOptions
from image_enhancer.server import DEFAULT_MAX_RESULT_MIB
from image_enhancer.wire import MIB

log = logging.getLogger(__name__)

DEFAULT_MAX_RESULT_BYTES = DEFAULT_MAX_RESULT_MIB * MIB

Runner = Callable[[np.ndarray, EnhanceOptions, Callable[[Progress], None], Callable[[], bool]], np.ndarray]
# Other work that needs the engine (timing a model for an estimate): called with the job's `is_cancelled`.
Task = Callable[[Callable[[], bool]], object]


class QueueFullError(Exception):
    """Every slot of the queue is taken."""


@dataclass(frozen=True)
class Event:
    """What a job's RPC thread receives: exactly one of the fields is set."""

    progress: Progress | None = None
    queue_position: int = 0
    result: Any = None  # the enhanced image, or what a task returned
    error: BaseException | None = None


class Job:
    """One request on its way through the queue: an image to enhance with `options`, or a `task` that
    needs the engine. Cancelling is safe from any thread at any time.

    `deliver` receives the job's events, from whichever thread posts them (the worker, or the queue
    when positions change); it must not block.
    """

    def __init__(
        self,
        pixels: np.ndarray | None,
        options: EnhanceOptions,
        deliver: Callable[[Event], None],
        task: Task | None = None,
    ) -> None:
        self.pixels = pixels
        self.options = options
        self.task = task
        self._deliver = deliver
        self._cancelled = threading.Event()
        self.owner: JobQueue | None = None  # set when queued, so that cancelling can dequeue it
        self.result_bytes = 0  # of the result budget, held from the result's making until `finished`

    def cancel(self) -> None:
        self._cancelled.set()
        if self.owner is not None:
            self.owner.discard(self)

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def post(self, event: Event) -> None:
        try:
            self._deliver(event)
        except Exception:  # a receiver that went away must not take the worker down with it
            log.debug("an event for a finished call was dropped", exc_info=True)


class JobQueue:
    """Bounded FIFO of jobs and the worker thread that runs them one at a time."""

    def __init__(
        self,
        run: Runner,
        max_waiting: int,
        warm_up: Callable[[], Any] | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if max_waiting < 1:
            raise ValueError(f"the queue must hold at least one job, got {max_waiting}")
        if max_result_bytes < 1:
            raise ValueError(f"the result budget must be at least one byte, got {max_result_bytes}")
        self.max_waiting = max_waiting
        self.max_result_bytes = max_result_bytes
        self._result_bytes = 0  # held by results not yet sent in full
        self._run = run
        self._warm_up = warm_up
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._slots_taken = 0
        self._running: Job | None = None
        self._stopping = False
        self.ready = threading.Event()  # set once warm-up has finished (or failed)
        self._thread = threading.Thread(target=self._work, name="enhancer-worker", daemon=True)

    @property
    def slots_taken(self) -> int:
        """Jobs uploading or waiting (not the running one)."""
        with self._lock:
            return self._slots_taken

    @property
    def result_bytes(self) -> int:
        """Bytes held by finished jobs' results that their calls have not sent in full yet."""
        with self._lock:
            return self._result_bytes

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Cancel whatever is queued or running and end the worker; False when it is still busy after
        ``timeout`` (inside a runtime's code that cannot be stopped)."""
        with self._lock:
            self._stopping = True
            jobs = list(self._waiting) + ([self._running] if self._running else [])
            self._lock.notify_all()
        for job in jobs:
            job.cancel()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def reserve(self) -> None:
        """Take a slot for an upload about to start; QueueFullError when none is free."""
        with self._lock:
            if self._slots_taken >= self.max_waiting:
                raise QueueFullError(
                    f"the job queue is full ({self.max_waiting} jobs waiting); try again when one finishes"
                )
            self._slots_taken += 1

    def release(self) -> None:
        """Give back a slot whose upload failed."""
        with self._lock:
            self._slots_taken -= 1

    def submit(self, job: Job) -> None:
        """Queue a job whose upload has finished (its slot was reserved before the upload)."""
        with self._lock:
            job.owner = self
            if job.is_cancelled():
                self._slots_taken -= 1
                return
            self._waiting.append(job)
            job.post(Event(queue_position=self._position(len(self._waiting) - 1)))
            self._lock.notify_all()

    def finished(self, job: Job) -> None:
        """The job's call is over (its result sent, or the call ended without it): its result no longer
        counts against the budget. Call it after `job.cancel()` when the call ends early, so that a
        result made meanwhile is never held."""
        with self._lock:
            if job.result_bytes:
                self._result_bytes -= job.result_bytes
                job.result_bytes = 0
                self._lock.notify_all()

    def discard(self, job: Job) -> None:
        """Take a cancelled job out of the queue and tell the jobs behind it that they moved up."""
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
                self._slots_taken -= 1
                self._announce_positions()

    def _position(self, index: int) -> int:
        """Jobs ahead of the job at `index` of the waiting list, counting the running one."""
        return index + (1 if self._running is not None else 0)

    def _announce_positions(self) -> None:
        for index, job in enumerate(self._waiting):
            job.post(Event(queue_position=self._position(index)))

    def _next_job(self) -> Job | None:
        with self._lock:
            self._running = None
            told = False
            while not self._stopping and (not self._waiting or self._result_bytes >= self.max_result_bytes):
                if self._waiting and not told:
                    log.info(
                        "%d job(s) wait: results their clients have not read hold %.0f of %.0f MiB",
                        len(self._waiting), self._result_bytes / MIB, self.max_result_bytes / MIB,
                    )
                    told = True
                self._lock.wait()
            if self._stopping:
                return None
            job = self._waiting.popleft()
            self._slots_taken -= 1
            self._running = job
            self._announce_positions()
            return job

    def _hold(self, job: Job, result: np.ndarray) -> None:
        """Count a finished result against the budget, unless its call has already ended."""
        with self._lock:
            if not job.is_cancelled():
                job.result_bytes = result.nbytes
                self._result_bytes += result.nbytes

    def _work(self) -> None:
        if self._warm_up is not None:
            try:
                self._warm_up()
            except Exception:  # the server still answers (e.g. NOT_FOUND for a missing model)
                log.exception("warm-up failed")
        self.ready.set()
        while (job := self._next_job()) is not None:
            pixels, job.pixels = job.pixels, None  # the worker holds the only reference while it runs
            try:
                if job.task is not None:
                    result = job.task(job.is_cancelled)
                else:
                    assert pixels is not None
                    result = self._run(
                        pixels, job.options, lambda p, job=job: job.post(Event(progress=p)), job.is_cancelled
                    )
            except BaseException as error:  # delivered to the job's RPC thread, which maps it to a status
                job.post(Event(error=error))
            else:
                if isinstance(result, np.ndarray):
                    self._hold(job, result)
                job.post(Event(result=result))
                del result
            del pixels
