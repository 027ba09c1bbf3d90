"""A pushed local endpoint whose scoring script says which request it answered: the id in the
request body, the body's length and its SHA-256. Used by the tests that check that every
answer reaches the client that asked."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import yaml

SCORE = """
import hashlib
import json


def init():
    pass


def run(raw_data):
    data = json.loads(raw_data)
    raw = raw_data if isinstance(raw_data, bytes) else raw_data.encode("utf-8")
    return {"id": data["id"], "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
"""


def write_echo_manifest(folder: Path, *, name: str = "echo", workers: int = 2, **rollout: object) -> Path:
    """An endpoint manifest (and its files) whose run() echoes what identifies each request."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.txt").write_text("echo\n")
    (folder / "src").mkdir()
    (folder / "src" / "score.py").write_text(SCORE)
    (folder / "sample-request.json").write_text(json.dumps({"id": "smoke"}))
    manifest = {
        "name": name,
        "model": {"path": "model/"},
        "scoring": {"code": "src/", "script": "score.py"},
        "target": {"kind": "local", "workers": workers},
        "smoke_test": {
            "request": "sample-request.json",
            "latency": {"requests": 4, "concurrency": 1, "warmup": 0, "p95_ms": 5000},
        },
        "rollout": {"traffic": 100, **rollout},
    }
    path = folder / "deploy.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def body_for(request_id: str, padding: int = 0) -> bytes:
    return json.dumps({"id": request_id, "pad": "x" * padding}).encode()


def belongs(body: bytes, answer: bytes) -> bool:
    """Is ``answer`` the echo script's answer to ``body``?"""
    try:
        doc = json.loads(answer)
    except ValueError:
        return False
    return doc == {
        "id": json.loads(body)["id"],
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def read_answer(sock: socket.socket, buffered: bytes = b"") -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP/1.1 answer off a raw socket (Content-Length or chunked): status, headers,
    body, and the bytes read past it."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer; got {buffered[:200]!r}")
        buffered += chunk
    head, rest = buffered.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    def more() -> None:
        nonlocal rest
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of an answer")
        rest += chunk

    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                more()
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                more()
            body, rest = body + rest[:size], rest[size + 2 :]
            if size == 0:
                return status, headers, body, rest
    length = (
        int(headers.get("content-length", "0")) if 100 <= status < 200 or "content-length" in headers else 0
    )
    while len(rest) < length:
        more()
    return status, headers, rest[:length], rest[length:]
