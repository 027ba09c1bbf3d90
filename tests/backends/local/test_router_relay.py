"""What the router relays of a slot's answer: the slot's own headers as it sent them, never
those that describe its connection to the router (hop-by-hop, those its Connection header
names, its framing), and the router's own in their place. Each answer goes back on a kept-alive
connection shared by several requests in turn, so one answer's headers showing up in the next
would show here too."""

from __future__ import annotations

import json
import socketserver

import pytest

from tests.fakes.router_harness import AUTH, RawSlotServer, read_request, routers_for_test


@pytest.fixture
def make_router(tmp_path):  # type: ignore[no-untyped-def]
    yield from routers_for_test(tmp_path)


class HeaderSlot(RawSlotServer):
    """A keep-alive HTTP/1.1 upstream that answers the n-th request on a connection with the
    n-th head of ``heads`` (cycling) and a body naming the request's own x-request-id."""

    def __init__(self, heads: list[bytes]):
        self.heads = heads
        super().__init__(HeaderSlotHandler)


class HeaderSlotHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: HeaderSlot = self.server  # type: ignore[assignment]
        buffered, answered = b"", 0
        while True:
            request = read_request(self.request, buffered)
            if request is None:
                return
            _, fields, _, buffered = request
            body = json.dumps({"id": fields[b"x-request-id"].decode()}).encode()
            own = server.heads[answered % len(server.heads)]
            answered += 1
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\n" + own + b"Content-Length: %d\r\n\r\n" % len(body) + body
            )


HOP_BY_HOP = (
    b"Connection: keep-alive, X-Private\r\n"
    b"X-Private: the slot's own\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Server: the slot\r\n"
    b"x-request-id: made-by-the-slot\r\n"
    b"azureml-model-deployment: not-its-name\r\n"
    b"X-Kept: yes\r\n"
)
PLAIN = b"Content-Type: text/plain\r\nX-Second: 2\r\n"


def test_a_slots_connection_headers_are_never_relayed(make_router):
    slot = HeaderSlot([HOP_BY_HOP, PLAIN])
    try:
        router = make_router({"blue": (slot.port, 100)})
        connection = router.connection()
        answers = []
        for n in range(6):  # one client connection, one kept-alive slot connection, turn by turn
            connection.request("POST", "/score", body=b"{}", headers={"x-request-id": f"call-{n}", **AUTH})
            response = connection.getresponse()
            body = json.loads(response.read())
            answers.append(({k.lower(): v for k, v in response.getheaders()}, body))
        connection.close()
    finally:
        slot.stop()
    for n, (headers, body) in enumerate(answers):
        # its own answer: the slot saw this request's id, and the router names it and the slot
        assert body == {"id": f"call-{n}"} and headers["x-request-id"] == f"call-{n}"
        assert headers["azureml-model-deployment"] == "blue"
        assert "x-private" not in headers and "keep-alive" not in headers
        assert headers.get("server") != "the slot" and "transfer-encoding" not in headers
        assert headers["content-length"] == str(len(json.dumps(body)))
        if n % 2 == 0:  # no Content-Type from the slot: the router's answers are JSON
            assert headers["x-kept"] == "yes" and headers["content-type"] == "application/json"
            assert "x-second" not in headers
        else:  # the slot's Content-Type kept, and nothing of the answer before
            assert headers["content-type"] == "text/plain" and headers["x-second"] == "2"
            assert "x-kept" not in headers
