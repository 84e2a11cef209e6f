"""The plug-in's side of the backend: finding it, starting it on demand, calling it, explaining failures.

No GIMP here: `report(text, fraction)` is how progress leaves this module, and every failure becomes a
`BackendError` whose message a person can act on. The installer writes `ai_enhance.json` beside the
plug-in with the address and the command that starts the backend.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from progress_text import ProgressText

from image_enhancer import wire
from image_enhancer.client.core import EnhancerError, ProgressEvent
from image_enhancer.client.lite import LiteClient
from image_enhancer.paths import backend_log
from image_enhancer.request import EnhanceOptions
from image_enhancer.safe_json import load_json
from image_enhancer.wire import DEFAULT_ADDRESS, ImageInfo, InstallEvent, ModelInfo, ServerInfo

CONFIG_NAME = "ai_enhance.json"
START_TIMEOUT = 180.0  # first start loads torch and a model; slow disks need minutes
EXIT_GRACE = 3.0
# Variables GIMP or this plug-in set for its own Python that must not leak into the backend's.
_PRIVATE_ENV = (
    "PYTHONHOME",
    "PYTHONPATH",
    "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION",
    "MULTIDICT_NO_EXTENSIONS",
)

Report = Callable[[str, "float | None"], None]  # (stage text, fraction done or None for "busy")


class BackendError(Exception):
    """A failure explained for the person in front of GIMP."""


@dataclass(frozen=True)
class BackendConfig:
    address: str = DEFAULT_ADDRESS
    command: tuple[str, ...] = ()  # empty: the plug-in never starts a backend itself
    start_timeout: float = START_TIMEOUT


def load_config(folder: Path) -> BackendConfig:
    """The installer's record beside the plug-in; defaults when there is none."""
    path = folder / CONFIG_NAME
    if not path.exists():
        return BackendConfig()
    try:
        data = load_json(path, max_bytes=256 * 1024)  # an address and a command line
        return BackendConfig(
            address=str(data.get("address") or DEFAULT_ADDRESS),
            command=tuple(str(part) for part in data.get("backend_command") or ()),
            start_timeout=float(data.get("start_timeout", START_TIMEOUT)),
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise BackendError(
            f"The plug-in's settings file {path} is damaged ({error}). Run the installer again."
        ) from None


def log_path() -> Path:
    """Where a backend started by the plug-in writes its output."""
    return backend_log()


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _spawn(command: tuple[str, ...], log: Path) -> subprocess.Popen:
    """Start the backend detached from the plug-in, so it outlives this process and keeps models loaded."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in _PRIVATE_ENV}
    detach: dict = {}
    if os.name == "nt":
        detach["creationflags"] = (
            subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        )
    else:
        detach["start_new_session"] = True
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, **detach
        )


def _health(client: LiteClient) -> str:
    """ "SERVING", "NOT_SERVING", ... "DOWN" when nothing listens, or "STARTING" when something took the
    connection but has not answered yet (`image-enhancer activate` starting the backend on demand)."""
    try:
        return client.health(timeout=2.0)
    except EnhancerError as error:
        if error.kind == "unavailable":
            return "DOWN"
        if error.kind == "deadline":
            return "STARTING"
        raise BackendError(f"The backend answered its health check with an error: {error}") from None


def _start(client: LiteClient, address: str, config: BackendConfig, report: Report) -> None:
    if address != config.address or not config.command:
        raise BackendError(
            f"No AI Enhance backend is running at {address}, and the plug-in has no command to start one "
            f"there. Start it with:  image-enhancer serve --address {address}  (or run the installer again)."
        )
    log = log_path()
    report("Starting the AI backend (the first start takes a while)", None)
    try:
        process = _spawn(config.command, log)
    except OSError as error:
        raise BackendError(
            f"No AI Enhance backend is running at {address}, and starting it failed: {error}. "
            "Run the installer again to record a working command."
        ) from None
    deadline = time.monotonic() + config.start_timeout
    exited_at: float | None = None
    while time.monotonic() < deadline:
        status = _health(client)
        if status == "SERVING":
            return
        if exited_at is None and process.poll() is not None:
            exited_at = time.monotonic()
        # It exited with nothing answering: give another instance that may have won the port a moment.
        if exited_at is not None and status == "DOWN" and time.monotonic() - exited_at > EXIT_GRACE:
            tail = _log_tail(log)
            raise BackendError(
                f"The AI Enhance backend could not be started (it exited with code {process.returncode}). "
                f"Its log is {log}" + (f"; it ends with:\n{tail}" if tail else ".")
            )
        report(
            "Waiting for the AI backend to load" if status == "NOT_SERVING" else "Starting the AI backend",
            None,
        )
        time.sleep(0.25)
    raise BackendError(
        f"The AI Enhance backend did not become ready within {config.start_timeout:g} s. See its log: {log}"
    )


def connect(address: str, config: BackendConfig, report: Report) -> LiteClient:
    """A client for a backend that is SERVING at `address`, starting the recorded one if needed."""
    try:
        client = LiteClient(address)
    except EnhancerError as error:
        raise BackendError(f"The server address {address!r} is not valid: {error}") from None
    status = _health(client)
    if status == "DOWN":
        _start(client, address, config, report)
    elif status != "SERVING":
        report("Waiting for the AI backend to load", None)
        try:
            client.wait_until_serving(timeout=config.start_timeout)
        except EnhancerError as error:
            raise BackendError(f"The AI Enhance backend at {address} is not ready: {error}") from None
    return client


def list_models(client: LiteClient) -> list[ModelInfo]:
    try:
        return client.list_models()
    except EnhancerError as error:
        raise BackendError(explain(error)) from None


def catalogue(client: LiteClient) -> wire.ModelCatalogue:
    """The backend's models and face models, installed or installable (face models: the installed ones
    first, its default first; none from a backend too old for faces)."""
    try:
        return client.catalogue()
    except EnhancerError as error:
        raise BackendError(explain(error)) from None


def install_model(address: str, name: str, report: Callable[[InstallEvent], None]) -> None:
    """Have the backend at `address` download, verify (sha256) and install the manifest model `name`;
    every step goes to `report`, which may raise to cancel. Failures become BackendError."""
    try:
        client = LiteClient(address)
    except EnhancerError as error:
        raise BackendError(explain(error)) from None
    try:
        client.install_model(name, on_progress=report)
    except EnhancerError as error:
        raise BackendError(explain(error)) from None
    finally:
        client.close()


def describe(client: LiteClient) -> ServerInfo:
    try:
        return client.describe()
    except EnhancerError as error:
        raise BackendError(explain(error)) from None


def find_model(models: list[ModelInfo], name: str) -> ModelInfo:
    """The model `name` refers to ("" is the server's default), or a BackendError naming the choices."""
    model = wire.find_model(models, name)
    if model is not None:
        if not model.installed:
            raise BackendError(
                f'The model "{model.name}" is known but not installed. Install it with the installer '
                "(install.py), or choose another model."
            )
        return model
    available = ", ".join(m.name for m in models if m.installed) or "none"
    wanted = f'"{name}"' if name else "a default model"
    raise BackendError(f"The backend has no {wanted}. Installed models: {available}.")


def check_size(client: LiteClient, width: int, height: int, name: str) -> None:
    """Refuse early, before any upload, what the server would refuse for its size."""
    limit = describe(client).max_pixels
    if limit and width * height > limit:
        raise BackendError(
            f'The layer "{name}" is too large to enhance: {width}x{height} is {width * height:,} pixels and '
            f"the backend accepts at most {limit:,}. Select a smaller area at x1, or scale the image down "
            "first."
        )


def enhance(
    client: LiteClient,
    data: bytes,
    image: ImageInfo,
    options: EnhanceOptions,
    report: Report,
    timings: dict[str, float] | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
) -> tuple[ImageInfo, bytes]:
    """Run one job; progress goes to `report` (and each event as it is to `on_event`, e.g. for the face
    pass's final count), failures become BackendError.

    `timings`, when given, gets "upload_s" (until the server has queued the job, i.e. has every byte),
    "server_s" (queued until the engine finished) and "download_s" (the result's bytes) added to it.
    """
    marks = {"start": time.perf_counter()}
    stage_text = ProgressText()  # names the stage, with the percentage and the time left

    def on_progress(event: ProgressEvent) -> None:
        if on_event is not None:
            on_event(event)
        marks.setdefault("queued", time.perf_counter())
        if event.stage == "finishing" and event.total and event.done == event.total:
            marks["finished"] = time.perf_counter()
        report(*stage_text(event))

    try:
        result = client.enhance(
            data,
            image.width,
            image.height,
            image.channels,
            image.sample_type,
            options,
            on_progress=on_progress,
        )
    except EnhancerError as error:
        raise BackendError(explain(error)) from None
    end = time.perf_counter()
    if timings is not None:
        queued = marks.get("queued", marks["start"])
        finished = marks.get("finished", end)
        for key, seconds in (
            ("upload_s", queued - marks["start"]),
            ("server_s", finished - queued),
            ("download_s", end - finished),
        ):
            timings[key] = timings.get(key, 0.0) + seconds
    return result


def explain(error: EnhancerError) -> str:
    """A sentence for a person, by the kind of failure."""
    if error.kind == "not_found":
        return f"Model problem: {error.message}"
    if error.kind == "too_large":
        return f"The image is too large for the backend: {error.message}. Try a smaller area or scale."
    if error.kind == "queue_full":
        return "The AI backend is busy (its job queue is full). Try again in a moment."
    if error.kind == "invalid":
        return f"The AI backend refused the request: {error.message}"
    if error.kind == "unavailable":
        return f"The connection to the AI backend was lost: {error.message}"
    if error.kind == "unauthenticated":
        return f"The AI backend refused the connection (access token): {error.message}"
    if error.kind == "unsupported":
        return f"The AI backend is older than this plug-in: {error.message}"
    return f"AI Enhance failed in the backend: {error.message}"
