"""A client's request as the router holds it, from its first byte to its logged answer.

http1.py fills it while the head and body are parsed, dispatch.py answers it, timing.py and
metrics.py read it once the answer is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from tdsp_deploy.backends.local.upstream import UpstreamAnswer


class Request:
    __slots__ = (
        "method",
        "url",
        "url_parts",
        "head_size",
        "headers",
        "header_count",
        "chunks",
        "body",
        "keep_alive",
        "http11",
        "pin",
        "authorization",
        "content_type",
        "request_id",
        "sticky",
        "started",
        "expect",
        "connection_tokens",
        "begun",
        "served",
        "picked",
        "upstream",
        "deployment",
        "status",
        "path",
        "oversized",
        "task",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.url_parts: list[bytes] = []  # joined once: a target sent in many pieces costs linear time
        self.head_size = 0  # bytes of the target, then of the head so far
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_count = 0
        self.chunks: list[bytes] = []
        self.body = b""
        self.keep_alive = True
        self.http11 = True
        self.pin: bytes | None = None
        self.authorization: list[bytes] = []
        self.content_type: bytes | None = None
        self.request_id: bytes | None = None
        self.sticky: bytes | None = None
        self.started = 0.0
        self.expect: bytes | None = None  # the Expect header; b"" once 100 Continue is sent or moot
        self.connection_tokens: frozenset[bytes] = frozenset()  # headers named in Connection:
        # perf_counter() stamps for timing.py: first byte parsed, task started, slot being
        # picked; and the slot's answer (its own stamps) once one answered
        self.begun = 0.0
        self.served = 0.0
        self.picked = 0.0
        self.upstream: UpstreamAnswer | None = None
        # The deployment an answer was given for and its status: counted and logged
        # (metrics.py) once the answer is written, off the path of the answer itself.
        self.deployment: str | None = None
        self.status = 0
        self.path = b""  # the target without its query
        self.oversized = False  # a Content-Length past the endpoint's limit
        # The task answering it (http1.py): dispatch.py takes its loop and deadline from it, as
        # asyncio.get_running_loop() and current_task() each cost a getpid() system call.
        self.task: asyncio.Task[None] | None = None
