"""One daemon per state directory: an exclusive ``flock`` on ``<state>/daemon.lock`` holding the PID.

Taken first thing at start, before anything touches the state (outbox, ledger, bar record). A
second daemon on the same directory is refused (``ConfigError``, exit 2) with one line naming the
directory and the holder's PID, whether it starts seconds later or at the same instant (flock is
atomic; no raw ``sqlite3.OperationalError``). The kernel drops the lock when the holder exits,
even on kill -9, so a stale file never blocks a restart. Taking the lock also proves the
directory is writable: a read-only or missing-parent directory is refused here with one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from barsignal.errors import BarsignalError, ConfigError

LOCK_NAME = "daemon.lock"


class StateDirError(BarsignalError):
    """The state directory cannot be used now (disk full): a runtime failure, exit 1 (systemd retries)."""


def _unusable(directory: Path, exc: OSError) -> BarsignalError:
    name = errno.errorcode.get(exc.errno or 0, "?")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StateDirError(f"state directory {directory}: no space left ({name}); free space and start again")
    not_dir = "is not a directory (a file is in the way)"
    what = {errno.EROFS: "is on a read-only filesystem", errno.EACCES: "is not writable by this user",
            errno.EPERM: "is not writable by this user", errno.ENOTDIR: not_dir,
            errno.EEXIST: not_dir}.get(exc.errno or 0, f"cannot be used ({exc.strerror})")
    return ConfigError(f"state directory {directory} {what} [{name}]; point [state] dir (or STATE_DIRECTORY) "
                       "at a writable directory")


class StateLock:
    """``acquire()`` or refuse; ``release()`` at exit (the kernel releases it anyway)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise _unusable(self.dir, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise _unusable(self.dir, exc) from None
            pid = _holder(fd)
            os.close(fd)
            raise ConfigError(f"state directory {self.dir} is in use by another barsignal daemon "
                              f"(pid {pid or 'unknown'}, lock {self.path}); stop it, or give this one its "
                              "own [state] dir") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # no fsync: the lock, not the file, is what counts
        except OSError as exc:
            os.close(fd)
            raise _unusable(self.dir, exc) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int, wait_s: float = 1.0) -> int | None:
    """The holder's PID from the lock file (it writes it right after locking: wait briefly)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            raw = os.pread(fd, 32, 0).decode().strip()
            if raw:
                return int(raw)
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def holder_pid(directory: str | Path) -> int | None:
    """The PID holding ``directory``'s lock, or None when no daemon holds it."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder(fd, 0.2)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
