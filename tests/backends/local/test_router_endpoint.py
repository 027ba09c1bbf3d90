"""A real pushed local endpoint, called as its clients (and its attackers) would: curl with a
large body, the scoring key on the control routes, and a direct call to a slot's port."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.fakes.echo_endpoint import belongs, body_for, write_echo_manifest

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def endpoint(cli, tmp_path):  # type: ignore[no-untyped-def]
    manifest = write_echo_manifest(tmp_path / "echo")
    pushed = cli("push", manifest, "--json")
    try:
        assert pushed.exit_code == 0, pushed.stderr
        key = cli("credentials", manifest, "--json").json()["primary_key"]
        status = cli("status", manifest, "--json").json()
        yield {"manifest": manifest, "uri": pushed.json()["scoring_uri"], "key": key, "status": status}
    finally:
        cli("delete", manifest, "--yes")


def _connection(uri: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(uri)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)


def _call(uri: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = _connection(uri)
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it)")
def test_curl_with_a_2_mib_body_gets_its_own_answer_at_once(endpoint, tmp_path):
    body = body_for("curl-2mib", padding=2 * 1024 * 1024)
    (tmp_path / "big.json").write_bytes(body)
    started = time.monotonic()
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "--fail-with-body",
            # Were 100 Continue never sent, curl would wait this long before sending the body.
            "--expect100-timeout",
            "30",
            "--max-time",
            "60",
            "-H",
            f"Authorization: Bearer {endpoint['key']}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            f"@{tmp_path / 'big.json'}",
            endpoint["uri"],
        ],
        capture_output=True,
        timeout=90,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    trace = done.stderr.decode()
    assert "Expect: 100-continue" in trace  # curl asked, as it does for a body this large
    assert "< HTTP/1.1 100 Continue" in trace  # the router answered it (the slot never sees it)
    assert belongs(body, done.stdout), done.stdout[:300]
    assert elapsed < 15, elapsed  # not the 30 s curl would have waited for a 100 that never came


def test_the_scoring_key_cannot_use_any_control_route(endpoint):
    uri, key = endpoint["uri"], endpoint["key"]
    scoring = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    routes = [
        ("GET", "/-/state", None),
        ("GET", "/-/timing", None),
        ("POST", "/-/drain", json.dumps({"deployment": "blue", "timeout_s": 0}).encode()),
        ("POST", "/-/resume", json.dumps({"deployment": "blue"}).encode()),
        ("GET", "/-/anything", None),
    ]
    for method, path, body in routes:
        status, answer = _call(uri, method, path, body, scoring)
        assert status == 403, (path, status, answer)
        assert "admin key" in json.loads(answer)["message"]
        status, _ = _call(uri, method, path, body, {})
        assert status == 401, (path, status)
    # Nothing was drained: the endpoint still answers, and the CLI (admin key) still can.
    status, answer = _call(uri, "POST", "/score", body_for("after"), scoring)
    assert status == 200 and belongs(body_for("after"), answer)
    home = Path(os.environ["TDSP_DEPLOY_HOME"])
    admin_file = home / "endpoints" / "echo" / "admin.json"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    admin = {"Authorization": f"Bearer {json.loads(admin_file.read_text())['admin_key']}"}
    status, answer = _call(uri, "GET", "/-/state", None, admin)
    assert status == 200 and json.loads(answer)["endpoint"] == "echo"
    status, answer = _call(uri, "GET", "/-/timing", None, admin)
    assert status == 200 and json.loads(answer)["requests"] >= 1  # the scoring request above
    status, _ = _call(uri, "POST", "/score", body_for("admin"), {**admin, "Content-Type": "application/json"})
    assert status == 401  # and the admin key does not score


def test_a_slot_answers_only_the_router(endpoint):
    slot = endpoint["status"]["slots"][0]
    direct = f"http://127.0.0.1:{slot['details']['port']}/score"
    body = body_for("direct")
    status, answer = _call(direct, "POST", "/score", body, {"Content-Type": "application/json"})
    assert status == 403, answer
    assert b"router" in answer and b"direct" not in answer  # run() never ran
    status, answer = _call(
        direct, "POST", "/score", body, {"Content-Type": "application/json", "x-tdsp-slot-key": "guess"}
    )
    assert status == 403
    assert _call(direct, "GET", "/", None, {})[0] == 200  # the liveness probe stays open
    # Through the router the same request is answered.
    status, answer = _call(
        endpoint["uri"],
        "POST",
        "/score",
        body,
        {"Authorization": f"Bearer {endpoint['key']}", "Content-Type": "application/json"},
    )
    assert status == 200 and belongs(body, answer)
