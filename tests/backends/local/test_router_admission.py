"""Admission before cost: what a client without the key, or with an outsized request, gets
from the router, and when (before its body is read), over real loopback sockets."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.fakes.echo_endpoint import read_answer
from tests.fakes.router_harness import ADMIN_KEY, KEY, Upstream, routers_for_test, upstream_for_test, wait_for


@pytest.fixture
def blue():  # type: ignore[no-untyped-def]
    yield from upstream_for_test("blue")


@pytest.fixture
def make_router(tmp_path):  # type: ignore[no-untyped-def]
    yield from routers_for_test(tmp_path)


def _open(router) -> socket.socket:  # type: ignore[no-untyped-def]
    return socket.create_connection(("127.0.0.1", router.port), timeout=10)


def _closed(sock: socket.socket, rest: bytes = b"") -> bool:
    """Does the router close this connection (EOF, or a reset) with nothing more to say?"""
    try:
        return rest + sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def _head(target: bytes = b"/score", *lines: bytes, auth: bytes | None = KEY.encode()) -> bytes:
    head = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n"
    if auth is not None:
        head += b"Authorization: Bearer " + auth + b"\r\n"
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def test_a_keyless_request_is_refused_on_its_head_before_any_body(make_router, blue):
    router = make_router({"blue": (blue.port, 100)}, max_bytes=200 * 1024 * 1024)
    with _open(router) as sock:
        # 99 MB announced, not a byte of it sent: the answer comes anyway, then the close.
        sock.sendall(_head(b"/score", b"Content-Length: 99000000", auth=None))
        status, headers, body, rest = read_answer(sock)
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert headers["connection"] == "close"
        assert _closed(sock, rest)
    with _open(router) as sock:  # a wrong key, likewise
        sock.sendall(_head(b"/score", b"Content-Length: 99000000", auth=b"wrong"))
        assert read_answer(sock)[0] == 401
    with _open(router) as sock:  # and a client that sends its body anyway still reads the 401
        sock.sendall(_head(b"/score", b"Content-Length: 3000000", auth=None))
        sock.sendall(b"x" * 3_000_000)
        assert read_answer(sock)[0] == 401
    with _open(router) as sock:  # one waiting for 100 Continue gets the 401 instead of it
        sock.sendall(_head(b"/score", b"Expect: 100-continue", b"Content-Length: 5000000", auth=None))
        assert read_answer(sock)[0] == 401
    assert router.post()[0] == 200


def test_the_bearer_scheme_is_case_insensitive_and_two_authorizations_are_a_400(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert router.post(b"{}", {"Authorization": f"{scheme} {KEY}"})[0] == 200, scheme
    assert router.post(b"{}", {"Authorization": f"Bearer   {KEY}"})[0] == 200  # spaces after the scheme
    assert router.post(b"{}", {"Authorization": f"Basic {KEY}"})[0] == 401
    assert router.post(b"{}", {"Authorization": f"Bearer{KEY}"})[0] == 401
    with _open(router) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 2\r\n\r\n{}"
        )
        status, _, body, _ = read_answer(sock)
        assert status == 400 and b"one Authorization header" in body
    with _open(router) as sock:  # whichever comes first
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
            b"Authorization: Bearer wrong\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert read_answer(sock)[0] == 400


def test_a_long_request_line_is_a_414(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    with _open(router) as sock:
        sock.sendall(_head(b"/score?q=" + b"a" * 9000, b"Content-Length: 2") + b"{}")
        status, _, body, rest = read_answer(sock)
        assert status == 414 and b"request line" in body
        assert _closed(sock, rest)
    with _open(router) as sock:  # one that never ends: refused as it streams, never buffered whole
        sock.sendall(b"GET /" + b"a" * 100_000)
        assert read_answer(sock)[0] == 414
    assert router.post()[0] == 200


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ([b"x-big: " + b"v" * 9000], b"header field longer"),
        ([b"x-h%d: %s" % (n, b"v" * 1000) for n in range(70)], b"request head larger"),
        ([b"x-h%d: v" % n for n in range(101)], b"more than 100 header fields"),
    ],
    ids=["one-long-header", "large-head", "too-many-headers"],
)
def test_outsized_heads_are_a_431(make_router, blue, lines, why):
    router = make_router({"blue": (blue.port, 100)})
    with _open(router) as sock:
        sock.sendall(_head(b"/score", *lines, b"Content-Length: 2") + b"{}")
        status, _, body, rest = read_answer(sock)
        assert status == 431 and why in body, body
        assert _closed(sock, rest)


def test_a_header_that_never_ends_is_cut_off_early(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    with _open(router) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nx-endless: ")
        sent = 0
        status = None
        try:
            while sent < 8 * 1024 * 1024:  # the router refuses long before this
                sock.sendall(b"v" * 16384)
                sent += 16384
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = read_answer(sock)[0]
    assert status == 431
    assert sent < 4 * 1024 * 1024, sent


def test_a_head_that_arrives_too_slowly_is_a_408(make_router, blue):
    router = make_router({"blue": (blue.port, 100)}, head_timeout_s=0.5)
    with _open(router) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
        for _ in range(5):  # a byte now and then, as slowloris does, does not extend it
            time.sleep(0.2)
            try:
                sock.sendall(b"x")
            except OSError:
                break
        status, _, body, _ = read_answer(sock)
        assert status == 408 and b"request head" in body
        assert time.monotonic() - started < 3
    assert router.post()[0] == 200  # a whole request in time is served


def test_headers_named_in_connection_are_not_forwarded(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    status, _, body = router.post(
        b"{}", {"Connection": "keep-alive, x-hop", "x-hop": "private", "x-end-to-end": "kept"}
    )
    headers = json.loads(body)["headers"]
    assert status == 200 and "x-hop" not in headers and headers["x-end-to-end"] == "kept"


def test_at_the_connection_cap_the_longest_idle_connection_makes_room(make_router, blue):
    router = make_router({"blue": (blue.port, 100)}, max_connections=6)
    idle = [_open(router) for _ in range(6)]
    time.sleep(0.2)  # all six taken by the router before the seventh comes
    with _open(router) as newcomer:
        newcomer.sendall(_head(b"/score", b"Content-Length: 2") + b"{}")
        assert read_answer(newcomer)[0] == 200
    idle[0].settimeout(5)
    assert _closed(idle[0])  # the longest idle one was closed for it
    for sock in idle:
        sock.close()
    log = wait_for(
        lambda: (router.dir / "router.log").read_text(), lambda text: "the cap (6)" in text, timeout=5
    )
    assert "closing the connection idle longest" in log


def test_at_the_connection_cap_with_none_idle_new_connections_are_refused(make_router, blue):
    router = make_router({"blue": (blue.port, 100)}, max_connections=4)
    busy = [_open(router) for _ in range(4)]
    for sock in busy:
        sock.sendall(b"POST /score HTTP/1.1\r\n")  # each in the middle of a head: not idle
    time.sleep(0.2)
    refused = _open(router)
    refused.settimeout(5)
    assert _closed(refused)
    log = wait_for(
        lambda: (router.dir / "router.log").read_text(), lambda text: "the cap (4)" in text, timeout=5
    )
    assert "refusing new connections" in log
    for sock in busy:
        sock.close()
    refused.close()
    assert wait_for(lambda: _try_post(router), lambda status: status == 200, timeout=5) == 200


def _try_post(router) -> int | None:  # type: ignore[no-untyped-def]
    try:
        return router.post()[0]
    except OSError:
        return None


def test_the_admin_key_does_not_score_and_the_scoring_key_does_not_administer(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    assert router.post(b"{}", {"Authorization": f"Bearer {ADMIN_KEY}"})[0] == 401
    scoring = {"Authorization": f"Bearer {KEY}"}
    assert router.control("/-/drain", {"deployment": "blue", "timeout_s": 0}, headers=scoring)[0] == 403
    assert router.control("/-/resume", {"deployment": "blue"}, headers=scoring)[0] == 403
    assert router.get_json("/-/state")["draining"] == []
    assert router.get("/metrics")[0] == 200  # metrics take either key


def test_requests_pipelined_after_a_connection_close_are_not_read(make_router, blue):
    router = make_router({"blue": (blue.port, 100)})
    with _open(router) as sock:
        sock.sendall(
            _head(b"/score", b"Connection: close", b"Content-Length: 3")
            + b'"a"'
            + _head(b"/score", b"Content-Length: 3")
            + b'"b"'
        )
        status, headers, body, rest = read_answer(sock)
        assert status == 200 and json.loads(body)["body"] == '"a"' and headers["connection"] == "close"
        assert _closed(sock, rest)  # no answer (and no 400) for the one after it


def test_a_bad_request_pipelined_behind_a_slow_one_is_refused_after_its_answer(make_router):
    slow = Upstream("slow", delay=0.5)
    try:
        router = make_router({"slow": (slow.port, 100)})
        with _open(router) as sock:
            sock.sendall(_head(b"/score", b"Content-Length: 3") + b'"a"' + b"NOT HTTP\r\n\r\n")
            status, _, body, rest = read_answer(sock)
            assert status == 200 and json.loads(body)["body"] == '"a"'
            status, _, _, rest = read_answer(sock, rest)
            assert status == 400
    finally:
        slow.shutdown()


@pytest.mark.parametrize("target", [b"/", b"/score"])
def test_head_answers_have_no_body_and_the_connection_goes_on(make_router, blue, target):
    router = make_router({"blue": (blue.port, 100)})
    auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
    with _open(router) as sock:
        sock.sendall(
            b"HEAD " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        received = b""
        while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"Healthy"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200" if target == b"/" else b"405")
    assert first.endswith(b"\r\n\r\n") and b"Content-Length: " in first  # no body after the head
    assert second.startswith(b"200") and second.endswith(b"\r\n\r\nHealthy")
