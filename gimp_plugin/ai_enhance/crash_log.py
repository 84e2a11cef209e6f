"""Failures nobody planned for: written to a log in the person's GIMP folder and told in GIMP, never
silent. No GIMP here: the folder and the way to tell the person are handed in.

- `install(path, tell)`, at the start of every run: if the process dies of a signal (a crash inside
  GTK, GEGL or a library, where GIMP only says "Plug-in crashed"), `faulthandler` writes every thread's
  Python stack to the log; an exception that escapes a GTK callback is written there and told with
  `tell` (on the main thread: GIMP calls belong there), one that ends another thread is written there.
- `record(path, error)` writes a caught exception's traceback; `message(path, error)` is the sentence
  for the person, with the log's path.
"""

from __future__ import annotations

import contextlib
import faulthandler
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO

LOG_NAME = "ai-enhance-errors.log"
MAX_BYTES = 512 * 1024  # the log keeps its newest half when it grows past this

_fault_files: list[IO[str]] = []  # faulthandler writes from a signal handler: its file stays open


def log_path(gimp_folder: Path) -> Path:
    """The log in the person's GIMP folder (e.g. ~/.config/GIMP/3.0/ai-enhance-errors.log)."""
    return gimp_folder / LOG_NAME


def message(path: Path, error: BaseException) -> str:
    return f"AI Enhance failed unexpectedly ({type(error).__name__}: {error}). The details are in {path}."


def _append(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > MAX_BYTES:
            kept = path.read_bytes()[-MAX_BYTES // 2 :]
            path.write_bytes(kept[kept.find(b"\n") + 1 :])
        with open(path, "a", encoding="utf-8") as log:
            log.write(text)
    except OSError:
        print(text, file=sys.stderr)  # nowhere to write: the error console is the last resort


def record(path: Path, error: BaseException, where: str = "") -> None:
    """Append `error`'s traceback, with the time and where it happened, to the log at `path`."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    thread = threading.current_thread().name
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    _append(path, f"--- {stamp} {where or 'AI Enhance'} (thread {thread})\n{details}")


def install(path: Path, tell: Callable[[str], None]) -> None:
    """Route crashes and uncaught exceptions of this process to the log at `path` (see the module)."""
    _append(path, "")  # the folder exists and the log can be written before anything goes wrong
    if not _fault_files:
        with contextlib.suppress(OSError):
            _fault_files.append(open(path, "a", encoding="utf-8"))  # noqa: SIM115 - kept open on purpose
    if _fault_files:
        # Enabled here, after GIMP installed its own crash handlers, which faulthandler then calls on.
        faulthandler.enable(_fault_files[0], all_threads=True)

    def uncaught(kind: type[BaseException], error: BaseException, trace: object) -> None:
        record(path, error, "uncaught in a callback")
        if threading.current_thread() is threading.main_thread():
            tell(message(path, error))

    def thread_ended(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            record(path, args.exc_value, f"uncaught in thread {args.thread.name if args.thread else '?'}")

    sys.excepthook = uncaught
    threading.excepthook = thread_ended
