"""What one call of an endpoint answers, whoever made the answer.

The core's: the HTTP callers (http_caller.py) answer in it, and so do targets that score with
a query rather than over HTTP (``json_answer``); the backend contract names it for them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

#: Azure ML's header that pins a request to a deployment, and names the one that answered.
PIN_HEADER = "azureml-model-deployment"


@dataclasses.dataclass
class InvokeResult:
    """One answer of the endpoint."""

    status: int
    body: bytes
    headers: dict[str, str]
    elapsed_ms: float

    @property
    def deployment(self) -> str | None:
        return self.headers.get(PIN_HEADER)

    def json(self) -> Any:
        return json.loads(self.body)


def json_answer(status: int, doc: Any, started: float, headers: dict[str, str] | None = None) -> InvokeResult:
    """An answer made here rather than received (a target scored by a query, not over HTTP):
    ``doc`` as JSON, timed from ``started`` (time.perf_counter())."""
    return InvokeResult(
        status=status,
        body=json.dumps(doc, default=str).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )


# A caller sends one request body and returns the answer. The latency run gives each of its
# worker threads its own caller, so a backend can keep one connection per caller.
Caller = Callable[[bytes], InvokeResult]
