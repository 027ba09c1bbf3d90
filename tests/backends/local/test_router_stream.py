"""A slot's streamed answer (chunked, as a run() returning a generator gives it) reaches the
client as it comes, not when the slot has finished; and the connection to the slot is used
again only after the stream's end."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time

import pytest

from tests.fakes.echo_endpoint import read_answer
from tests.fakes.router_harness import KEY, RawSlotServer, read_request, routers_for_test

GAP_S = 0.6


@pytest.fixture
def make_router(tmp_path):  # type: ignore[no-untyped-def]
    yield from routers_for_test(tmp_path)


class StreamingSlot(RawSlotServer):
    """Answers POST /stream with three chunks GAP_S apart (chunked), anything else whole; a
    keep-alive HTTP/1.1 server, counting the connections it was given."""

    def __init__(self) -> None:
        self.connections = 0
        super().__init__(StreamingHandler)


class StreamingHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: StreamingSlot = self.server  # type: ignore[assignment]
        server.connections += 1
        buffered = b""
        while True:
            request = read_request(self.request, buffered)
            if request is None:
                return
            head, _, _, buffered = request
            if head.startswith(b"POST /until-close "):  # no length, no chunks: the close ends it
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                )
                for number in range(3):
                    if number:
                        time.sleep(GAP_S)
                    self.request.sendall(f"part {number}\n".encode())
                return
            if head.startswith(b"POST /small-chunked "):  # whole in one segment with its head
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                )
                continue
            if head.startswith(b"POST /stream "):
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                for number in range(3):
                    if number:
                        time.sleep(GAP_S)
                    part = f"part {number}\n".encode()
                    self.request.sendall(b"%x\r\n%b\r\n" % (len(part), part))
                self.request.sendall(b"0\r\n\r\n")
            else:
                answer = json.dumps({"whole": True}).encode()
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                    % (len(answer), answer)
                )


@pytest.fixture
def streaming_slot():  # type: ignore[no-untyped-def]
    slot = StreamingSlot()
    yield slot
    slot.shutdown()
    slot.server_close()


def _request(path: bytes, *, version: bytes = b"HTTP/1.1") -> bytes:
    return (
        b"POST " + path + b" " + version + b"\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )


def test_a_streamed_answer_reaches_the_client_as_it_comes(make_router, streaming_slot):
    router = make_router({"blue": (streaming_slot.port, 100)})
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(_request(b"/stream"))
        received = b""
        while b"part 0" not in received:
            received += sock.recv(65536)
        first = time.monotonic() - started
        assert first < GAP_S, f"the first chunk came after {first:.2f} s, with the stream's end"
        head = received.split(b"\r\n\r\n", 1)[0].lower()
        assert b"transfer-encoding: chunked" in head and b"content-length" not in head
        assert b"azureml-model-deployment: blue" in head
        status, _, body, rest = read_answer(sock, received)
        total = time.monotonic() - started
        assert status == 200 and body == b"part 0\npart 1\npart 2\n"
        assert total >= 2 * GAP_S * 0.9
        # The same client connection, and the same slot connection (given back after the end).
        sock.sendall(_request(b"/score"))
        status, _, body, _ = read_answer(sock, rest)
        assert status == 200 and json.loads(body) == {"whole": True}
    assert streaming_slot.connections == 1


def test_a_streamed_answer_to_an_http_1_0_client_ends_with_the_connection(make_router, streaming_slot):
    router = make_router({"blue": (streaming_slot.port, 100)})
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(_request(b"/stream", version=b"HTTP/1.0"))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head.lower() and b"transfer-encoding" not in head.lower()
    assert body == b"part 0\npart 1\npart 2\n"


def test_a_stream_cut_by_the_slot_is_cut_for_the_client(make_router):
    class Cutting(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(65536)
            self.request.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npart 0\n\r\n")
            time.sleep(0.2)  # and then the slot dies

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Cutting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        router = make_router({"blue": (server.server_address[1], 100)})
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.sendall(_request(b"/stream"))
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert b"part 0" in received and not received.endswith(b"0\r\n\r\n")  # no clean end
        connection = router.connection()  # the router itself is fine
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_that_ends_with_the_slots_close_is_streamed_and_ended(make_router, streaming_slot):
    router = make_router({"blue": (streaming_slot.port, 100)})
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(_request(b"/until-close"))
        received = b""
        while b"part 0" not in received:
            received += sock.recv(65536)
        assert time.monotonic() - started < GAP_S
        status, _, body, rest = read_answer(sock, received)
        assert status == 200 and body == b"part 0\npart 1\npart 2\n"  # a clean chunked end
        sock.sendall(_request(b"/score"))  # and the client's connection goes on
        assert read_answer(sock, rest)[0] == 200


def test_a_chunked_answer_whole_at_once_frees_its_slot_connection(make_router, streaming_slot):
    router = make_router({"blue": (streaming_slot.port, 100)})
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        rest = b""
        for _ in range(3):
            sock.sendall(_request(b"/small-chunked"))
            status, _, body, rest = read_answer(sock, rest)
            assert status == 200 and body == b"abc"
    state = router.get_json("/-/state")
    assert state["in_flight"] == {"blue": 0}  # nothing left counted as in flight
    assert streaming_slot.connections == 1  # the one connection, given back each time
