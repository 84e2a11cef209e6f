"""A worker for the dialog's background calls to the backend (the preview, the time estimate): only the
newest request matters, so a new one supersedes the one running and nothing older is ever shown."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import transport

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")


def _nowhere(outcome: object) -> None:
    """Where results go once the runner is stopped."""


class Superseded(Exception):
    """A newer request was made: this one stops (the backend drops its job)."""


class NewestOnly(Generic[Job, Outcome]):
    """Runs the newest job in one worker thread: a new request cancels the running one, and at most one
    job is ever with the backend. `deliver` gets each outcome (or the BackendError) that was not
    superseded, on the worker thread."""

    def __init__(
        self,
        run: Callable[[Job, Callable[[], bool]], Outcome],
        deliver: Callable[[Outcome | transport.BackendError], None],
        what: str,
    ) -> None:
        """`what` names the work in a failure's message ("The preview failed (…)")."""
        self._run = run
        self._what = what
        self._deliver = deliver
        self._lock = threading.Lock()
        self._pending: Job | None = None
        self._cancel = threading.Event()
        self._worker: threading.Thread | None = None
        self._stopped = False

    def request(self, job: Job) -> None:
        with self._lock:
            if self._stopped:
                return
            self._pending = job
            self._cancel.set()  # the running job, if any, stops at its next progress message
            if self._worker is None:  # the worker clears this, under the lock, as it ends
                name = f"ai-enhance {self._what}"
                self._worker = threading.Thread(target=self._work, name=name, daemon=True)
                self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what runs and wait (a little) for the worker to end. A worker still waiting for the
        backend then delivers nothing, and it no longer holds `deliver` (with it, the dialog's GTK
        widgets and GIMP objects): they are never released on its thread."""
        with self._lock:
            self._stopped = True
            self._pending = None
            self._cancel.set()
            self._deliver = _nowhere
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._worker = None
                    return
                cancel = self._cancel = threading.Event()
            try:
                outcome: Outcome | transport.BackendError = self._run(job, cancel.is_set)
            except Superseded:
                continue
            except transport.BackendError as error:
                outcome = error
            except Exception as error:  # a bug: say so in the dialog, keep the worker going
                outcome = transport.BackendError(f"{self._what} failed ({type(error).__name__}: {error}).")
            with self._lock:
                deliver = None if cancel.is_set() or self._stopped else self._deliver
            if deliver is not None:
                deliver(outcome)
