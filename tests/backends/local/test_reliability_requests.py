"""Bad requests to a live endpoint: each gets its own clear status, and the endpoint keeps serving.

The corpus in tests/data/corpus/requests/ holds raw HTTP requests, byte for byte as they are sent
(``{KEY}`` stands for the endpoint's key), each with its expected status and a fragment of the
answer on its first line: ``# expect: STATUS | fragment``. After every one of them a good
request must still get its 200.

A body that is not JSON (400) or a content type that is not (415) is refused by the router, as
Azure ML's inference server refuses them for a script that declares its input; a script that
takes raw requests (``@rawhttp``) gets them as they are.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest
import yaml

from tdsp_deploy.backends.local.entry_script import takes_raw_requests
from tests import paths

pytestmark = pytest.mark.timeout(300)

CORPUS = paths.DATA / "corpus" / "requests"
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
            b"POST /score HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            + key.encode()
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
        "empty-body.http", "form-content-type.http", "not-utf8.http",
    } <= names  # fmt: skip
    statuses = {status for _, status, *_ in cases()}
    assert {400, 401, 404, 413, 415, 500} <= statuses


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


def request_on(connection: http.client.HTTPConnection, key: str, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    connection.request("POST", "/score", body, {"Authorization": f"Bearer {key}", **headers})
    response = connection.getresponse()
    return response.status, json.loads(response.read()), response.will_close


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "connection-close"])
def test_bodies_that_are_not_json_get_400_and_415_on_the_same_connection(endpoint, keep_alive):
    """The router reads the whole refused request, so a kept-alive connection stays in step: the
    next request on it is answered as usual. With ``Connection: close`` it is closed after."""
    port, key, good = endpoint
    sample = good[good.index(b"\r\n\r\n") + 4 :]
    close = {} if keep_alive else {"Connection": "close"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for body, headers, expected, fragment in [
            (b'{"data": [1, 2', {"Content-Type": "application/json"}, 400, "line 1, column 15"),
            (b'{"data":\n  [[1, 2, 3, 4]],\n  oops}', {}, 400, "line 3, column 3"),  # no type: parsed
            (b"1,2,3,4", {"Content-Type": "text/csv"}, 415, "'Content-Type: application/json'"),
            (sample, {"Content-Type": "application/json; charset=utf-8"}, 200, None),
            (sample, {"Content-Type": "application/vnd.iris+json"}, 200, None),
        ]:
            status, answer, will_close = request_on(connection, key, body, **headers, **close)
            assert status == expected, answer
            if fragment is not None:
                assert fragment in answer["message"], answer
                assert "predictions" not in answer
            else:
                assert "predictions" in answer
            assert will_close is not keep_alive
            if not keep_alive:
                connection.close()
    finally:
        connection.close()
    assert send_raw(port, good)[0] == 200


def test_an_over_size_body_gets_413_before_its_type_or_json_are_looked_at(endpoint):
    port, key, good = endpoint
    too_big = b"not json " * 2000  # 18 KB, over the 10 KB limit
    head = (
        b"POST /score HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + key.encode()
        + b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(too_big)
    )  # fmt: skip
    status, body = send_raw(port, head + too_big)
    assert status == 413 and "target.max_request_mb" in body.decode()
    assert send_raw(port, good)[0] == 200


RAW_SCRIPT = """\
import json

from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request: AMLRequest):
    seen = {"content_type": request.headers.get("Content-Type"), "body": request.get_data().decode("latin-1")}
    return AMLResponse(json.dumps(seen), 200, {"Content-Type": "application/json"})
"""


def test_a_rawhttp_script_gets_every_body_as_it_was_sent(cli, iris, state_home):
    """A deployment whose run() is decorated with @rawhttp takes any body and content type: the
    router recognises the decorator in the script at push and forwards everything unchanged."""
    (iris.parent / "src" / "score.py").write_text(RAW_SCRIPT)
    doc = yaml.safe_load(iris.read_text())
    doc["smoke_test"] = {"request": "sample-request.json"}  # the answer is an echo: nothing to expect
    iris.write_text(yaml.safe_dump(doc))
    pushed = cli("push", iris, "--json")
    try:
        assert pushed.exit_code == 0, pushed.stderr
        routes = json.loads((state_home / "endpoints" / "iris" / "router.json").read_text())["slots"]
        assert routes["blue"]["raw_http"] is True
        port = int(pushed.json()["scoring_uri"].split(":")[2].split("/")[0])
        key = cli("credentials", iris, "--json").json()["primary_key"]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for body, content_type in [(b"hello, world", "text/plain"), (b'{"data": [1, 2', "application/json")]:
            status, answer, _ = request_on(connection, key, body, **{"Content-Type": content_type})
            assert status == 200, answer
            assert answer == {"content_type": content_type, "body": body.decode()}
        connection.close()
    finally:
        cli("delete", iris, "--yes")


@pytest.mark.parametrize(
    ("source", "raw"),
    [
        ("from azureml.contrib.services.aml_request import rawhttp\n@rawhttp\ndef run(r):\n    pass\n", True),
        (
            "from azureml_inference_server_http.api import aml_request\n"
            "@aml_request.rawhttp\ndef run(r): pass\n",
            True,
        ),
        (
            "from azureml.contrib.services.aml_request import rawhttp as raw\n@raw\ndef run(r):\n    pass\n",
            True,
        ),
        ("def run(raw_data):\n    return raw_data  # rawhttp is not used here\n", False),
        (
            "from inference_schema.schema_decorators import input_schema\n"
            "@input_schema('d', None)\ndef run(d): pass\n",
            False,
        ),
        ("def run(:\n", False),  # does not parse: not taken as raw (its init() fails the push)
    ],
    ids=["contrib", "attribute", "alias", "plain", "input-schema", "syntax-error"],
)
def test_rawhttp_is_recognised_in_the_script_source(tmp_path, source, raw):
    script = tmp_path / "score.py"
    script.write_text(source)
    assert takes_raw_requests(script) is raw
    assert takes_raw_requests(tmp_path / "missing.py") is False
