"""Reading packages back: the lock, and a verified, safe extraction.

Backends receive archives that may have travelled (uploaded, downloaded, copied), so nothing
in one is trusted: member names are checked (no absolute paths, no '..', no links, no
devices; tarfile's ``data`` filter on top), every file is hashed while it is written and
compared with the lock, and the extraction happens in a staging folder that becomes ``dest``
only when all of it checked out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tdsp_deploy.errors import BackendError, DeploymentFailed
from tdsp_deploy.packaging.errors import write_error
from tdsp_deploy.packaging.lock import LOCK_NAME, LockedFile, PackageLock, is_safe_path
from tdsp_deploy.packaging.tarstream import CHUNK

MAX_LOCK_SIZE = 64 << 20  # a lock lists files; anything larger is not one of ours
_REBUILD = "build the package again (tdsp-deploy package MANIFEST) and retry"


def read_lock(archive: Path) -> PackageLock:
    """The lock (package.json) of ``archive``; DeploymentFailed when it is not a valid package."""
    return _parse_lock(archive, read_lock_bytes(archive))


def read_lock_bytes(archive: Path) -> bytes:
    """package.json's exact bytes. Only headers are read: tar members are skipped by seeking."""
    with _open(archive) as (raw, members):
        return _lock_bytes(archive, raw, members[-1])


def extract_package(archive: Path, dest: Path) -> PackageLock:
    """Extract ``archive`` into ``dest`` (absent or empty), checking every file against the lock.

    ``dest`` then holds ``model/``, ``code/``, ``environment/`` and ``package.json``. A file
    whose content does not match the lock raises DeploymentFailed and leaves ``dest`` as it
    was; so does an unsafe member (absolute path, '..', link, device).
    """
    dest = Path(dest)
    _check_dest(dest)
    with _open(archive) as (raw, members):
        data = _lock_bytes(archive, raw, members[-1])
        lock = _parse_lock(archive, data)
        with _staging(dest) as staging:
            expected = {f.path: f for f in lock.files}
            for member in members[:-1]:
                _extract_member(archive, raw, member, staging, expected)
            if expected:
                missing = ", ".join(sorted(expected)[:5])
                raise _corrupt(archive, f"files listed in its lock are missing: {missing}")
            _write_bytes(staging / LOCK_NAME, data)
            _move_into_place(staging, dest)
    return lock


def extract_once(archive: Path, dest: Path) -> Path:
    """``archive`` extracted into ``dest`` once per content: an extraction that finished (its
    lock is written last) is reused; one that did not is removed and done again."""
    dest = Path(dest)
    if (dest / LOCK_NAME).is_file():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    extract_package(archive, dest)
    return dest


def verify_extracted(dest: Path, expected_id: str) -> PackageLock:
    """Check an extracted package before its model is loaded again (a restart): its lock is
    the one of package ``expected_id``, and every file it lists has the listed sha256.

    Files on disk can change after extraction; a process that starts again must load what
    was checked, not whatever is there now. Files the lock does not list (``__pycache__``
    written by the running script) are left alone. Raises DeploymentFailed.
    """
    hint = "redeploy with `tdsp-deploy push` (the slot's files were changed on disk)"
    try:
        lock = PackageLock.from_json(json.loads((dest / LOCK_NAME).read_bytes()))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        problem = f"{dest / LOCK_NAME} is missing or not a valid lock: {exc}"
        raise DeploymentFailed(problem, hint=hint) from None
    if lock.package_id != expected_id:
        raise DeploymentFailed(
            f"{dest / LOCK_NAME} is the lock of package {lock.package_id[:12]}, not of {expected_id[:12]}",
            hint=hint,
        )
    for locked in lock.files:
        try:
            with open(dest / locked.path, "rb") as handle:
                sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            problem = f"{dest / locked.path} cannot be read: {exc.strerror or exc}"
            raise DeploymentFailed(problem, hint=hint) from None
        if sha256 != locked.sha256:
            raise DeploymentFailed(
                f"{dest / locked.path} does not match the package's lock: sha256 {sha256}, "
                f"expected {locked.sha256}",
                hint=hint,
            )
    return lock


