"""Putting a finished output file in place: written beside its target under a temporary name of ours, then
published in one step, so that a reader never sees half a file and a file that appeared at the target
meanwhile (another run, another program) is never replaced unless replacing was asked for.

Without replacing, the temporary file is hard-linked to the target, which fails if any name is there, and
then unlinked; where the file system has no hard links (FAT, some network shares) a rename that refuses
to replace (Linux `renameat2(RENAME_NOREPLACE)`) does the same. Temporary files carry the host and process
that wrote them, so a later run can remove those of a process that died (SIGKILL, power loss) without
touching those of a run still going.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

TEMPORARY_MARK = ".ie-tmp-"
# A temporary file older than this is stale whoever wrote it: writing one output takes seconds (one
# written band by band while its job runs is touched as they go in), and a process number may have been
# reused since.
STALE_AFTER_S = 6 * 3600
_TEMPORARY_NAME = re.compile(
    r"^\..*" + re.escape(TEMPORARY_MARK) + r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}(\.[^.]*)?$"
)
_STEM_CHARACTERS = 40  # keeps the temporary name within 255 bytes (4 per character at most)

# Plain words for what stops a write, keyed by errno; "{path}" is the file being written.
_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device while writing {path}",
    errno.EDQUOT: "disk quota exceeded while writing {path}",
    errno.EFBIG: "{path} would be larger than this file system or this process's file-size limit allows",
    errno.EACCES: "permission denied: cannot write {path}",
    errno.EPERM: "permission denied: cannot write {path}",
    errno.EROFS: "read-only file system: cannot write {path}",
    errno.ENOENT: "the folder of {path} does not exist (or was removed while writing)",
    errno.ENAMETOOLONG: "the name {path} is too long for this file system",
}
# What a file system without hard links answers to link(); such a target is published by a rename.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


class OutputError(OSError):
    """An output that could not be written or published; the message names the file and says why."""

    def __str__(self) -> str:
        return str(self.strerror)


class OutputExistsError(OutputError):
    """The target appeared while it was being written, and replacing it was not asked for."""


def publish(target: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Call `write(temporary)` to write the whole file, then put it at `target`.

    With `overwrite` an existing target is replaced as a whole (renamed over, never written into, so
    other names of its old contents keep them); without it an existing target is left as it is and
    OutputExistsError is raised. Every failure leaves no temporary file behind and raises OutputError
    naming `target`, except errors of `write` that are not about the file (bad pixels, say), which pass
    through unchanged.
    """
    target = Path(target)
    temporary = _create_temporary(target)
    try:
        try:
            write(temporary)
        except OSError as error:
            raise _describe(error, target, temporary) from error
        if overwrite:
            _replace(temporary, target)
        else:
            _publish_without_replacing(temporary, target)
    finally:
        with contextlib.suppress(OSError):  # gone already when it was renamed into place
            temporary.unlink()


def temporary_name(target: Path, pid: int | None = None) -> str:
    """The name under which `target` is written before it is published: hidden, recognisably ours, and
    carrying the host and process that write it."""
    pid = os.getpid() if pid is None else pid
    stem = target.stem[:_STEM_CHARACTERS]
    return f".{stem}{TEMPORARY_MARK}{_host_tag()}-{pid}-{secrets.token_hex(4)}{target.suffix}"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove temporary files of ours in `folder` that no running writer owns: those of a process of this
    host that is gone, and any older than STALE_AFTER_S. Returns what was removed."""
    now = time.time()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet, or not readable: nothing of ours to clean
        return removed
    for entry in entries:
        match = _TEMPORARY_NAME.match(entry.name)
        if match is None:
            continue
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(status.st_mode):
            continue
        ours_and_dead = match["host"] == _host_tag() and not _process_alive(int(match["pid"]))
        if ours_and_dead or now - status.st_mtime > STALE_AFTER_S:
            with contextlib.suppress(OSError):  # another run may be removing it at the same moment
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def describe_write_error(error: OSError, path: Path) -> OutputError:
    """`error`, met while writing `path`, as an OutputError whose message names the path in plain words."""
    if isinstance(error, OutputError):
        return error
    template = _WRITE_FAILURES.get(error.errno or 0)
    if template is not None:
        message = template.format(path=path)
    else:
        message = f"cannot write {path}: {error.strerror or error}"
    return OutputError(error.errno or 0, message)


def _create_temporary(target: Path) -> Path:
    """A new empty file beside `target`, created with the usual permissions (0666 less the umask)."""
    for _ in range(100):
        temporary = target.with_name(temporary_name(target))
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise describe_write_error(error, target) from error
        os.close(handle)
        return temporary
    raise OutputError(errno.EEXIST, f"cannot create a temporary file beside {target}")


def _describe(error: OSError, target: Path, temporary: Path) -> OutputError:
    # numpy's tofile (which tifffile uses) reports a short write as "N requested and M written", without
    # the reason: writing on where it stopped, with a call that keeps errno, finds it.
    if error.errno is None:
        error = _reason_for_short_write(temporary) or error
    return describe_write_error(error, target)


def _reason_for_short_write(temporary: Path) -> OSError | None:
    try:
        with open(temporary, "ab", buffering=0) as handle:
            for _ in range(16):
                handle.write(bytes(64 * 1024))
    except OSError as error:
        return error if error.errno is not None else None
    return None


def _replace(temporary: Path, target: Path) -> None:
    try:
        os.replace(temporary, target)
    except OSError as error:
        raise describe_write_error(error, target) from error


def _publish_without_replacing(temporary: Path, target: Path) -> None:
    try:
        os.link(temporary, target)
        return  # the caller unlinks the temporary name
    except FileExistsError:
        raise _appeared(target) from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise describe_write_error(error, target) from error
    try:
        if _rename_without_replacing(temporary, target):
            return
        _claim_then_replace(temporary, target)
    except FileExistsError:
        raise _appeared(target) from None
    except OSError as error:
        raise describe_write_error(error, target) from error


def _appeared(target: Path) -> OutputExistsError:
    return OutputExistsError(
        errno.EEXIST,
        f"{target} appeared while this run was writing it; not replaced (pass --overwrite to replace it)",
    )


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_without_replacing(temporary: Path, target: Path) -> bool:
    """Rename with Linux's renameat2(RENAME_NOREPLACE): FileExistsError if the target exists; False where
    the kernel, the C library or the file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(temporary), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def _claim_then_replace(temporary: Path, target: Path) -> None:
    """The last resort: create the target exclusively (only one writer can), then rename the finished
    file over the empty one we own."""
    handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(handle)
    try:
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)  # the empty file we created
        raise


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there; such files go by age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, alive
        return True
    return True


@functools.cache
def _host_tag() -> str:
    """8 hex digits of this host's name: a temporary file in a folder shared with other machines is only
    judged by its process number on the machine that wrote it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
