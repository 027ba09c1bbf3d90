"""Content hashes remembered by file identity, so that an unchanged file is not read again.

A file's sha256 is kept under its path with its size, mtime_ns, ctime_ns, inode and device,
as git's index and make do. Any write changes mtime and ctime (ctime cannot be set back, so a
tool that restores mtime is still caught), and a file replaced by another gets another inode.

One hole is left by every cache of this kind: a write in the same clock tick as the file's
last change, after it was hashed, leaves the stat fields as they were. So a hash is trusted
only when the file's mtime lies clearly before the moment its hashing began (git's "racily
clean" rule); a file written just before a build is read again by the next one.

The cache is a JSON file written atomically (a temporary file renamed over it). A missing,
unreadable or corrupt cache is an empty one: it only ever saves work, never changes a result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

CACHE_NAME = ".hash-cache.json"
FORMAT = 1
MAX_ENTRIES = 20_000  # the oldest are dropped beyond this: stale paths must not pile up forever
# How long before hashing began a file's last change must be for its hash to be trusted: a
# few ticks of the kernel's coarse file clock, or 2 s on file systems that keep whole seconds.
RACY_MARGIN_NS = 100_000_000
RACY_MARGIN_WHOLE_SECONDS_NS = 2_000_000_000


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """What changes when a file's content can have changed."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class HashCache:
    """sha256 by (path, size, mtime_ns, ctime_ns, inode, device), kept in ``folder``."""

    def __init__(self, folder: Path):
        self.path = folder / CACHE_NAME
        self._entries: dict[str, dict[str, Any]] = self._load()
        self._changed = False

    def lookup(self, path: Path, size: int) -> str | None:
        """The remembered sha256 of ``path`` if it is ``size`` bytes and cannot have changed
        since it was hashed; None otherwise."""
        try:
            identity = FileIdentity.of(os.stat(path))
        except OSError:
            return None
        if identity.size != size:
            return None
        entry = self._entries.get(str(path))
        if entry is None or entry.get("identity") != dataclasses.asdict(identity):
            return None
        if not _settled(identity.mtime_ns, int(entry.get("hashed_at_ns", 0))):
            return None
        sha256 = entry.get("sha256")
        return sha256 if isinstance(sha256, str) and len(sha256) == 64 else None

    def remember(self, path: Path, before: os.stat_result, sha256: str, hashed_at_ns: int) -> None:
        """Keep ``sha256`` for ``path`` if the file is as it was when its reading began."""
        try:
            after = os.stat(path)
        except OSError:
            return
        identity = FileIdentity.of(before)
        if FileIdentity.of(after) != identity:
            return  # it changed while being read: the hash may be of neither version
        self._entries[str(path)] = {
            "identity": dataclasses.asdict(identity),
            "sha256": sha256,
            "hashed_at_ns": hashed_at_ns,
        }
        self._changed = True

    def save(self) -> None:
        """Write the cache if it changed; a failure to write is ignored (it is only a cache)."""
        if not self._changed:
            return
        entries = self._entries
        if len(entries) > MAX_ENTRIES:
            newest = sorted(entries, key=lambda p: entries[p].get("hashed_at_ns", 0))[-MAX_ENTRIES:]
            entries = {p: entries[p] for p in newest}
        temporary = self.path.with_name(f"{self.path.name}.{secrets.token_hex(6)}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({"format": FORMAT, "files": entries}), encoding="utf-8")
            os.replace(temporary, self.path)
            self._changed = False
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
            return {}
        return {p: e for p, e in doc["files"].items() if isinstance(e, dict)}


def now_ns() -> int:
    """The moment hashing begins, on the clock file times come from."""
    return time.time_ns()


def _settled(mtime_ns: int, hashed_at_ns: int) -> bool:
    whole_seconds = mtime_ns % 1_000_000_000 == 0
    margin = RACY_MARGIN_WHOLE_SECONDS_NS if whole_seconds else RACY_MARGIN_NS
    return mtime_ns < hashed_at_ns - margin