@contextlib.contextmanager
def _open(archive: Path) -> Iterator[tuple[BinaryIO, list[tarfile.TarInfo]]]:
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise DeploymentFailed(f"package {archive} does not exist", hint=_REBUILD) from None
    except OSError as exc:
        raise DeploymentFailed(
            f"cannot read package {archive}: {exc.strerror or exc}", hint=_REBUILD
        ) from None
    with raw:
        try:
            with tarfile.open(fileobj=raw, mode="r:") as tar:  # leaves `raw` open
                members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise _corrupt(archive, f"not a readable tar archive ({exc})") from None
        if not members or members[-1].name != LOCK_NAME or not members[-1].isreg():
            raise _corrupt(
                archive, f"its last member is not {LOCK_NAME}: not a tdsp-deploy package, or cut short"
            )
        yield raw, members


def _lock_bytes(archive: Path, raw: BinaryIO, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_LOCK_SIZE:
        raise _corrupt(archive, f"{LOCK_NAME} is {member.size} bytes, too large to be a lock")
    raw.seek(member.offset_data)
    data = raw.read(member.size)
    if len(data) != member.size:
        raise _corrupt(archive, f"{LOCK_NAME} is cut short")
    return data


def _parse_lock(archive: Path, data: bytes) -> PackageLock:
    try:
        return PackageLock.from_json(json.loads(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(archive, f"its {LOCK_NAME} is not a valid lock: {exc}") from None


def _extract_member(
    archive: Path, raw: BinaryIO, member: tarfile.TarInfo, staging: Path, expected: dict[str, LockedFile]
) -> None:
    name = member.name
    if not is_safe_path(name):
        raise _corrupt(archive, f"member {name!r} would be written outside the destination")
    if not (member.isreg() or member.isdir()) or member.sparse is not None:
        raise _corrupt(
            archive, f"member {name!r} is a link or special file; packages hold only files and folders"
        )
    _standard_checks(archive, member, staging)
    if member.isdir():
        _mkdir(staging / name)
        return
    locked = expected.pop(name, None)  # popped: a second copy of one name is refused too
    if locked is None:
        raise _corrupt(archive, f"{name} is not listed in its lock (or is listed once and archived twice)")
    if member.size != locked.size:
        raise _corrupt(archive, f"{name} is {member.size} bytes, its lock says {locked.size}")
    target = staging / name
    _mkdir(target.parent)
    sha256 = _copy_out(archive, raw, member, target)
    if sha256 != locked.sha256:
        raise _corrupt(archive, f"{name} does not match its lock: sha256 {sha256}, expected {locked.sha256}")
    os.chmod(target, locked.mode)


def _standard_checks(archive: Path, member: tarfile.TarInfo, staging: Path) -> None:
    """tarfile's ``data`` filter, on top of our own checks (it exists from Python 3.11.4)."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return
    try:
        data_filter(member, str(staging))
    except tarfile.FilterError as exc:
        raise _corrupt(archive, f"member {member.name!r} is unsafe: {exc}") from None


def _copy_out(archive: Path, raw: BinaryIO, member: tarfile.TarInfo, target: Path) -> str:
    """Copy one member's bytes to ``target``, hashing them on the way."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(CHUNK))
    raw.seek(member.offset_data)
    try:
        out = open(target, "xb", buffering=0)  # noqa: SIM115 - "x": never write through an existing file
    except OSError as exc:
        raise write_error(target, exc) from None
    with out:
        remaining = member.size
        while remaining:
            n = raw.readinto(view[: min(remaining, CHUNK)])  # type: ignore[attr-defined]
            if not n:
                raise _corrupt(archive, f"{member.name} is cut short")
            digest.update(view[:n])
            try:
                out.write(view[:n])
            except OSError as exc:
                raise write_error(target, exc) from None
            remaining -= n
    return digest.hexdigest()


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackendError(
            f"cannot extract a package into {dest}: it exists and is not empty",
            hint="extract into a new folder",
        )


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A folder beside ``dest``, removed unless it became ``dest``."""
    staging = dest.parent / f".{dest.name}-{secrets.token_hex(6)}.partial"
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise write_error(staging, exc) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, dest: Path) -> None:
    try:
        if dest.is_dir():
            dest.rmdir()  # empty, checked before extracting; fails (and says so) if no longer
        os.replace(staging, dest)
    except OSError as exc:
        raise write_error(dest, exc) from None


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise write_error(path, exc) from None


def _corrupt(archive: Path, problem: str) -> DeploymentFailed:
    return DeploymentFailed(
        f"package {archive} is not usable: {problem}",
        hint="the archive was corrupted or altered after it was built; " + _REBUILD,
        details={"archive": str(archive)},
    )
