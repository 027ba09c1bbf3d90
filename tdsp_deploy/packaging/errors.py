"""Where packaging translates ``OSError`` into the error tree.

Reading the project is the user's side: a file they cannot read or that vanished is a
``PackagingError`` (exit code 2, fix the project). Writing the archive is the machine's side:
a full disk or a read-only output folder is a ``BackendError`` (exit code 3).
"""

from __future__ import annotations

import errno
from pathlib import Path

from tdsp_deploy.errors import BackendError, ExitCode, TdspError


class PackagingError(TdspError):
    """The project cannot be packaged as it stands (a file unreadable, vanished or changed)."""

    exit_code = ExitCode.USAGE
    kind = "packaging"


def read_error(path: Path, exc: OSError) -> PackagingError:
    """The most specific PackagingError for a failure to read ``path``."""
    if isinstance(exc, FileNotFoundError):
        return PackagingError(
            f"{path} vanished while it was being packaged",
            hint="check the paths in the manifest and retry once nothing is moving files in the project",
        )
    if isinstance(exc, PermissionError):
        return PackagingError(
            f"cannot read {path}: permission denied",
            hint=f"make it readable (chmod u+r '{path}') or move it out of the packaged folder",
        )
    if exc.errno == errno.ELOOP:
        return PackagingError(
            f"{path} is a symbolic link loop",
            hint="fix or remove the link; packages hold file contents, never links",
        )
    return PackagingError(f"cannot read {path}: {exc.strerror or exc}", hint="check the file and retry")


def write_error(path: Path, exc: OSError) -> BackendError:
    """The most specific BackendError for a failure to write the archive at ``path``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BackendError(
            f"no space left to write the package in {path.parent}",
            hint="free some space or give another output folder",
        )
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return BackendError(
            f"cannot write the package in {path.parent}: not writable",
            hint="give an output folder you can write to",
        )
    return BackendError(
        f"cannot write the package {path}: {exc.strerror or exc}",
        hint="check the output folder and retry",
    )


def changed_error(path: Path) -> PackagingError:
    return PackagingError(
        f"{path} changed size while it was being packaged",
        hint="retry once nothing writes to the project (a training run still saving the model?)",
    )
