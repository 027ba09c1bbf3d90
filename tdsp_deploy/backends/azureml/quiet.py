"""azure-ai-ml's own output kept out of ours.

The SDK prints (upload progress, a colour reset on stderr after each upload, a dot per poll
from its poller threads) and gives many of its module loggers stderr handlers at INFO ("Check:
endpoint ... exists", experimental-class warnings). The CLI's output is one JSON document on
stdout with `--json` and our own progress on stderr, so none of that may reach either.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def quiet_sdk() -> Iterator[None]:
    """The SDK's own output kept out of ours for the duration of a call: its prints (upload
    progress, a colour reset on stderr after each upload) and its loggers' messages ("Check:
    endpoint ... exists", the experimental-class warnings), which it sends to stderr through
    handlers of its own. The CLI writes through the streams it captured at start, so swapping
    sys.stdout and sys.stderr for the duration of a call is safe."""
    _silence_sdk_loggers()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


_SILENCED: set[str] = set()


def _silence_sdk_loggers() -> None:
    """azure-ai-ml gives many of its module loggers a stderr handler at INFO; those handlers
    are removed (the records still propagate, so `--debug` logging shows them), and a null
    handler keeps Python's last-resort handler from printing warnings the SDK logs."""
    root = logging.getLogger("azure.ai.ml")
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name in _SILENCED or not name.startswith("azure.ai.ml") or not isinstance(logger, logging.Logger):
            continue
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        _SILENCED.add(name)


class _WithoutPollerDots:
    """sys.stdout without what azure-core's poller threads write to it: azure-ai-ml's
    deployment poller prints a dot per poll from its own thread, between our calls, which
    would break `--json` (one document on stdout). Everything else passes through, and every
    other attribute (isatty, encoding, buffer, fileno) is the wrapped stream's."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread().name.startswith("LROPoller"):
            return len(text)
        return int(self._stream.write(text) or 0)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def drop_poller_dots() -> None:
    if not isinstance(sys.stdout, _WithoutPollerDots):
        sys.stdout = _WithoutPollerDots(sys.stdout)
