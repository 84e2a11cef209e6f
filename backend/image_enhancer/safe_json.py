"""Read a JSON file with bounds on its size and nesting: the one way we read JSON files.

Python's json module reads any size, and nesting a few thousand deep makes it raise RecursionError
(or, in code that walks the result, worse). Every JSON file we read (pair files, the manifest, the
plug-in's settings, the speed record, caches, training configs) goes through `load_json`, with a limit
chosen by its reader; anything over it, or not JSON at all, is a `JsonFileError` naming the file.

Pure standard library: the GIMP plug-in vendors this module.
"""

from __future__ import annotations

import json
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

#: No file of ours nests deeper than about six levels.
DEFAULT_MAX_DEPTH = 32

# A JSON string (its escapes included), removed before brackets are counted: brackets inside strings
# do not nest anything. Written as an unrolled loop, so matching stays linear.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonFileError(ValueError):
    """A JSON file that cannot be read, is too big or too deeply nested, or is not valid JSON.
    `where` names the file, `problem` says what is wrong with it."""

    def __init__(self, where: object, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = str(where)
        self.problem = problem


def nesting_depth(text: str) -> int:
    """How deeply the arrays and objects of `text` nest (0 for a bare value)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(_DEPTH_STEP[c] for c in brackets), default=0)


def parse_json(text: str, where: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """`text` parsed, refused when nested deeper than `max_depth`; `where` names it in errors."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise JsonFileError(where, f"nested {depth} levels deep; at most {max_depth} are read")
    try:
        return json.loads(text)
    except RecursionError:  # cannot happen below max_depth; kept so it never escapes as a crash
        raise JsonFileError(where, "nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and numbers of more digits than Python converts
        raise JsonFileError(where, f"not valid JSON ({exc})") from None


def read_bounded(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`, refused when larger than `max_bytes`. Never blocks on a
    FIFO or device, and never reads more than `max_bytes` + 1 bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise JsonFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise JsonFileError(path, "not a regular file")
        if info.st_size > max_bytes:
            raise JsonFileError(path, f"{info.st_size} bytes; at most {max_bytes} are read")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise JsonFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew after fstat
        raise JsonFileError(path, f"over {max_bytes} bytes; at most {max_bytes} are read")
    return data


def load_json(path: Path | str, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The JSON value in the file at `path`, at most `max_bytes` long and `max_depth` deep.

    Raises JsonFileError (a ValueError) naming the file for every way it can fail: missing or unreadable,
    not a regular file, too big, not UTF-8, too deeply nested, or not valid JSON.
    """
    data = read_bounded(path, max_bytes)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JsonFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_json(text, str(path), max_depth)
