"""A deterministic tar writer that hashes each file while it copies it.

tarfile's ``addfile`` would read each file through its own small buffer and leave hashing
to a second pass. Here each file is read once, in 1 MiB chunks into one reused buffer, and
every chunk goes to sha256 (on a helper thread, for large files) and to the archive at the
same time: constant memory, one pass, for any model size. Headers come from
``TarInfo.tobuf`` (PAX format), with every field that could vary between builds pinned:
mtime 0, uid/gid 0, no user or group names, two modes.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from tdsp_deploy.backends.base import Progress, ProgressEvent
from tdsp_deploy.packaging.errors import changed_error, read_error, write_error

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


HashChunk = Callable[["hashlib._Hash", memoryview], Callable[[], object]]


@contextlib.contextmanager
def _hasher(size: int) -> Iterator[HashChunk]:
    """How to hash one chunk: returns a function that waits until it is hashed.

    sha256 and writing the archive each take about as long per byte, and both release the
    GIL; hashing on a second thread while this one writes makes a large file take the time
    of the slower of the two instead of their sum. Small files are hashed inline.
    """
    if size < PIPELINE_MIN_SIZE:

        def inline(digest: hashlib._Hash, data: memoryview) -> Callable[[], object]:
            digest.update(data)
            return _done

        yield inline
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdsp-hash") as pool:

        def threaded(digest: hashlib._Hash, data: memoryview) -> Callable[[], object]:
            return pool.submit(digest.update, data).result

        yield threaded


def _done() -> None:
    pass


class TarStream:
    """Writes members to ``out`` in the order given; the caller sorts them."""

    def __init__(self, out: BinaryIO, out_path: Path, *, total: int, progress: Progress):
        self._out = out
        self._out_path = out_path
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)
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
        with source, _hasher(size) as hash_chunk:
            remaining = size
            while remaining:
                chunk = self._view[: min(remaining, CHUNK)]
                try:
                    n = source.readinto(chunk)
                except OSError as exc:
                    raise read_error(path, exc) from None
                if not n:
                    raise changed_error(path)  # shorter than its header says: the tar would be corrupt
                data = chunk[:n]
                hashed = hash_chunk(digest, data)
                try:
                    self._write(data)
                finally:
                    hashed()  # the next read reuses the buffer: the hash must be done with it
                remaining -= n
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
