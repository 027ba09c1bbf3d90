"""A slot answers only requests that carry its secret (the router adds it), under either HTTP
server, and the scoring script never sees that secret."""

from __future__ import annotations

import http.client
import json

import pytest

from tdsp_deploy.backends.local.slot_guard import SLOT_SECRET_ENV, SLOT_SECRET_HEADER, slot_secret
from tests.fakes.slot_process import HTTP_SERVERS, SlotProcess

pytestmark = pytest.mark.timeout(300)

HEADERS_SCORE = """
import json

from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    return AMLResponse(json.dumps({k.lower(): v for k, v in request.headers.items()}), 200)
"""


def _post(slot: SlotProcess, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", slot.port, timeout=30)
    try:
        connection.request("POST", "/score", b"{}", {"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@HTTP_SERVERS
def test_a_slot_refuses_requests_without_its_secret(tmp_path, monkeypatch, http_server):
    secret = slot_secret("the-slot-key", "blue", "r1")
    monkeypatch.setenv(SLOT_SECRET_ENV, secret)
    slot = SlotProcess(tmp_path, HEADERS_SCORE, http_server=http_server)  # it probed GET / unkeyed
    try:
        status, body = _post(slot, {})
        assert status == 403 and b"router" in body
        assert _post(slot, {SLOT_SECRET_HEADER.decode(): secret[:-1] + "0"})[0] == 403
        assert _post(slot, {SLOT_SECRET_HEADER.decode(): slot_secret("the-slot-key", "blue", "r2")})[0] == 403
        status, body = _post(slot, {SLOT_SECRET_HEADER.decode(): secret, "x-seen": "yes"})
        assert status == 200, body
        seen = json.loads(body)
        assert seen["x-seen"] == "yes" and SLOT_SECRET_HEADER.decode() not in seen  # run() never sees it
        assert secret not in body.decode()
    finally:
        slot.stop()
