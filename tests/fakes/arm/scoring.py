"""The data plane of the emulated workspace: a loopback HTTP server answering ``POST
/<endpoint>/score`` as a managed online endpoint's front end does, from the workspace's own
state (keys, traffic, deployment states), so a traffic change made through ARM changes where
requests go.

Azure's front end: a key or token as bearer (401 otherwise); ``azureml-model-deployment``
pins a deployment and is echoed on the answer; without a pin, the endpoint's traffic split
chooses; no deployment to route to is 404 "No valid deployments to route to.". The model's
answer is the test's (``answers``), by deployment.
"""

from __future__ import annotations

import http.server
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.fakes.arm.workspace import Workspace

PIN_HEADER = "azureml-model-deployment"


class ScoringFrontEnd:
    def __init__(self, workspace: Workspace, answer: bytes):
        self.workspace = workspace
        self.answer = answer
        #: deployment -> function(body) -> (status, headers, payload); default: ``answer``
        self.answers: dict[str, Callable[[bytes], tuple[int, dict[str, str], bytes]]] = {}
        #: one record per scored request: which deployment, pinned or not
        self.requests: list[dict[str, Any]] = []
        #: seconds each answer takes (to fill the deployment's concurrency limit)
        self.answer_delay_s = 0.0
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self.base_url = ""

    def score(self, endpoint: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        resource = self.workspace.endpoints.get(endpoint)
        if resource is None:
            return 404, {}, b'{"message": "endpoint not found"}'
        props = resource["properties"]
        if props.get("authMode") == "Key":
            accepted = set(self.workspace.keys.get(endpoint, {}).values())
        else:  # AMLToken / AADToken: the token the endpoint's POST .../token gave
            accepted = {self.workspace.token}
        if headers.get("authorization", "") not in {f"Bearer {k}" for k in accepted}:
            return 401, {}, b'{"message": "Invalid authentication"}'
        pinned = headers.get(PIN_HEADER)
        deployments = {n: d for (e, n), d in self.workspace.deployments.items() if e == endpoint}
        if pinned:
            chosen = pinned if pinned in deployments else None
        else:
            live = {n: w for n, w in (props.get("traffic") or {}).items() if w > 0}
            chosen = random.choices(list(live), weights=list(live.values()))[0] if live else None
        if chosen is None or deployments[chosen]["properties"]["provisioningState"] not in (
            "Succeeded",
            "Updating",
        ):
            return 404, {}, b'{"message": "No valid deployments to route to."}'
        # Azure accepts 2 x max_concurrent_requests_per_instance x instance count at a time and
        # answers the rest 429 (how-to-troubleshoot-online-endpoints, "HTTP status codes")
        deployment = deployments[chosen]
        settings = deployment["properties"].get("requestSettings") or {}
        limit = (
            2
            * int(settings.get("maxConcurrentRequestsPerInstance") or 1)
            * int((deployment.get("sku") or {}).get("capacity") or 1)
        )
        with self._lock:
            if self._in_flight.get(chosen, 0) >= limit:
                return 429, {PIN_HEADER: chosen}, b'{"message": "Too many pending requests"}'
            self._in_flight[chosen] = self._in_flight.get(chosen, 0) + 1
            self.requests.append({"deployment": chosen, "pinned": bool(pinned)})
        try:
            if self.answer_delay_s:
                time.sleep(self.answer_delay_s)
            answer = self.answers.get(chosen)
            status, extra, payload = answer(body) if answer else (200, {}, self.answer)
        finally:
            with self._lock:
                self._in_flight[chosen] -= 1
        return status, {PIN_HEADER: chosen, **extra}, payload

    @contextmanager
    def serve(self) -> Iterator[ScoringFrontEnd]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), scoring_handler(self.score))
        server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def answer_json(value: Any) -> bytes:
    return json.dumps(value).encode()


Score = Callable[[str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


def scoring_handler(score: Score) -> type[http.server.BaseHTTPRequestHandler]:
    """An HTTP handler for ``POST /<endpoint>/score`` that answers with ``score(endpoint,
    lower-cased headers, body)``; anything else is a 404."""

    class ScoringHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[1] != "score":
                status, headers, payload = 404, {}, b'{"message": "not found"}'
            else:
                lowered = {k.lower(): v for k, v in self.headers.items()}
                status, headers, payload = score(parts[0], lowered, body)
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return ScoringHandler
