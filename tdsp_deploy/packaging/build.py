"""build_package: the project, as one deterministic, self-describing archive.

The archive is written to a temporary file beside its final place and renamed into it only
once complete, so ``out_dir`` never holds half an archive, whatever stops the build. Its name
carries the package id: a second build of the same content finds it and reuses it.

A build of content that has not changed since the last one does no packaging work: the
files' hashes come from the hash cache (no file is read), the lock is worked out from them,
and when the archive of that lock is there it is returned as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import tdsp_deploy
from tdsp_deploy import paths
from tdsp_deploy.errors import TdspError
from tdsp_deploy.packaging import libraries as libs
from tdsp_deploy.packaging.errors import changed_error, read_error, write_error
from tdsp_deploy.packaging.extract import read_lock_bytes
from tdsp_deploy.packaging.hash_cache import HashCache, now_ns
from tdsp_deploy.packaging.lock import (
    LOCK_NAME,
    LockedFile,
    LockedModel,
    PackageLock,
    model_sha256,
    package_id,
)
from tdsp_deploy.packaging.sources import Layout, plan
from tdsp_deploy.packaging.tarstream import TarStream
from tdsp_deploy.progress import Progress, ProgressEvent, no_progress

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase

PARTIAL_SUFFIX = ".tar.partial"


@dataclasses.dataclass(frozen=True)
class BuiltPackage:
    """An archive in ``out_dir`` and what its lock says."""

    path: Path
    package_id: str
    lock: PackageLock
    reused: bool  # True: an identical archive was already there and was kept


def archive_name(name: str, package_id: str) -> str:
    return f"{name}-{package_id[:12]}.tar"


def build_package(
    manifest: ManifestBase,
    out_dir: Path,
    *,
    progress: Progress = no_progress,
    project_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> BuiltPackage:
    """Package the manifest's model, scoring code and environment file into ``out_dir``.

    Same content gives the same bytes and the same ``package_id``, wherever the project lives
    and whatever its files' times. ``project_dir`` bounds where symbolic links in the model or
    code folder may lead (default: the folder that holds all of the manifest's inputs).
    Raises PackagingError when the project cannot be read, BackendError when ``out_dir``
    cannot be written. ``cache_dir`` holds the hash cache (default: the state home, so output
    folders hold archives only).
    """
    out_dir = _prepare(out_dir)
    pattern = rf"^\.?{re.escape(manifest.name)}-[0-9a-f]+\.tar(?:\.partial)?$"
    layout = plan(manifest, out_dir, pattern, project_dir)
    cache = HashCache(cache_dir or paths.state_home())
    unchanged = _unchanged_package(manifest, layout, out_dir, cache)
    if unchanged is not None:
        progress(
            ProgressEvent(
                step="package",
                message="unchanged since it was last built (no file read)",
                done=layout.total_size,
                total=layout.total_size,
            )
        )
        return unchanged
    progress(ProgressEvent(step="package", message="hashing and archiving", done=0, total=layout.total_size))
    with _partial_file(out_dir, manifest.name) as (out, partial):
        lock = _write(out, partial, manifest, layout, progress, cache)
        out.close()
        cache.save()
        final = out_dir / archive_name(manifest.name, lock.package_id)
        if _same_archive(final, partial, lock):
            return BuiltPackage(path=final, package_id=lock.package_id, lock=lock, reused=True)
        try:
            os.replace(partial, final)
        except OSError as exc:
            raise write_error(final, exc) from None
    return BuiltPackage(path=final, package_id=lock.package_id, lock=lock, reused=False)


def _prepare(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir.resolve(strict=True)
    except OSError as exc:
        raise write_error(out_dir / "package.tar", exc) from None


@contextlib.contextmanager
def _partial_file(out_dir: Path, name: str) -> Iterator[tuple[BinaryIO, Path]]:
    """A new file in ``out_dir`` that is removed unless renamed away, even on Ctrl-C."""
    partial = out_dir / f".{name}-{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
    try:
        # O_EXCL: never write into someone else's file; 0o644 so umask applies as for any file.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise write_error(partial, exc) from None
    out = os.fdopen(fd, "wb")
    try:
        yield out, partial
    finally:
        out.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()  # gone already when renamed into place


def _unchanged_package(
    manifest: ManifestBase, layout: Layout, out_dir: Path, cache: HashCache
) -> BuiltPackage | None:
    """The archive of the last build, when every file is as it was then; None otherwise.

    Only the small environment file is read (its library names go into the lock); every other
    file's hash must come from the cache, or the content counts as changed."""
    files = []
    environment_text = ""
    for source in layout.files:
        if source.data is not None:
            sha256 = hashlib.sha256(source.data).hexdigest()
        elif source.arcname.startswith("environment/"):
            data = _read_small(source.path, source.size)
            environment_text = data.decode("utf-8", errors="replace")
            sha256 = hashlib.sha256(data).hexdigest()
        else:
            cached = cache.lookup(source.path, source.size)
            if cached is None:
                return None
            sha256 = cached
        files.append(LockedFile(source.arcname, sha256, source.size, source.mode))
    lock = _lock(manifest, layout, files, environment_text)
    final = out_dir / archive_name(manifest.name, lock.package_id)
    try:
        if read_lock_bytes(final) != lock.to_bytes():
            return None  # built by another tool version or environment: build it again
    except TdspError:
        return None  # not there, or not a package any more
    return BuiltPackage(path=final, package_id=lock.package_id, lock=lock, reused=True)


def _write(
    out: BinaryIO,
    partial: Path,
    manifest: ManifestBase,
    layout: Layout,
    progress: Progress,
    cache: HashCache,
) -> PackageLock:
    """Stream every member in order, then the lock built from what was hashed."""
    tar = TarStream(out, partial, total=layout.total_size, progress=progress)
    members = sorted(
        [(folder, None) for folder in layout.folders] + [(f.arcname, f) for f in layout.files],
        key=lambda m: m[0],
    )
    files = []
    environment_text = ""
    for name, source in members:
        if source is None:
            tar.add_folder(name)
        elif source.data is not None:  # generated, not read from disk
            files.append(
                LockedFile(name, tar.add_bytes(name, source.data, mode=source.mode), source.size, source.mode)
            )
        elif name.startswith("environment/"):
            # Small, and parsed for library names: read once, then archive what was parsed.
            data = _read_small(source.path, source.size)
            environment_text = data.decode("utf-8", errors="replace")
            files.append(
                LockedFile(name, tar.add_bytes(name, data, mode=source.mode), source.size, source.mode)
            )
        else:
            started = now_ns()
            before = _stat(source.path)
            sha256 = tar.add_file(name, source.path, size=source.size, mode=source.mode)
            if before is not None:
                cache.remember(source.path, before, sha256, started)
            files.append(LockedFile(path=name, sha256=sha256, size=source.size, mode=source.mode))
    lock = _lock(manifest, layout, files, environment_text)
    tar.add_bytes(LOCK_NAME, lock.to_bytes(), counted=False)
    tar.finish()
    return lock


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None  # add_file reports it, as the error of reading it


def _read_small(path: Path, size: int) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise read_error(path, exc) from None
    if len(data) != size:
        raise changed_error(path)
    return data


def _lock(
    manifest: ManifestBase, layout: Layout, files: list[LockedFile], environment_text: str
) -> PackageLock:
    model_files = [
        f for f in files if f.path == layout.model_path or f.path.startswith(layout.model_path + "/")
    ]
    model_hash = model_sha256(model_files, layout.model_path)
    version = manifest.model.version or model_hash[:12]
    kind = next(iter(layout.environment or {}), None)
    found = libs.libraries(
        requirements=environment_text if kind == "requirements" else None,
        conda_file=environment_text if kind == "conda_file" else None,
        model_files=[f.path for f in model_files],
    )
    return PackageLock(
        package_id=package_id(files, manifest.model_name, version, layout.script),
        name=manifest.name,
        model=LockedModel(
            name=manifest.model_name, version=version, path=layout.model_path, sha256=model_hash
        ),
        script=layout.script,
        environment=layout.environment,
        files=tuple(files),
        tool={"name": "tdsp-deploy", "version": tdsp_deploy.__version__},
        python=platform.python_version(),
        libraries=found,
    )


def _same_archive(final: Path, partial: Path, lock: PackageLock) -> bool:
    """True when ``final`` already holds these exact bytes.

    Same package id means same content; the lock also records the building environment
    (library versions), so it is compared too, and the size guards against a truncated file.
    """
    try:
        if final.stat().st_size != partial.stat().st_size:
            return False
        return read_lock_bytes(final) == lock.to_bytes()
    except Exception:  # noqa: BLE001 - unreadable or not an archive: replace it
        return False
