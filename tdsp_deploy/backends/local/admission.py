"""Who may ask what, decided before a request costs the router anything.

A client without the key must cost the router next to nothing, or any program that can reach
the port could starve the clients that have it. So the limits here are checked while a
request's head arrives (the request line, each header, the whole head, the header count; the
head must also arrive within the configuration's ``head_timeout_s``, 10 s, or it is a 408), and
the credential as soon as the head is complete: a request that fails either is answered and
its connection closed before a byte of its body is read or buffered.

Two credentials, for two kinds of caller:

- the scoring keys (``keys.json``: primary and secondary), which every client of the endpoint
  holds; they open the scoring routes and ``/metrics``;
- the admin key (``admin.json``, mode 0600, only the tdsp-deploy CLI reads it), which opens the
  control routes (``/-/state``, ``/-/drain``, ``/-/resume``): a scoring key there is a 403, so
  a client can never drain a deployment or learn where the slots listen.

``GET /`` (liveness, as Azure ML's endpoints answer it) needs neither.
"""

from __future__ import annotations

import hmac

# Limits on a request's head; the sizes are those common HTTP servers ship with (gunicorn:
# 4094-byte request line, 8190-byte header line, 100 headers; nginx: 8 KiB buffers).
MAX_REQUEST_LINE = 8192  # bytes of the target (path and query): 414 past it
MAX_HEADER_LINE = 8192  # bytes of one header's name and value: 431 past it
MAX_HEAD_BYTES = 65536  # bytes of the whole head: 431 past it
MAX_HEADERS = 100  # header lines: 431 past it

NONE, SCORING, ADMIN, EITHER = "none", "scoring", "admin", "either"
CONTROL_PREFIX = b"/-/"


def needed(method: bytes, path: bytes) -> str:
    """The credential a request needs: NONE (liveness), ADMIN (control routes), EITHER
    (metrics), or SCORING (everything else)."""
    if path == b"/" and method in (b"GET", b"HEAD"):
        return NONE
    if path.startswith(CONTROL_PREFIX):
        return ADMIN
    if path == b"/metrics":
        return EITHER
    return SCORING


def bearer_token(header: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for another scheme.

    The scheme is case-insensitive (RFC 9110 11.1), and one or more spaces may follow it."""
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip(b" ")
    return token or None


class Credentials:
    """The keys the router takes, compared in constant time against every one of them, so the
    time an answer takes says nothing about which key (or how much of one) matched."""

    def __init__(self, scoring_keys: tuple[bytes, ...], admin_key: bytes | None):
        self.scoring_keys = scoring_keys
        self.admin_key = admin_key

    def refusal(self, need: str, authorization: list[bytes]) -> tuple[int, str, bool] | None:
        """None when the request may go on; else (status, message, ask for a key)."""
        if need == NONE:
            return None
        if len(authorization) > 1:
            # Proxies and servers disagree on which of two would win: refuse rather than guess.
            return 400, "send one Authorization header, not several", False
        token = bearer_token(authorization[0]) if authorization else None
        if token is None:
            return 401, _ASK[need], True
        scoring = _matches(token, self.scoring_keys)
        admin = self.admin_key is not None and _matches(token, (self.admin_key,))
        if need == SCORING and scoring or need == ADMIN and admin or need == EITHER and (scoring or admin):
            return None
        if need == ADMIN and scoring:
            return (
                403,
                (
                    "the scoring key cannot use the endpoint's control routes; they take the admin key "
                    "that only the tdsp-deploy CLI holds"
                ),
                False,
            )
        return 401, _ASK[need], True


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    matched = False
    for key in keys:  # every key, every time: no early exit that timing could reveal
        matched |= hmac.compare_digest(token, key)
    return matched


_ASK = {
    SCORING: "missing or invalid key: send 'Authorization: Bearer <key>' (tdsp-deploy credentials)",
    EITHER: "missing or invalid key: send 'Authorization: Bearer <key>' (tdsp-deploy credentials)",
    ADMIN: "missing or invalid admin key: the control routes are for the tdsp-deploy CLI",
}
