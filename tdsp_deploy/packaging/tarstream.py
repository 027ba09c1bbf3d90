"""A deterministic tar writer that hashes each file while it copies it.

tarfile's ``addfile`` would read each file through its own small buffer and leave hashing
to a second pass. Here each file is read once, in 1 MiB chunks into two reused buffers, and
every chunk goes to sha256 (on a helper thread, for large files) and to the archive at the
same time: constant memory, one pass, for any model size. Headers come from
``TarInfo.tobuf`` (PAX format), with every field that could vary between builds pinned:
mtime 0, uid/gid 0, no user or group names, two modes.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import tarfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from tdsp_deploy.packaging.errors import changed_error, read_error, write_error
from tdsp_deploy.progress import Progress, ProgressEvent

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to whole records, as tarfile and GNU tar do
CHUNK = 1 << 20
REPORT_EVERY = 64 << 20
PIPELINE_MIN_SIZE = 4 * CHUNK  # below this, a thread costs more than it saves


def header(name: str, *, size: int = 0, mode: int = 0o644, folder: bool = False) -> bytes:
    """The header block(s) of one member. PAX only adds records for long or non-ASCII names
    and sizes of 8 GiB and more, never time fields."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Hashing:
    """Feeds chunks to one sha256, on a helper thread when ``pool`` is given.

    sha256 costs about as much per byte as reading and writing together, and hashlib
    releases the GIL; with a helper thread a large file takes the time of the slower of the
    two instead of their sum. Chunks alternate between two buffers: while one is hashed, the
    next is read into the other and written out. At most two chunks are in flight, so a
    buffer is only refilled once its hash is done.
    """

    def __init__(self, digest: hashlib._Hash, pool: ThreadPoolExecutor | None):
        self._digest = digest
        self._pool = pool
        self._pending: collections.deque[Future[None]] = collections.deque()

    def add(self, data: memoryview) -> None:
        """Queue ``data``; returns once the chunk before it is hashed (its buffer is free)."""
        if self._pool is None:
            self._digest.update(data)
            return
        self._pending.append(self._pool.submit(self._digest.update, data))
        if len(self._pending) > 1:
            self._pending.popleft().result()

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()


@contextlib.contextmanager
def _hashing(digest: hashlib._Hash, size: int) -> Iterator[_Hashing]:
    if size < PIPELINE_MIN_SIZE:
        yield _Hashing(digest, None)  # a thread would cost more than it saves
        return
    # Leaving the pool waits for its work, so no buffer is still being read on the way out.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdsp-hash") as pool:
        hashing = _Hashing(digest, pool)
        yield hashing
        hashing.wait()


class TarStream:
    """Writes members to ``out`` in the order given; the caller sorts them."""

    def __init__(self, out: BinaryIO, out_path: Path, *, total: int, progress: Progress):
        self._out = out
        self._out_path = out_path
        self._buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
        self._progress = progress
        self.total = total  # bytes of file content, for progress
        self.done = 0
        self._next_report = REPORT_EVERY
        self.written = 0  # bytes of archive

    def add_folder(self, name: str) -> None:
        self._write(header(name, mode=0o755, folder=True))

    def add_bytes(self, name: str, data: bytes, *, mode: int = 0o644, counted: bool = True) -> str:
        """Archive ``data`` as one file; return its sha256 hex. ``counted``: part of ``total``."""
        self._write(header(name, size=len(data), mode=mode))
        self._write(data)
        self._pad(len(data))
        if counted:
            self._advance(len(data))
        return hashlib.sha256(data).hexdigest()

    def add_file(self, name: str, path: Path, *, size: int, mode: int) -> str:
        """Copy ``size`` bytes of ``path`` into the archive; return their sha256 hex."""
        self._write(header(name, size=size, mode=mode))
        digest = hashlib.sha256()
        try:
            source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below; errors differ by side
        except OSError as exc:
            raise read_error(path, exc) from None
        with source, _hashing(digest, size) as hashing:
            remaining = size
            turn = 0
            while remaining:
                chunk = self._buffers[turn][: min(remaining, CHUNK)]
                try:
                    n = source.readinto(chunk)
                except OSError as exc:
                    raise read_error(path, exc) from None
                if not n:
                    raise changed_error(path)  # shorter than its header says: the tar would be corrupt
                data = chunk[:n]
                hashing.add(data)
                self._write(data)
                remaining -= n
                turn ^= 1
                self._advance(n)
            if source.read(1):
                raise changed_error(path)  # it grew: what we hashed is not the file any more
        self._pad(size)
        return digest.hexdigest()

    def finish(self) -> None:
        """End-of-archive marker, padded to a whole record; one last progress event."""
        end = self.written + 2 * BLOCK
        self._write(bytes(2 * BLOCK + (-end) % RECORD))
        self._progress(ProgressEvent(step="package", message="packaged", done=self.done, total=self.total))

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._write(bytes(BLOCK - size % BLOCK))

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self._out.write(data)
        except OSError as exc:
            raise write_error(self._out_path, exc) from None
        self.written += len(data)

    def _advance(self, n: int) -> None:
        self.done += n
        if self.done >= self._next_report:
            self._next_report = (self.done // REPORT_EVERY + 1) * REPORT_EVERY
            self._progress(
                ProgressEvent(
                    step="package",
                    message=f"hashing and archiving ({self.done >> 20} of {self.total >> 20} MiB)",
                    done=self.done,
                    total=self.total,
                )
            )
