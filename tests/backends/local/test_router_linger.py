"""What a refused client costs the router after its refusal: its connection is paced, not read
at loopback speed, leaves nothing for the cyclic collector when it closes, and is the first to
go at the connection cap; while clients that send their whole body before they read (and curl,
which reads as it sends) still read their refusal."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import subprocess
import time
import weakref

import pytest

from tdsp_deploy.backends.local import http1
from tdsp_deploy.backends.local.http1 import ClientConnection
from tdsp_deploy.backends.local.router import Router
from tests.fakes.echo_endpoint import read_answer
from tests.fakes.router_harness import (
    AUTH,
    KEY,
    Upstream,
    routers_for_test,
    wait_for,
    write_config,
    write_keys,
)


@pytest.fixture
def start_router(tmp_path):  # type: ignore[no-untyped-def]
    """Starts a router in front of one echoing upstream (with the options RouterProcess takes)."""
    upstream = Upstream("blue")
    routers = routers_for_test(tmp_path)
    make = next(routers)
    yield lambda **options: make({"blue": (upstream.port, 100)}, **options)
    next(routers, None)  # stops the routers made
    upstream.shutdown()


def _open(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


KEYLESS_99MB = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 99000000\r\n\r\n"


def _send_until_closed(sock: socket.socket, stop_after: float = 20.0) -> int:
    """Send body bytes until the router closes the connection; how many the kernel took."""
    sent = 0
    piece = b"0" * 65536
    deadline = time.monotonic() + stop_after
    try:
        while time.monotonic() < deadline:
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def test_a_refused_body_is_dropped_at_a_pace_not_as_fast_as_it_comes(start_router):
    router = start_router()
    with _open(router.port) as sock:
        sock.sendall(KEYLESS_99MB)
        assert read_answer(sock)[0] == 401
        started = time.monotonic()
        sent = _send_until_closed(sock)
        elapsed = time.monotonic() - started
    # At most LINGER_BYTES are dropped, one read (256 KiB at most) each LINGER_PACE_S: at
    # least 16 reads of 10 ms. Read as they came, they were gone in a few ms and the client
    # went on to its next connection at once.
    floor = http1.LINGER_BYTES / (256 * 1024) * http1.LINGER_PACE_S
    assert elapsed >= floor * 0.9, elapsed
    assert elapsed < http1.LINGER_S + 3, elapsed
    assert sent >= http1.LINGER_BYTES, sent  # what the router dropped, and the kernel's buffers
    assert router.post()[0] == 200


def test_clients_that_send_their_whole_body_first_still_read_their_413(start_router):
    router = start_router(max_bytes=10_000)
    connection = router.connection()  # http.client reads only once the body is sent
    connection.request("POST", "/score", body=b"x" * 3_000_000, headers=AUTH)
    response = connection.getresponse()
    assert response.status == 413 and b"target.max_request_mb" in response.read()
    connection.close()
    assert router.post()[0] == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it)")
def test_curl_sending_a_body_too_large_reads_its_413_as_it_sends(start_router, tmp_path):
    router = start_router(max_bytes=10_000)
    (tmp_path / "big.json").write_bytes(b"x" * 20_000_000)
    started = time.monotonic()
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-H",
            f"Authorization: Bearer {KEY}",
            "-H",
            "Expect:",  # no 100 Continue: the body goes at once, the 413 comes while it does
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            f"@{tmp_path / 'big.json'}",
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:{router.port}/score",
        ],
        capture_output=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    *answer, code = done.stdout.decode().rsplit("\n", 1)
    assert code == "413", (done.returncode, done.stderr.decode()[-2000:], done.stdout[:300])
    assert "target.max_request_mb" in answer[0]
    assert elapsed < 20, elapsed  # not the whole 20 MB at the drop's pace, nor curl's time-out


def test_a_head_refused_midway_is_answered_and_then_never_read(start_router):
    router = start_router()
    with _open(router.port) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nx-endless: ")
        started = time.monotonic()
        sent = 0
        try:
            while time.monotonic() - started < 20:
                sock.sendall(b"v" * 16384)
                sent += 16384
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - started
        status = read_answer(sock)[0]
    assert status == 431
    # Nothing past the refusal was read: the client filled the kernel's buffers and waited
    # there until the router closed, LINGER_S later (it used to close at once, and the client
    # reconnected for more).
    assert sent < 8 * 1024 * 1024, sent
    assert http1.LINGER_S * 0.9 <= elapsed < http1.LINGER_S + 5, elapsed


def test_at_the_cap_a_refused_connection_makes_room_before_an_idle_one(start_router):
    router = start_router(max_connections=4)
    idle = [_open(router.port) for _ in range(3)]
    refused = _open(router.port)
    refused.sendall(KEYLESS_99MB)  # refused on its head; its body "on its way" keeps it lingering
    assert read_answer(refused)[0] == 401
    with _open(router.port) as newcomer:
        newcomer.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % KEY.encode())
        newcomer.sendall(b"Content-Length: 2\r\n\r\n{}")
        assert read_answer(newcomer)[0] == 200
    for sock in idle:  # every idle connection is still open: no end of file, no reset
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.close()
    refused.close()
    log = wait_for(
        lambda: (router.dir / "router.log").read_text(), lambda text: "the cap (4)" in text, timeout=5
    )
    assert "closing a refused connection" in log


def _router_loop() -> asyncio.AbstractEventLoop:
    """The loop the router runs on: uvloop's where it is installed, as router.main() does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def test_a_closed_client_connection_leaves_nothing_for_the_cyclic_collector(tmp_path, monkeypatch):
    """The router runs here, in this process, so that what outlives a connection can be seen:
    with the cyclic collector off, every connection must be freed as soon as it closes."""
    monkeypatch.setattr(http1, "LINGER_S", 0.2)
    write_keys(tmp_path)
    made: list[weakref.ref[ClientConnection]] = []
    clients = [
        b"POST /score HTTP/1.1\r\nHost: x\r\n" + b"x-h: v\r\n" * 120,  # 431 on its head
        KEYLESS_99MB + b"0" * 50_000,  # 401, its body on its way
        b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nConnection: close\r\n"
        b"Content-Length: 2\r\n\r\n{}" % KEY.encode(),  # served
        b"NOT HTTP\r\n\r\n",  # 400
    ]

    def connect(router: Router) -> ClientConnection:
        connection = ClientConnection(router)
        made.append(weakref.ref(connection))
        return connection

    def run_clients(port: int) -> list[int]:
        statuses = []
        for request in clients * 3:
            with _open(port) as sock:
                sock.sendall(request)
                statuses.append(read_answer(sock)[0])
        return statuses

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        router = Router(write_config(tmp_path, 0, {"blue": (upstream.port, 100)}))
        server = await loop.create_server(lambda: connect(router), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        statuses = await asyncio.to_thread(run_clients, port)
        deadline = loop.time() + 5
        while router.connections and loop.time() < deadline:  # each closes (LINGER_S at most)
            await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        for pool in router.pools.values():
            pool.close_idle()
        await asyncio.sleep(0.1)
        return statuses

    upstream = Upstream("blue")
    gc.collect()
    gc.disable()
    try:
        loop = _router_loop()
        try:
            statuses = loop.run_until_complete(main())
        finally:
            loop.close()
        alive = sum(ref() is not None for ref in made)
    finally:
        gc.enable()
        upstream.shutdown()
    assert statuses == [431, 401, 200, 400] * 3
    assert len(made) == 12 and alive == 0, f"{alive} of {len(made)} connections left to the collector"
