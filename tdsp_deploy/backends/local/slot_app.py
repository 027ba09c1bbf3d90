"""The WSGI application a granian worker of a slot serves: Azure ML's inference server app,
unchanged, inside two guards that gunicorn gave it and granian does not.

- The scoring time limit: the server limits run() with SIGALRM only on the main thread, and
  granian calls the app on a worker thread, so the watchdog of slot_hooks keeps the limit
  (interrupt at the limit; past it plus a grace period, the worker exits and granian starts
  a fresh one).
- A failed start: when init() fails, the server exits the worker with code 3, which gunicorn
  takes as "stop the whole server". granian would start the worker again and run init() once
  more (forever, when init() takes longer than granian's crash-loop window), so the worker
  tells its parent to stop and leaves the code in ``TDSP_SLOT_BOOT_EXIT_FILE`` for
  slot_server to exit with.

Loaded by granian (never imported by the CLI) as
``tdsp_deploy.backends.local.slot_app:app``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from tdsp_deploy.backends.local.slot_guard import guarded
from tdsp_deploy.backends.local.slot_hooks import Watchdog, settle_after_init, start_watchdog
from tdsp_deploy.backends.local.slot_server import BOOT_EXIT_FILE

WHOLE_BODY_MAX = 1024 * 1024  # bytes: answers up to this length go to granian in one piece


def _load_server_app() -> Callable[..., Iterable[bytes]]:
    try:
        from azureml_inference_server_http.server.entry import app as server_app
    except SystemExit as stop:
        _stop_parent(stop.code if isinstance(stop.code, int) else 1)
        raise
    except BaseException:
        _stop_parent(1)
        raise
    return server_app


def _stop_parent(code: int) -> None:
    path = os.environ.get(BOOT_EXIT_FILE)
    if path:
        with open(path, "w") as file:
            file.write(str(code))
    # The parent stops its workers as it shuts down (SIGTERM, whose handler this worker
    # inherited from the parent and must not keep); waiting for that here keeps this worker
    # from being seen as crashed, and started again, before the parent has read its signal.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getppid(), signal.SIGTERM)
    time.sleep(30)


class ScoringTimeLimit:
    """WSGI middleware: the watchdog watches each call of the app on this worker.

    granian runs one call at a time per worker here (``blocking_threads=1``), as gunicorn's
    sync worker did, so one watchdog per worker process is enough."""

    def __init__(self, app: Callable[..., Iterable[bytes]], watchdog: Watchdog):
        self.app = app
        self.watchdog = watchdog

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        lengths: list[int] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            for name, value in headers:
                if name.lower() == "content-length" and value.isdigit():
                    lengths.append(int(value))
            return start_response(status, headers, exc_info)

        self.watchdog.begin()
        try:
            # Flask runs the view, and so run(), inside this call; the body it returns is
            # already built.
            body = self.app(environ, start)
            if lengths and lengths[-1] <= WHOLE_BODY_MAX:
                # A body of known length is handed to granian whole: given an iterator,
                # granian passes it over chunk by chunk, which held the worker about as long
                # as reading the request (see BENCHMARKS.md). A streamed answer (no length)
                # is still an iterator, sent as it is produced.
                try:
                    return [b"".join(body)]
                finally:
                    close = getattr(body, "close", None)
                    if close is not None:
                        close()
            return body
        finally:
            self.watchdog.end()


# Only the router may call this slot (slot_guard.py).
app = guarded(ScoringTimeLimit(_load_server_app(), start_watchdog(logging.getLogger("azmlinfsrv"))))
settle_after_init()  # init() has run: the model and the modules stay for the worker's life
