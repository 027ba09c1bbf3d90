"""The endpoint lock: held while a command changes one endpoint, so that two pushes never
interleave. One interface, one implementation per mechanism:

- ``FileLock`` (here): flock on a file on this machine; the local target, and targets whose
  platform keeps commands apart across machines by itself (Azure ML) or cannot (a SQL pool);
- ``BlobLease`` (synapse/blob_lease.py): a lock blob with an expiry in the endpoint's storage;
- ``ApplicationLock`` (sqlserver/applock.py): ``sp_getapplock`` owned by the session.

A lock waits up to ``timeout`` seconds, telling ``on_wait`` once that it waits, then raises
BackendError. Backend.lock() returns one of these (or no lock at all).
"""

from __future__ import annotations

import abc
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from tdsp_deploy.errors import BackendError

__all__ = ["EndpointLock", "FileLock"]


class EndpointLock(abc.ABC):
    """``with lock:`` holds the endpoint inside the block."""

    def __init__(self, endpoint: str, *, timeout: float, on_wait: Callable[[str], None] | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.on_wait = on_wait or (lambda message: None)

    @abc.abstractmethod
    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; BackendError when it stays taken."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock back; never raises for a lock that is already gone."""

    def __enter__(self) -> EndpointLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileLock(EndpointLock):
    """An exclusive flock on ``path``.

    flock is released by the kernel when its holder dies, so a crashed push never leaves a
    lock that blocks the next one.
    """

    def __init__(
        self,
        path: Path,
        endpoint: str,
        *,
        timeout: float,
        on_wait: Callable[[str], None] | None = None,
    ):
        super().__init__(endpoint, timeout=timeout, on_wait=on_wait)
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    self.on_wait(f"another command is changing endpoint '{self.endpoint}'; waiting for it")
                    told = True
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise BackendError(
                        f"endpoint '{self.endpoint}' is locked by another command",
                        hint="wait for it to finish, or raise --lock-timeout",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
