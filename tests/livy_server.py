"""A Livy-compatible batch server on loopback that runs each batch with the local spark-submit.

It answers the three Synapse Spark-batch calls the backend makes, under the same paths
(learn.microsoft.com/rest/api/synapse/data-plane/spark-batch):

    POST   /livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches[?detailed=true]
    GET    /livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches/{id}[?detailed=true]
    DELETE /livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches/{id}

and enforces what Synapse does: a bearer token (401 without it), a pool that exists (404),
a JSON body with ``name`` and ``file`` (400), integer sizes, an API version it knows. A batch
goes not_started -> starting -> running -> success | dead, or killed when cancelled; its
``log`` holds the last lines of the driver's output, as Livy's does.

The workspace's storage is a local folder: ``abfss://`` URIs under a mounted root are read
from there (the pool's view of its ADLS Gen2 account). A root may instead be a container in
Azurite (``blob_mounts``): the server copies the container into a folder before each batch and
the files the batch wrote back into the container after it, as the pool reads and writes its
account. A ``file`` that is not there makes the batch dead with the error Spark gives.

``ManagedIdentityEndpoint`` is the token service of an Azure host with a managed identity (the
App Service contract that azure-identity's DefaultAzureCredential reads from IDENTITY_ENDPOINT
and IDENTITY_HEADER), so that the CLI, run as a user would run it, gets its Synapse token.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

API = "/livyApi/versions/2019-11-01-preview/sparkPools/"
_PATH = re.compile(
    r"^/livyApi/versions/(?P<version>[^/]+)/sparkPools/(?P<pool>[^/]+)/batches(?:/(?P<id>\d+))?/?$"
)
INTEGER_FIELDS = ("driverCores", "executorCores", "numExecutors")
LOG_LINES = 200


class Batch:
    def __init__(self, batch_id: int, body: dict[str, Any]):
        self.id = batch_id
        self.body = body
        self.state = "not_started"
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.process: subprocess.Popen[str] | None = None
        self.cancelled = False
        self.lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        result = {"success": "Succeeded", "dead": "Failed", "killed": "Cancelled", "error": "Failed"}
        return {
            "id": self.id,
            "name": self.body.get("name"),
            "state": self.state,
            "appId": f"application_{self.id:04d}" if self.state != "not_started" else None,
            "appInfo": {},
            "log": list(self.log),
            "result": result.get(self.state, "Uncertain"),
            "tags": self.body.get("tags"),
            "livyInfo": None,
            "errorInfo": [],
        }


class BlobMount:
    """One container in Azurite as the pool sees it: a folder, filled from the container before
    a batch; what the batch wrote goes back after it (Hadoop's .crc side files excepted, which
    ABFS does not write)."""

    def __init__(self, container_client: Any, folder: Path):
        self.client = container_client
        self.folder = folder
        self.lock = threading.Lock()

    def pull(self) -> dict[Path, int]:
        """Copy the container into the folder; the folder's files and their mtimes after it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for blob in self.client.list_blobs():
            target = self.folder / blob.name
            if target.is_file() and target.stat().st_size == blob.size:
                continue  # content-addressed names, or a file this batch left as it was
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.client.download_blob(blob.name).readall())
        return self._files()

    def push(self, before: dict[Path, int]) -> None:
        after = self._files()
        for path, mtime in after.items():
            if before.get(path) != mtime and not path.name.endswith(".crc"):
                with open(path, "rb") as data:
                    self.client.upload_blob(path.relative_to(self.folder).as_posix(), data, overwrite=True)
        for path in before.keys() - after.keys():  # replaced by an overwrite
            if not path.name.endswith(".crc"):
                self.client.delete_blob(path.relative_to(self.folder).as_posix())

    def _files(self) -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in self.folder.rglob("*") if p.is_file()}


class ManagedIdentityEndpoint:
    """A managed identity's token service on loopback: ``environ`` is what a process needs to
    find it. Refuses a request without the identity header, as the platform does."""

    def __init__(self, token: str):
        self.token = token
        self.secret = os.urandom(8).hex()
        self.resources: list[str] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def environ(self) -> dict[str, str]:
        return {
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{self._http.server_address[1]}/MSI/token",
            "IDENTITY_HEADER": self.secret,
        }

    def __enter__(self) -> ManagedIdentityEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                from urllib.parse import parse_qs

                query = parse_qs(urlparse(self.path).query)
                if self.headers.get("X-IDENTITY-HEADER") != endpoint.secret or "resource" not in query:
                    status, doc = 400, {"error": "invalid_request"}
                else:
                    endpoint.resources.append(query["resource"][0])
                    status, doc = (
                        200,
                        {
                            "access_token": endpoint.token,
                            "expires_on": str(int(time.time()) + 3600),
                            "resource": query["resource"][0],
                            "token_type": "Bearer",
                        },
                    )
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


