"""Atomic file writes and plain-language advice for failed ones.

Every file napari-tower writes (checkpoints, predictions, settings, autosaves)
goes through `atomic_write`: the bytes go to a fresh temporary file in the
target's folder, are flushed to disk, and only then renamed over the target.
A crash, Ctrl-C or a full disk at any moment leaves either the old file or the
new one, never half of one. Only a process killed outright (SIGKILL, power loss)
can leave its temporary file behind; the name carries the writer's process id,
and the next write of the same file removes temporaries of writers no longer
running (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import TowerError

_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free some space or write somewhere else",
    errno.EFBIG: "the file is larger than this disk or account allows: free some space or write somewhere else",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.EROFS: "the disk is read-only: choose a writable folder",
    errno.ENOTDIR: "part of the path is a file, not a folder: check the path",
    errno.EEXIST: "part of the path is a file, not a folder: check the path",
    errno.ENOENT: "the folder does not exist and could not be made: check the path",
    errno.EISDIR: "the path is a folder: give a file name",
}


def os_error_advice(exc: OSError) -> str:
    """What went wrong with a file operation, and what to do, in one phrase."""
    reason = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or 0, "check the folder exists, is writable and the disk has space")
    return f"{reason}; {advice}"


def _file_mode() -> int:
    """The permissions a plain `open(path, "w")` would give (mkstemp makes owner-only files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no portable read-only query; restored at once
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not all platforms allow opening a folder, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process (or no way to ask): leave its files alone
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> int:
    """Remove temporary files (of `name`, or of any file) left in `folder` by writers that were killed.

    Only files of the form `.<name>.<pid>.<random>.tmp` whose process is gone are removed, so a
    write in progress in another process is never touched. Returns how many were removed.
    """
    removed = 0
    pattern = f".{_glob_escape(name)}.*.tmp" if name else ".*.tmp"
    for path in Path(folder).glob(pattern):
        pid = path.name[:-len(".tmp")].rsplit(".", 2)
        if len(pid) == 3 and pid[1].isdigit() and not _pid_alive(int(pid[1])):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, what: str = "") -> Iterator[IO[bytes]]:
    """Open a binary file that replaces `path` only if the `with` block finishes.

    The temporary file is created exclusively (never through an existing name or
    link) next to `path`, so the final rename cannot cross file systems. An
    `OSError` becomes a `TowerError` naming the file, the reason and the fix;
    any other exception (including KeyboardInterrupt) propagates unchanged. In
    both cases the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    label = f"{what} {path}".strip()
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        os.fchmod(fd, _file_mode())
        os.close(fd)
        with open(tmp, "wb") as fh:  # by name: writers such as tifffile want a file object with a path
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as exc:
        raise TowerError(f"could not write {label} ({os_error_advice(exc)})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the `with` block.

    For a read-modify-write of a file several processes share (the widget's settings): the kernel
    drops the lock if its holder dies, so a crash never leaves the file locked. Where `fcntl` is
    missing (Windows) it locks nothing.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "") -> Path:
    """Replace `path` with `data` atomically (see `atomic_write`)."""
    with atomic_write(path, what) as fh:
        fh.write(data)
    return Path(path)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike, what: str = "") -> Path:
    """Replace `path` with a copy of the finished file `source` atomically (see `atomic_write`).

    For files a library can only write by name (a zip, an image): build them in a
    temporary folder, then put them in place with this.
    """
    with atomic_write(path, what) as fh, open(source, "rb") as src:
        shutil.copyfileobj(src, fh)
    return Path(path)
