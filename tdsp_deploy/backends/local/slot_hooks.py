"""gunicorn hooks of a slot's workers: the scoring time limit, kept under the threaded worker;
and, under either HTTP server, the collector told to skip what init() left (settle_after_init).

Under gunicorn's sync worker the inference server limits run() with SIGALRM (its
SCORING_TIMEOUT_MS); a signal reaches only the main thread, and the threaded worker that gives
the router keep-alive connections calls run() on another thread, so that limit would silently
lapse and a run() that never returns would hold the slot forever. Here a watchdog thread per
worker does the same job: past the limit it raises TimeoutError in the request's thread (which
the server answers as "Scoring timeout", as before); a run() stuck in C code cannot be
interrupted that way, so past the limit plus a grace period the worker exits and gunicorn
starts a fresh one, as its own --timeout would under the sync worker.

Loaded by slot_server.py as ``gunicorn -c python:tdsp_deploy.backends.local.slot_hooks``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from typing import Any

GRACE_S = 5.0
CHECK_EVERY_S = 0.25
DEFAULT_LIMIT_MS = 3_600_000  # the inference server's own default for SCORING_TIMEOUT_MS


class Watchdog:
    """Watches the one request a worker thread is running."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.lock = threading.Lock()
        self.thread_id: int | None = None
        self.started = 0.0
        self.interrupted = False

    def begin(self) -> None:
        with self.lock:
            self.thread_id = threading.get_ident()
            self.started = time.monotonic()
            self.interrupted = False

    def end(self) -> None:
        with self.lock:
            self.thread_id = None

    def check(self) -> str | None:
        """What to do now: None, "interrupt" or "exit"."""
        with self.lock:
            if self.thread_id is None:
                return None
            running = time.monotonic() - self.started
            if running > self.limit_s + GRACE_S:
                return "exit"
            if running > self.limit_s and not self.interrupted:
                self.interrupted = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_id), ctypes.py_object(TimeoutError)
                )
                return "interrupt"
            return None

    def run(self, log: Any) -> None:
        while True:
            time.sleep(CHECK_EVERY_S)
            action = self.check()
            if action == "interrupt":
                log.error(
                    "run() passed the scoring time limit of %.0f ms; interrupting it", self.limit_s * 1000
                )
            elif action == "exit":
                log.error(
                    "run() did not stop %.0f s after the scoring time limit; restarting this worker", GRACE_S
                )
                os._exit(1)  # gunicorn's arbiter starts a new worker in its place


_watchdog: Watchdog | None = None


def start_watchdog(log: Any) -> Watchdog:
    """This worker's watchdog, running, at the server's own limit (SCORING_TIMEOUT_MS); used
    by gunicorn's hook below and by the app granian serves (slot_app.py)."""
    limit_ms = int(os.environ.get("SCORING_TIMEOUT_MS", DEFAULT_LIMIT_MS))
    watchdog = Watchdog(limit_ms / 1000)
    threading.Thread(target=watchdog.run, args=(log,), name="scoring-watchdog", daemon=True).start()
    return watchdog


def settle_after_init() -> None:
    """Called once a worker has run init() and is about to serve: what exists now (the
    modules, the server's app, the user's model) lives as long as the worker, so the cyclic
    garbage collector is told to stop walking it. A full collection otherwise walks every one
    of those objects, hundreds of thousands with mlflow loaded, and the request that triggers
    it waits (BENCHMARKS.md, "Serving: the slot's share"). Reference counting still frees
    them; only a reference cycle among them made garbage later would stay until the worker
    restarts (a run() that replaces a model holding cycles)."""
    gc.freeze()


def post_worker_init(worker: Any) -> None:
    global _watchdog
    settle_after_init()
    _watchdog = start_watchdog(worker.log)
    from tdsp_deploy.backends.local.slot_guard import guarded

    worker.wsgi = guarded(worker.wsgi)  # only the router may call this slot (slot_guard.py)


def pre_request(worker: Any, request: Any) -> None:
    if _watchdog is not None:
        _watchdog.begin()


def post_request(worker: Any, request: Any, environ: Any, response: Any) -> None:
    if _watchdog is not None:
        _watchdog.end()
