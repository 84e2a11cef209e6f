"""Progress for people, without GIMP: the backend's stage named truthfully, the percentage done, the
time spent and an estimate of the time left ("Enhancing 37 % · 0:42, about 1 min left").

The time left comes from the time spent enhancing and the fraction done (a job's work units are of
roughly equal cost), smoothed so that it does not jump with every event, and counted down between events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from image_enhancer.client.core import ProgressEvent

SMOOTHING = 0.3  # weight of the newest estimate of the job's whole duration
MIN_FRACTION = 0.02  # below this (or MIN_SECONDS) an estimate would be a guess: none is shown
MIN_SECONDS = 1.0


def elapsed_text(seconds: float) -> str:
    """A clock reading: "0:07", "1:05", "1:02:03"."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def remaining_text(seconds: float) -> str:
    """A rounded estimate: "a few seconds left", "about 40 s left", "about 3 min left"."""
    if seconds < 5:
        return "a few seconds left"
    if seconds < 60:
        return f"about {int(round(seconds / 5.0)) * 5} s left"
    if seconds < 3600:
        minutes = round(seconds / 60.0)
        return f"about {minutes} min left"
    hours, minutes = divmod(round(seconds / 60.0), 60)
    return f"about {hours} h {minutes:02d} min left"


def faces_text(restored: int, found: int) -> str:
    """What the face pass did, from its final count: "Restored 2 of 3 faces", or why nothing changed."""
    if not found:
        return "No face found: the faces were not restored (the layer has no face the detector could see)"
    text = f"Restored {restored} of {found} face{'s' if found != 1 else ''}"
    if restored < found:
        text += " (the others are too small, or too many to restore)"
    return text


@dataclass
class Eta:
    """The time left of one job's enhancing stage, from elapsed time and fraction done, smoothed."""

    started: float | None = None  # when the first enhancing event came (time.monotonic())
    total: float | None = None  # the smoothed estimate of the stage's whole duration, in seconds
    last_fraction: float = field(default=0.0)

    def update(self, fraction: float, now: float) -> float | None:
        """Seconds left after `fraction` of the work at time `now`; None while too early to say."""
        if self.started is None or fraction < self.last_fraction:  # a new stage of work began
            self.started, self.total = now, None
        self.last_fraction = fraction
        elapsed = now - self.started
        if fraction >= 1.0:
            return 0.0
        if fraction < MIN_FRACTION or elapsed < MIN_SECONDS:
            return None
        estimate = elapsed / fraction
        self.total = estimate if self.total is None else SMOOTHING * estimate + (1 - SMOOTHING) * self.total
        return max(0.0, self.total - elapsed)


@dataclass
class ProgressText:
    """Turns a job's progress events into (text, fraction or None for "busy"), as GIMP's progress bar
    shows them. One per job."""

    eta: Eta = field(default_factory=Eta)
    began: float = field(default_factory=time.monotonic)  # when the job was sent

    def __call__(self, event: ProgressEvent, now: float | None = None) -> tuple[str, float | None]:
        now = time.monotonic() if now is None else now
        if event.stage == "queued":
            ahead = event.queue_position
            return f"Waiting for the AI backend ({ahead} job{'s' if ahead != 1 else ''} ahead)", None
        if event.stage == "loading model":
            if event.total == 0 or event.done < event.total:
                return "Loading the model", None
            return "Model loaded, starting", None
        if event.stage == "enhancing" and event.total:
            fraction = min(1.0, event.done / event.total)
            left = self.eta.update(fraction, now)
            text = f"Enhancing {int(fraction * 100)} % \u00b7 {elapsed_text(now - self.began)}"
            return (text + (f", {remaining_text(left)}" if left is not None else "")), fraction
        if event.stage == "enhancing":
            return "Enhancing", None
        if event.stage == "restoring faces" and event.total:
            return f"Restoring faces ({event.done} of {event.total} done)", min(1.0, event.done / event.total)
        if event.stage == "faces restored":
            return faces_text(event.done, event.total), 1.0
        return event.stage.capitalize(), None
