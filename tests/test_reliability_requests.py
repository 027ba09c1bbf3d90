"""Bad requests to a live endpoint: each gets its own clear status, and the endpoint keeps serving.

The corpus in tests/corpus/requests/ holds raw HTTP requests, byte for byte as they are sent
(``{KEY}`` stands for the endpoint's key), each with its expected status and a fragment of the
answer on its first line: ``# expect: STATUS | fragment``. After every one of them a good
request must still get its 200.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(300)

CORPUS = Path(__file__).parent / "corpus" / "requests"
LIMIT_MB = 0.01  # the endpoint's body limit in these tests: 10 KB


def cases() -> list[tuple[str, int, str, bytes]]:
    found = []
    for path in sorted(CORPUS.glob("*.http")):
        header, _, request = path.read_bytes().partition(b"\r\n")
        status, _, fragment = header.decode().removeprefix("# expect: ").partition(" | ")
        found.append((path.name, int(status), fragment, request))
    return found


def send_raw(port: int, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


@pytest.fixture
def endpoint(cli, iris):  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(iris.read_text())
    doc["target"]["max_request_mb"] = LIMIT_MB
    doc["smoke_test"]["latency"] = {"requests": 10, "concurrency": 1, "warmup": 0, "p95_ms": 10_000}
    iris.write_text(yaml.safe_dump(doc))
    pushed = cli("push", iris, "--json")
    try:
        assert pushed.exit_code == 0, pushed.stderr
        port = int(pushed.json()["scoring_uri"].split(":")[2].split("/")[0])
        key = cli("credentials", iris, "--json").json()["primary_key"]
        good = (
            b"POST /score HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        )
        body = (iris.parent / "sample-request.json").read_bytes()
        yield port, key, good % len(body) + body
    finally:
        cli("delete", iris, "--yes")


def test_the_corpus_covers_each_kind_of_bad_request():
    names = {name for name, *_ in cases()}
    assert {
        "malformed-json.http", "wrong-content-type.http", "body-over-limit.http", "chunked-over-limit.http",
        "model-raises.http", "malformed-http.http", "no-key.http", "unknown-deployment.http",
    } <= names  # fmt: skip
    statuses = {status for _, status, *_ in cases()}
    assert {400, 401, 404, 413, 500} <= statuses


def test_each_bad_request_gets_its_status_and_the_endpoint_keeps_serving(endpoint):
    port, key, good = endpoint
    wrong = []
    for name, expected, fragment, raw in cases():
        status, body = send_raw(port, raw.replace(b"{KEY}", key.encode()))
        if status != expected or fragment not in body.decode("utf-8", "replace"):
            wrong.append((name, expected, fragment, status, body[:300]))
        after, answer = send_raw(port, good)
        if after != 200 or "predictions" not in json.loads(answer):
            wrong.append((f"good request after {name}", 200, "predictions", after, answer[:300]))
    assert wrong == []


def test_slow_and_hung_clients_do_not_block_the_others(endpoint):
    """Clients that connect and send nothing, stop halfway through the headers, or promise a
    body they never send each hold a connection; everyone else is served as usual."""
    port, key, good = endpoint
    hung = []
    try:
        for partial in (b"", b"POST /score HTTP/1.1\r\nHost: local", good[: good.index(b"\r\n\r\n") + 4]):
            for _ in range(10):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.sendall(partial)
                hung.append(sock)
        statuses = [send_raw(port, good)[0] for _ in range(30)]
        assert statuses == [200] * 30
    finally:
        for sock in hung:
            sock.close()
    assert send_raw(port, good)[0] == 200
