"""The Spark mode's endpoint lock (a ``tdsp_deploy.locks.EndpointLock``): a lease on one lock
blob in the storage root, so that two commands changing one endpoint never interleave, from
this machine or any other.

The state of a Spark-mode endpoint lives in its storage root (blob container or folder), not on
a machine, so the lock lives there too: ``endpoints/<name>/lock.json`` holds who holds it
(host, pid, a random token) and until when. It is taken with a create that succeeds only if
no such blob exists (Put Blob with ``If-None-Match: *``), kept alive by rewriting its expiry
with ``If-Match: <etag>`` while the command runs, and released by a delete with ``If-Match``.
Every write is conditional, so two commands can never both believe they hold it.

A lock is stale, and is taken over (again with ``If-Match``, so only one taker wins), when its
expiry has passed (its holder stopped renewing it: crashed, killed, lost its network), or at
once when its holder was a process on this machine that is no longer running. The expiry is
written by the holder's clock and read by the waiter's: clocks may differ by much less than
the TTL (machines that sync with NTP do).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tdsp_deploy.errors import BackendError
from tdsp_deploy.locks import EndpointLock

if TYPE_CHECKING:
    from tdsp_deploy.backends.synapse.storage import Store

#: How long a lock outlives its holder's last renewal; renewed every quarter of that.
LOCK_TTL_S = 120.0
POLL_S = 1.0


class BlobLease(EndpointLock):
    """``with BlobLease(store, name, endpoint, timeout=...)``: held inside the block."""

    def __init__(
        self,
        store: Store,
        name: str,
        endpoint: str,
        *,
        timeout: float,
        ttl: float = LOCK_TTL_S,
        on_wait: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(endpoint, timeout=timeout, on_wait=on_wait)
        self.store = store
        self.name = name  # the lock blob, relative to the storage root
        self.ttl = ttl
        self.clock = clock
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._guard = threading.Lock()  # the renewer and release never write at once
        self.lost = False

    # -- the document ------------------------------------------------------------------------------
    def _document(self) -> bytes:
        return json.dumps(
            {
                "endpoint": self.endpoint,
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires_at": round(self.clock() + self.ttl, 3),
            },
            sort_keys=True,
        ).encode()

    def stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why ``holder``'s lock may be taken over; None while it is alive."""
        expires = holder.get("expires_at")
        if not isinstance(expires, int | float) or expires < self.clock():
            return "its holder stopped renewing it"
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _running(pid):
            return f"process {pid} on this machine is no longer running"
        return None

    # -- taking and giving back ----------------------------------------------------------------------
    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            etag = self.store.create_new(self.name, self._document())
            if etag is not None:
                break
            current = self.store.read_versioned(self.name)
            if current is None:
                continue  # released between our create and our read: try again at once
            data, held_etag = current
            holder = _parse(data)
            reason = self.stale_reason(holder)
            if reason is not None:
                etag = self.store.replace_if(self.name, self._document(), held_etag)
                if etag is not None:
                    self.on_wait(f"took over a stale lock on endpoint '{self.endpoint}' ({reason})")
                    break
                continue  # someone else renewed or took it first: look again
            if not told:
                self.on_wait(
                    f"endpoint '{self.endpoint}' is locked by {describe(holder)}; waiting up to "
                    f"{self.timeout:g} s for it"
                )
                told = True
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"endpoint '{self.endpoint}' is locked by another command ({describe(holder)})",
                    hint="wait for it to finish, or raise --lock-timeout; a lock whose command died is "
                    f"taken over after {self.ttl:g} s (at once on the machine it ran on)",
                    details={"lock": self.store.uri(self.name)},
                )
            time.sleep(min(POLL_S, max(0.05, deadline - time.monotonic())))
        self._etag = etag
        self._renewer = threading.Thread(target=self._renew, name="tdsp-lock-renewal", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=60)
        with self._guard:
            if self._etag is not None and not self.lost:
                self.store.delete_if(self.name, self._etag)
            self._etag = None

    def _renew(self) -> None:
        """Push the expiry forward while the command runs; a renewal refused means the lock was
        taken over (this process stalled past the TTL), which the command is told about."""
        while not self._stop.wait(self.ttl / 4):
            with self._guard:
                if self._etag is None or self.lost:
                    return
                try:
                    etag = self.store.replace_if(self.name, self._document(), self._etag)
                except BackendError:
                    continue  # a passing storage error: the next renewal tries again
                if etag is None:
                    self.lost = True
                    self.on_wait(f"the lock on endpoint '{self.endpoint}' was taken over by another command")
                    return
                self._etag = etag


def describe(holder: dict[str, Any]) -> str:
    """Who holds a lock, for a person: pid and host, and until when unless renewed."""
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    expires = holder.get("expires_at")
    if isinstance(expires, int | float):
        who += f", renewed until {time.strftime('%H:%M:%S UTC', time.gmtime(expires))}"
    return who


def _parse(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}  # not ours, or torn: no expiry, so it is stale
    return doc if isinstance(doc, dict) else {}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
