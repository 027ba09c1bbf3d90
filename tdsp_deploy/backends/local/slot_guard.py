"""Slots answer only the router: each request carries a per-slot secret the router adds.

A slot listens on loopback, and loopback is shared by every program and user on the machine;
without this, any of them could call a model directly, with no key, around the router's
limits. The CLI derives each slot revision's secret from the endpoint's slot key (admin.json,
mode 0600) and hands it to the slot process in its environment; the router derives the same
secret from the same key and sends it in ``x-tdsp-slot-key`` on every request. A request
without it gets a 403. ``GET /`` stays open: it is the liveness probe (the supervisor and the
CLI call it on the slot's port) and says nothing but "Healthy".

The header is taken out of the request before the scoring script sees it, so a ``@rawhttp``
run() never receives the secret. Kept free of anything but the standard library: every slot
process imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from typing import Any

SLOT_SECRET_HEADER = b"x-tdsp-slot-key"
SLOT_SECRET_ENV = "TDSP_SLOT_SECRET"
_ENVIRON_KEY = "HTTP_X_TDSP_SLOT_KEY"


def slot_secret(slot_key: str, slot: str, revision: str) -> str:
    """The secret of one revision of one slot, derived from the endpoint's slot key."""
    return hmac.new(slot_key.encode(), f"{slot}/{revision}".encode(), hashlib.sha256).hexdigest()


class SlotGuard:
    """WSGI middleware: refuses (403) any request but ``GET /`` without the slot's secret."""

    def __init__(self, app: Callable[..., Iterable[bytes]], secret: str | None):
        self.app = app
        self.secret = secret.encode() if secret else None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.pop(_ENVIRON_KEY, None)
        if (
            self.secret is None
            or environ.get("PATH_INFO") in ("/", "")
            and environ.get("REQUEST_METHOD") in ("GET", "HEAD")
        ):
            return self.app(environ, start_response)
        if given is None or not hmac.compare_digest(given.encode("latin-1"), self.secret):
            body = b'{"message": "this port answers the endpoint\'s router only; call the endpoint"}'
            start_response(
                "403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        return self.app(environ, start_response)


def guarded(app: Callable[..., Iterable[bytes]]) -> SlotGuard:
    """The app behind this process's slot secret (from its environment; none: no check)."""
    return SlotGuard(app, os.environ.get(SLOT_SECRET_ENV))
