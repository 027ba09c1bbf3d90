"""Every answer reaches the client that asked: interim (1xx) answers from a slot, bytes a slot
sends after its answer, and ``Expect: 100-continue`` from clients (which the router answers
itself and never forwards)."""

from __future__ import annotations

import json
import socket
import socketserver
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fakes.router_harness import AUTH, KEY, RawSlotServer, read_request, routers_for_test


@pytest.fixture
def make_router(tmp_path):  # type: ignore[no-untyped-def]
    yield from routers_for_test(tmp_path)


class RawSlot(RawSlotServer):
    """A keep-alive HTTP/1.1 upstream that answers each request with its body echoed, after
    ``interim`` (raw 1xx answers, sent before it), and followed by ``trailing`` bytes."""

    def __init__(self, *, interim: bytes = b"", trailing: bytes = b"", delay: float = 0.0):
        self.interim, self.trailing, self.delay = interim, trailing, delay
        self.heads: list[bytes] = []
        super().__init__(RawSlotHandler)


class RawSlotHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: RawSlot = self.server  # type: ignore[assignment]
        buffered = b""
        while True:
            request = read_request(self.request, buffered)
            if request is None:
                return
            head, _, body, buffered = request
            server.heads.append(head)
            if server.interim:
                self.request.sendall(server.interim)
            if server.delay:
                time.sleep(server.delay)
            answer = json.dumps({"echo": body.decode()}).encode()
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(answer)).encode()
                + b"\r\n\r\n"
                + answer
                + server.trailing
            )


@pytest.fixture
def raw_slot():  # type: ignore[no-untyped-def]
    made: list[RawSlot] = []

    def make(**options: object) -> RawSlot:
        slot = RawSlot(**options)  # type: ignore[arg-type]
        made.append(slot)
        return slot

    yield make
    for slot in made:
        slot.stop()


def _score_many(router, clients: int, each: int) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(sent, received) for clients x each requests, keep-alive, from parallel clients."""

    def client(number: int) -> list[tuple[str, str]]:
        pairs = []
        connection = router.connection()
        for request in range(each):
            sent = json.dumps({"id": f"{number}-{request}"})
            connection.request("POST", "/score", body=sent.encode(), headers=AUTH)
            response = connection.getresponse()
            body = response.read()
            pairs.append(
                (sent, json.loads(body).get("echo", body.decode()) if response.status == 200 else "")
            )
        connection.close()
        return pairs

    with ThreadPoolExecutor(clients) as pool:
        return [pair for pairs in pool.map(client, range(clients)) for pair in pairs]


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
    ],
    ids=["100", "103", "100+102"],
)
def test_interim_answers_from_the_slot_are_skipped_not_delivered(make_router, raw_slot, interim):
    slot = raw_slot(interim=interim, delay=0.002)
    router = make_router({"blue": (slot.port, 100)})
    pairs = _score_many(router, clients=4, each=25)
    misdelivered = [(sent, got) for sent, got in pairs if sent != got]
    assert not misdelivered, misdelivered[:5]


def test_bytes_after_an_answer_never_answer_the_next_request(make_router, raw_slot):
    stray = b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"echo": "stray"}'
    slot = raw_slot(trailing=stray)
    router = make_router({"blue": (slot.port, 100)})
    pairs = _score_many(router, clients=2, each=20)
    assert all(sent == got for sent, got in pairs), [p for p in pairs if p[0] != p[1]][:5]
    assert "sent more than its answer" in (router.dir / "router.log").read_text()


def _read_answer(sock: socket.socket, buffered: bytes = b"") -> tuple[int, bytes, bytes]:
    """One answer (status, body) off a raw socket, and what was read past it."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        assert chunk, buffered
        buffered += chunk
    head, rest = buffered.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, rest[:length], rest[length:]


def test_expect_100_continue_is_answered_by_the_router_and_not_forwarded(make_router, raw_slot):
    slot = raw_slot()
    router = make_router({"blue": (slot.port, 100)})
    body = json.dumps({"id": "expecting"}).encode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        for _ in range(3):  # on one kept-alive connection
            sock.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
                b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            status, _, rest = _read_answer(sock)
            assert status == 100 and rest == b""  # before any byte of the body was sent
            sock.sendall(body)
            status, answer, rest = _read_answer(sock)
            assert status == 200 and json.loads(answer) == {"echo": body.decode()} and rest == b""
    assert slot.heads and not any(b"expect" in head.lower() for head in slot.heads)


def test_expect_waits_behind_answers_still_due_on_a_pipelined_connection(make_router, raw_slot):
    slot = raw_slot(delay=0.3)
    router = make_router({"blue": (slot.port, 100)})
    first, second = b'{"id": "first"}', b'{"id": "second"}'
    auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"Content-Length: 15\r\n\r\n"
            + first
            + b"POST /score HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"Expect: 100-continue\r\n"
            b"Content-Length: 16\r\n\r\n"
        )
        status, answer, rest = _read_answer(sock)  # the first answer comes before the 100
        assert status == 200 and json.loads(answer)["echo"] == first.decode()
        status, _, rest = _read_answer(sock, rest)
        assert status == 100
        sock.sendall(second)
        status, answer, _ = _read_answer(sock, rest)
        assert status == 200 and json.loads(answer)["echo"] == second.decode()


def test_an_expectation_other_than_100_continue_is_a_417(make_router, raw_slot):
    router = make_router({"blue": (raw_slot().port, 100)})
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
            b"Expect: teapot\r\nContent-Length: 2\r\n\r\n"
        )
        status, _, _ = _read_answer(sock)
    assert status == 417


def test_a_client_that_sends_its_body_without_waiting_gets_no_stray_100(make_router, raw_slot):
    router = make_router({"blue": (raw_slot().port, 100)})
    body = b'{"id": "eager"}'
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
            b"Expect: 100-continue\r\nContent-Length: 15\r\n\r\n" + body
        )
        status, answer, rest = _read_answer(sock)
        if status == 100:  # allowed (the head may have been read alone), but then only once
            status, answer, rest = _read_answer(sock, rest)
        assert status == 200 and json.loads(answer)["echo"] == body.decode()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = _read_answer(sock, rest)
        assert status == 200