class LivyServer:
    """Start with ``with LivyServer(...) as server``; ``server.endpoint`` is the workspace URL."""

    def __init__(
        self,
        *,
        token: str,
        pools: set[str],
        mounts: dict[str, Path] | None = None,
        blob_mounts: dict[str, BlobMount] | None = None,
        start_delay: float = 0.2,
    ):
        self.token = token
        self.pools = pools
        self.blob_mounts = {root.rstrip("/"): mount for root, mount in (blob_mounts or {}).items()}
        self.mounts = {root.rstrip("/"): Path(folder) for root, folder in (mounts or {}).items()}
        self.mounts |= {root: mount.folder for root, mount in self.blob_mounts.items()}
        self.start_delay = start_delay
        self.batches: dict[int, Batch] = {}
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> LivyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for batch in list(self.batches.values()):
            self._kill(batch)
        self._http.shutdown()
        self._http.server_close()

    # -- the batches -----------------------------------------------------------------------------
    def submit(self, body: dict[str, Any]) -> Batch:
        with self._lock:
            batch = Batch(self._next, body)
            self.batches[batch.id] = batch
            self._next += 1
        threading.Thread(target=self._run, args=(batch,), daemon=True).start()
        return batch

    def local(self, uri: str) -> str:
        """An abfss:// URI as the path in the mounted folder (other text unchanged)."""
        for root, folder in self.mounts.items():
            uri = uri.replace(root, str(folder))
        return uri

    def _run(self, batch: Batch) -> None:
        mounts = list(self.blob_mounts.values())
        for mount in mounts:
            mount.lock.acquire()  # one batch at a time sees and changes a container
        try:
            before = [mount.pull() for mount in mounts]
            final = self._run_batch(batch)
            if final == "success":  # what it wrote is in the container before it says success
                for mount, files in zip(mounts, before, strict=True):
                    mount.push(files)
        except Exception as exc:  # the container could not be read or written: the batch fails
            batch.log.append(f"storage: {type(exc).__name__}: {exc}")
            final = "dead"
        finally:
            for mount in mounts:
                mount.lock.release()
        with batch.lock:
            if final is not None and batch.state not in ("success", "dead", "killed", "error"):
                batch.state = final

    def _run_batch(self, batch: Batch) -> str | None:
        """Run the batch; the state it ended in, or None when it ended early (its state set)."""
        time.sleep(self.start_delay)
        with batch.lock:
            if batch.cancelled:
                return
            batch.state = "starting"
        file = self.local(batch.body["file"])
        if file.startswith("abfss://") or not Path(file).is_file():
            batch.log.append(
                f'Exception in thread "main" java.io.FileNotFoundException: {batch.body["file"]}'
            )
            batch.state = "dead"
            return
        import pyspark

        submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
        conf = {
            "spark.ui.enabled": "false",
            "spark.pyspark.python": sys.executable,
            "spark.sql.shuffle.partitions": "2",
            **batch.body.get("conf", {}),
        }
        command = [str(submit), "--master", "local[1]", "--name", str(batch.body["name"])]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        command += [file, *[self.local(str(a)) for a in batch.body.get("args", [])]]
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
        with batch.lock:
            if batch.cancelled:
                return
            batch.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,
            )
            batch.state = "running"
        assert batch.process.stdout is not None
        for line in batch.process.stdout:
            batch.log.append(line.rstrip("\n"))
        code = batch.process.wait()
        return "success" if code == 0 else "dead"

    def _kill(self, batch: Batch) -> None:
        with batch.lock:
            batch.cancelled = True
            if batch.state not in ("success", "dead", "killed", "error"):
                batch.state = "killed"
            process = batch.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    # -- HTTP --------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        return self._send(400, {"error": "request body is not JSON"})
                server.requests.append((method, url.path, body))
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    return self._send(401, {"code": "Unauthorized", "message": "token missing or invalid"})
                match = _PATH.match(url.path)
                if match is None or match["version"] != "2019-11-01-preview":
                    return self._send(404, {"code": "NotFound", "message": "no such API"})
                if match["pool"] not in server.pools:
                    return self._send(
                        404, {"code": "SparkPoolNotFound", "message": f"pool {match['pool']} not found"}
                    )
                batch_id = match["id"]
                if method == "POST" and batch_id is None:
                    problem = _check_body(body)
                    if problem:
                        return self._send(400, {"code": "BadRequest", "message": problem})
                    return self._send(200, server.submit(body).describe())
                if batch_id is None:
                    return self._send(405, {"message": "method not allowed"})
                batch = server.batches.get(int(batch_id))
                if batch is None:
                    return self._send(404, {"code": "NotFound", "message": f"batch {batch_id} not found"})
                if method == "GET":
                    return self._send(200, batch.describe())
                if method == "DELETE":
                    server._kill(batch)
                    return self._send(200, {"msg": "deleted"})
                return self._send(405, {"message": "method not allowed"})

            def do_GET(self) -> None:  # noqa: N802
                self._route("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._route("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._route("DELETE")

        return Handler


def _check_body(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    for field in ("name", "file"):
        if not isinstance(body.get(field), str) or not body[field]:
            return f"'{field}' is required"
    for field in INTEGER_FIELDS:
        if field in body and not (isinstance(body[field], int) and not isinstance(body[field], bool)):
            return f"'{field}' must be an integer"
    if not all(isinstance(a, str) for a in body.get("args", [])):
        return "'args' must be strings"
    if not isinstance(body.get("conf", {}), dict):
        return "'conf' must be an object"
    return None
