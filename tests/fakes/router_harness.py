"""The router harness shared by the router's tests: upstream servers we control and the router
process itself, over real loopback sockets."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tdsp_deploy.backends.local.processes import free_port
from tdsp_deploy.backends.local.routes import RouterConfig, SlotRoute

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SLOT_KEY = "test-slot-key"


class Upstream(http.server.ThreadingHTTPServer):
    """Echoes what it received (method, path, headers, body) as JSON, like a slot would answer."""

    daemon_threads = True

    def __init__(self, name: str, delay: float = 0.0, *, keep_alive: bool = False):
        self.name = name
        self.delay = delay
        super().__init__(("127.0.0.1", 0), KeepAliveEchoHandler if keep_alive else EchoHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # closes after each answer, as gunicorn's sync worker does

    def do_POST(self) -> None:  # noqa: N802
        server: Upstream = self.server  # type: ignore[assignment]
        if server.delay:
            time.sleep(server.delay)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = json.dumps(
            {
                "upstream": server.name,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(),
                "client_port": self.client_address[1],  # which of the router's connections
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("x-upstream-header", "kept")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


class KeepAliveEchoHandler(EchoHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open, as a threaded gunicorn worker does


class RawSlotServer(socketserver.ThreadingTCPServer):
    """A keep-alive HTTP/1.1 upstream written by hand, so that a test decides every byte a slot
    sends (``handler`` reads requests with read_request); serves from a thread of its own."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[socketserver.BaseRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def read_request(
    sock: socket.socket, buffered: bytes
) -> tuple[bytes, dict[bytes, bytes], bytes, bytes] | None:
    """The next request on a slot's connection: (head, its fields by lower-cased name, body,
    the bytes read past it); None once the router closed the connection."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffered += chunk
    head, buffered = buffered.split(b"\r\n\r\n", 1)
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    length = int(fields.get(b"content-length", b"0"))
    while len(buffered) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffered += chunk
    return head, fields, buffered[:length], buffered[length:]


def write_keys(folder: Path) -> Path:
    """The keys a test router takes (KEY, ADMIN_KEY) in ``folder``; where its router.json goes."""
    (folder / "keys.json").write_text(json.dumps({"primary_key": KEY, "secondary_key": "second-key"}))
    (folder / "admin.json").write_text(json.dumps({"admin_key": ADMIN_KEY, "slot_key": SLOT_KEY}))
    return folder / "router.json"


def write_config(
    folder: Path,
    port: int,
    slots: dict[str, tuple],
    *,
    generation: int = 1,
    timeout_s: float = 5.0,
    max_bytes: int = 10_000,
    **options: object,
) -> Path:
    """A router.json in ``folder`` (beside write_keys' files); slots: name -> (port, weight, ...)."""
    path = folder / "router.json"
    RouterConfig(
        endpoint="test",
        host="127.0.0.1",
        port=port,
        keys_file=str(folder / "keys.json"),
        admin_file=str(folder / "admin.json"),
        slots=tuple(SlotRoute(n, *route) for n, route in slots.items()),
        generation=generation,
        request_timeout_s=timeout_s,
        max_request_bytes=max_bytes,
        **options,  # type: ignore[arg-type]
    ).write(path)
    return path


class RouterProcess:
    def __init__(
        self,
        tmp: Path,
        slots: dict[str, tuple[int, int]],
        *,
        timeout_s: float = 5.0,
        max_bytes: int = 10_000,
        **options: object,
    ):
        self.options = options
        self.dir = tmp
        self.port = free_port()
        self.config_path = write_keys(tmp)
        self.write(slots, generation=1, timeout_s=timeout_s, max_bytes=max_bytes)
        self.log = open(tmp / "router.log", "wb")  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tdsp_deploy.backends.local.router", str(self.config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((tmp / "router.log").read_text())

    def write(
        self, slots: dict[str, tuple], *, generation: int, timeout_s: float = 5.0, max_bytes: int = 10_000
    ) -> None:
        """slots: name -> (port, weight) or (port, weight, mirror)."""
        write_config(
            self.dir,
            self.port,
            slots,
            generation=generation,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
            **self.options,
        )

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def post(self, body: bytes = b"{}", headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        connection = self.connection()
        connection.request("POST", "/score", body=body, headers={**AUTH, **(headers or {})})
        response = connection.getresponse()
        result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        connection.close()
        return result

    def get(self, path: str) -> tuple[int, bytes]:
        connection = self.connection()
        connection.request("GET", path, headers=ADMIN if path.startswith("/-/") else AUTH)
        response = connection.getresponse()
        result = response.status, response.read()
        connection.close()
        return result

    def get_json(self, path: str) -> dict:
        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def get_text(self, path: str) -> str:
        status, body = self.get(path)
        assert status == 200, body
        return body.decode()

    def control(self, path: str, doc: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        connection = self.connection()
        connection.request(
            "POST", path, body=json.dumps(doc).encode(), headers=ADMIN if headers is None else headers
        )
        response = connection.getresponse()
        result = response.status, json.loads(response.read())
        connection.close()
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.log.close()


def wait_for(read, done, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll ``read()`` until ``done(value)``; the last value (the test's assert shows it)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    assert done(value), value
    return value


def upstream_for_test(name: str = "blue") -> Iterator[Upstream]:
    """An echoing upstream for one test (a fixture's body)."""
    server = Upstream(name)
    yield server
    server.shutdown()


def routers_for_test(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Makes router processes for one test and stops them after it (a fixture's body)."""
    made: list[RouterProcess] = []

    def make(slots: dict[str, tuple[int, int]], **options: object) -> RouterProcess:
        folder = tmp_path / f"router-{len(made)}"
        folder.mkdir()
        router = RouterProcess(folder, slots, **options)  # type: ignore[arg-type]
        made.append(router)
        return router

    yield make
    for router in made:
        router.stop()
