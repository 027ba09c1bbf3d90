"""A slot's log: its last lines, a copy kept when its deployment fails, and what the inference
server wrote there when the entry script stopped it from starting.

The server logs a failed start in one of a few shapes (``server/aml_blueprint.py`` and
``server/user_script.py`` of azureml-inference-server-http): the script could not be
imported, it lacks ``init()`` or ``run()``, or ``init()`` raised. Each is followed by a Python
traceback whose last unindented line is the user's own exception; that line, and the script's
frame above it, say what went wrong without the traceback around them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tdsp_deploy.backends.local.state import EndpointFiles, SlotRecord

# What the server writes, and what it means for the user.
_FAILURES = (
    ("Failed to import user script", "importing the entry script failed"),
    ("User's init function failed", "init() raised"),
)
_MISSING = re.compile(r"User script at (\S+) does not have a (init|run)\(\) function defined")
_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")  # a log entry begins with its time
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)')
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(: .*)?$")  # "KeyError: 'x'", after a frame


def read_tail(path: Path, lines: int | None) -> str:
    """The last ``lines`` lines of ``path`` (all of it for None; "" when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            if lines is None:
                return handle.read().decode("utf-8", "replace")
            # Read from the end in blocks: logs can be large.
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = 8192
            data = b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
            return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def keep_failed_log(files: EndpointFiles, slot: SlotRecord) -> Path:
    """Copy a failing revision's log where it outlives the revision's folder
    (``logs --failed``)."""
    kept = files.failed_log(slot.name)
    kept.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(slot.log_path, kept)
    except FileNotFoundError:
        kept.write_text("")
    return kept


def entry_script_failure(log: str) -> str | None:
    """What stopped the entry script, in one line (``init() raised RuntimeError: no model
    (score.py, line 3)``); None when the log shows no failure of the script."""
    lines = log.splitlines()
    missing = None
    for line in lines:
        found = _MISSING.search(line)
        if found:
            missing = f"{Path(found.group(1)).name} has no {found.group(2)}() function"
    for marker, meaning in _FAILURES:
        at = _last_index(lines, lambda line, marker=marker: marker in line)
        if at is not None:
            cause = _first_exception(_entries_from(lines, at))
            return f"{meaning}: {cause}" if cause else meaning
    return missing


def _last_index(lines: list[str], matches: Callable[[str], bool], end: int | None = None) -> int | None:
    for index in range((len(lines) if end is None else end) - 1, -1, -1):
        if matches(lines[index]):
            return index
    return None


def _entries_from(lines: list[str], at: int) -> list[str]:
    """The log entry holding line ``at`` and the one after it: the server logs the wrapped
    exception within the traceback it ends (an import) or in the entry after its own message
    (init())."""
    start = _last_index(lines, _ENTRY.match, at + 1) or 0
    following = [index for index in range(at + 1, len(lines)) if _ENTRY.match(lines[index])]
    return lines[start : following[1] if len(following) > 1 else len(lines)]


def _first_exception(lines: list[str]) -> str | None:
    """The first exception a traceback ends with (the user's, before the server's own that
    wraps it), with the last frame outside the server's and Python's own code."""
    frame, in_traceback = None, False
    for line in lines:
        found = _FRAME.match(line)
        if found:
            in_traceback = True
            path = found.group(1)
            if not path.startswith("<") and "site-packages" not in path and "/lib/python" not in path:
                frame = f"{Path(path).name}, line {found.group(2)}"
        elif in_traceback and _EXCEPTION.match(line):
            return f"{line} ({frame})" if frame else line
    return None
