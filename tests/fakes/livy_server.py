"""A Synapse Spark-batch endpoint on loopback that runs each batch with the local spark-submit.

It answers the three Synapse Spark-batch calls the backend makes, under the same paths
(learn.microsoft.com/rest/api/synapse/data-plane/spark-batch):

    POST   /livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches[?detailed=true]
    GET    /livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches/{id}[?detailed=true]
    DELETE /livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches/{id}

and answers as Synapse does, so that it can say no:

- a bearer token (401 without it), a pool that exists (404), an API version it knows, a JSON
  body with ``name`` and ``file`` (400), integer sizes, at most 100 KB of body (413);
- driver and executor sizes that fit the pool's node size (400): cores and memory of a driver
  or an executor are one of Synapse's sizes, no larger than a node of the pool;
- at most 2 batch creations a second per workspace (the documented limit): a faster create is
  answered 429 with Retry-After;
- the bodies follow the SparkBatchJob definition of the data-plane REST specification
  (sparkJob.json, 2019-11-01-preview) and the shapes of the Azure SDK for .NET's recorded live
  test (Azure.Analytics.Synapse.Spark, SessionRecords/SparkBatchClientLiveTests/
  TestSparkBatchJobCompletesWhenJobComplete.json): the create answers ``id``, ``state``
  not_started and a null ``appId``, ``appInfo`` and ``log``; a GET adds livyInfo (with the
  creation request), schedulerInfo, pluginInfo, ``result`` and, once the application runs,
  ``appInfo.driverLogUrl``. ``log`` is never the driver's output: it is at most the 10 last
  lines of the spark-submit launcher (Livy keeps 10), as recorded ("stdout: ", the YARN
  client's report lines, "\nstderr: ", "\nYARN Diagnostics: "). The driver's whole output is
  served at ``driverLogUrl`` only, as the pool keeps it in the application's container logs.

``faults`` makes the next matching requests fail (status, Retry-After) to test the client's
retries.

The pool's view of storage. A local Spark has no ABFS driver or Azure credentials, so it cannot
open ``abfss://`` URIs. The server substitutes, and only there: in the request's ``file`` and
in each ``args`` string, every occurrence of a mounted root (``abfss://container@account.dfs.
core.windows.net[/path]``, as given in ``mounts`` or ``blob_mounts``) by that root's local
folder, before spark-submit starts. Nothing else is rewritten (not ``conf``, not what the job
reads or writes at run time under other names), and the substitutions are written at the top
of the batch's driver log, so a test can see them. A root may be a container in Azurite
(``blob_mounts``): the server copies the container into the folder before each batch and the
files the batch wrote back into the container after it (whether it succeeded or failed, as a
pool's writes to its account stay), so that the backend reads results through the Blob API.
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
import uuid
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.fakes.blob_mount import BlobMount
from tests.fakes.identity_endpoint import ManagedIdentityEndpoint  # noqa: F401 - re-exported for the tests

API_VERSION = "2019-11-01-preview"
API = f"/livyApi/versions/{API_VERSION}/sparkPools/"
_PATH = re.compile(
    r"^/livyApi/versions/(?P<version>[^/]+)/sparkPools/(?P<pool>[^/]+)/batches(?:/(?P<id>\d+))?/?$"
)
_DRIVER_LOG = re.compile(r"^/node/containerlogs/container_(?P<app>application_\d+_\d+)_01_000001/")
INTEGER_FIELDS = ("driverCores", "executorCores", "numExecutors")
#: Livy keeps this many of the launcher's last lines in a batch's `log`.
LOG_LINES = 10
#: Documented Synapse limits: batch creations a second per workspace, request body size.
CREATES_PER_SECOND = 2
MAX_BODY_BYTES = 100 * 1024
#: A node of each size: vCores, and the memory a driver or an executor of that size may take
#: (the sizes Synapse offers for a job: 4 cores 28g, 8 cores 56g, ... on nodes of that size).
POOL_NODES = {
    "Small": (4, 28),
    "Medium": (8, 56),
    "Large": (16, 112),
    "XLarge": (32, 224),
    "XXLarge": (64, 400),
}
FINAL = ("success", "dead", "killed", "error")
RESULTS = {"success": "Succeeded", "dead": "Failed", "killed": "Cancelled", "error": "Failed"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Batch:
    def __init__(self, batch_id: int, body: dict[str, Any], pool: str, server: LivyServer):
        self.id = batch_id
        self.body = body
        self.pool = pool
        self.server = server
        self._state = "not_started"
        self.seen: dict[str, str] = {"not_started": _now()}
        self.submitted = _now()
        self.app = f"application_{server.cluster}_{batch_id + 1:04d}"
        self.launcher: deque[str] = deque(maxlen=LOG_LINES - 3)  # room for stdout/stderr/YARN heads
        self.driver_log: list[str] = []  # the driver's whole output: behind driverLogUrl only
        self.diagnostics = ""
        self.process: subprocess.Popen[str] | None = None
        self.cancelled = False
        self.lock = threading.Lock()

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        self.seen.setdefault(value, _now())

    def created(self) -> dict[str, Any]:
        """The create's answer, as recorded: the id and nothing yet."""
        return {"id": self.id, "appId": None, "appInfo": None, "state": "not_started", "log": None}

    def describe(self) -> dict[str, Any]:
        state = self.state
        started = state not in ("not_started",)
        running = started and state != "starting"
        ended = state in FINAL
        return {
            "livyInfo": {
                "notStartedAt": None,
                "startingAt": self.seen.get("starting"),
                "runningAt": self.seen.get("running"),
                "deadAt": self.seen.get("dead"),
                "successAt": self.seen.get("success"),
                "killedAt": self.seen.get("killed"),
                "recoveringAt": None,
                "currentState": state,
                "jobCreationRequest": {"conf": {}, **{k: v for k, v in self.body.items() if k != "tags"}},
            },
            "name": self.body.get("name"),
            "workspaceName": self.server.workspace,
            "computeName": self.pool,
            "sparkPoolName": self.pool,
            "submitterId": "b71a874a-0000-4000-8000-00000000a11c",
            "artifactId": "Livy",
            "jobType": "SparkBatch",
            "result": RESULTS.get(state, "Uncertain"),
            "schedulerInfo": {
                "submittedAt": self.submitted,
                "queuedAt": self.submitted,
                "scheduledAt": self.seen.get("starting"),
                "endedAt": self.seen.get(state) if ended else None,
                "cancellationRequestedAt": self.seen.get("killed"),
                "currentState": "Ended" if ended else ("Scheduled" if started else "Queued"),
            },
            "pluginInfo": {
                "preparationStartedAt": self.seen.get("starting"),
                "resourceAcquisitionStartedAt": self.seen.get("starting"),
                "submissionStartedAt": self.seen.get("starting"),
                "monitoringStartedAt": self.seen.get("starting"),
                "cleanupStartedAt": self.seen.get(state) if ended else None,
                "currentState": "Ended" if ended else ("Monitoring" if started else "Preparation"),
            },
            "errorInfo": [],
            "tags": dict(self.body.get("tags") or {}),
            "id": self.id,
            "appId": self.app if running else None,
            "appInfo": (
                {
                    "driverLogUrl": (
                        f"{self.server.endpoint}/node/containerlogs/container_{self.app}_01_000001/"
                        "trusted-service-user"
                    )
                    if running
                    else None,
                    "sparkUiUrl": f"{self.server.endpoint}/proxy/{self.app}/" if running else None,
                    "isSessionTimedOut": None,
                }
                if started
                else None
            ),
            "state": state,
            "log": self.log(),
        }

    def log(self) -> list[str] | None:
        """The launcher's last lines, framed as Livy frames a YARN application's log."""
        if self.state == "not_started":
            return None
        lines = ["stdout: ", *self.launcher, "\nstderr: ", "\nYARN Diagnostics: " + self.diagnostics]
        return lines[-LOG_LINES:]

    def say(self, text: str) -> None:
        """A line of the YARN client in spark-submit (the launcher), as Synapse's `log` has them."""
        stamp = time.strftime("%y/%m/%d %H:%M:%S", time.gmtime())
        self.launcher.append(f"{stamp} INFO {text}" if not text.startswith("\t") else text)


class LivyServer:
    """Start with ``with LivyServer(...) as server``; ``server.endpoint`` is the workspace URL."""

    def __init__(
        self,
        *,
        token: str,
        pools: dict[str, str],
        mounts: dict[str, Path] | None = None,
        blob_mounts: dict[str, BlobMount] | None = None,
        start_delay: float = 0.2,
        workspace: str = "contoso-ws",
        creates_per_second: int = CREATES_PER_SECOND,
    ):
        """``pools``: each Spark pool's node size (Small ... XXLarge)."""
        self.token = token
        unknown = {size for size in pools.values() if size not in POOL_NODES}
        assert not unknown, f"no node size {unknown}"
        self.pools = dict(pools)
        self.workspace = workspace
        self.creates_per_second = creates_per_second
        self.cluster = str(int(time.time() * 1000))
        self.faults: list[tuple[str, int, str | None]] = []  # (method, status, Retry-After)
        self._creates: deque[float] = deque()
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
    def submit(self, body: dict[str, Any], pool: str = "pool1") -> Batch:
        with self._lock:
            batch = Batch(self._next, body, pool, self)
            self.batches[batch.id] = batch
            self._next += 1
        threading.Thread(target=self._run, args=(batch,), daemon=True).start()
        return batch

    def local(self, text: str, batch: Batch | None = None) -> str:
        """``text`` with each mounted abfss:// root replaced by its folder (see the module's
        docstring); each substitution made is written to the batch's driver log."""
        for root, folder in self.mounts.items():
            if root in text:
                text = text.replace(root, str(folder))
                if batch is not None:
                    line = f"loopback pool: {root} read and written as {folder}"
                    if line not in batch.driver_log:
                        batch.driver_log.append(line)
        return text

    def take_create(self) -> float | None:
        """None when a create may go now; else the seconds until one may (the rate limit)."""
        with self._lock:
            now = time.monotonic()
            while self._creates and now - self._creates[0] >= 1.0:
                self._creates.popleft()
            if len(self._creates) >= self.creates_per_second:
                return 1.0 - (now - self._creates[0])
            self._creates.append(now)
            return None

    def take_fault(self, method: str) -> tuple[int, str | None] | None:
        with self._lock:
            for index, (wanted, status, after) in enumerate(self.faults):
                if wanted == method:
                    del self.faults[index]
                    return status, after
        return None

    def _run(self, batch: Batch) -> None:
        mounts = list(self.blob_mounts.values())
        for mount in mounts:
            mount.lock.acquire()  # one batch at a time sees and changes a container
        try:
            before = [mount.pull() for mount in mounts]
            final = self._run_batch(batch)
            if final in ("success", "dead"):  # what it wrote is in the container before it ends
                for mount, files in zip(mounts, before, strict=True):
                    mount.push(files)
        except Exception as exc:  # the container could not be read or written: the batch fails
            batch.driver_log.append(f"storage: {type(exc).__name__}: {exc}")
            batch.diagnostics = "the application's storage could not be read or written"
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
        file = self.local(batch.body["file"], batch)
        if file.startswith("abfss://") or not Path(file).is_file():
            # the launcher fails before an application exists: its error is in `log`
            batch.launcher.append(
                f'Exception in thread "main" java.io.FileNotFoundException: File {batch.body["file"]} '
                "does not exist."
            )
            batch.state = "dead"
            return None
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
        command += [file, *[self.local(str(a), batch) for a in batch.body.get("args", [])]]
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
            batch.say(f"Client: Application report for {batch.app} (state: RUNNING)")
        assert batch.process.stdout is not None
        for line in batch.process.stdout:
            batch.driver_log.append(line.rstrip("\n"))
        code = batch.process.wait()
        # what the launcher prints at the end (Synapse's recorded `log`), never the driver's lines
        for line in (
            "\t queue: default",
            f"\t final status: {'SUCCEEDED' if code == 0 else 'FAILED'}",
            f"\t tracking URL: {self.endpoint}/proxy/{batch.app}/",
            "\t user: trusted-service-user",
            "ShutdownHookManager: Shutdown hook called",
            f"ShutdownHookManager: Deleting directory /tmp/spark-{uuid.uuid4()}",
        ):
            batch.say(line)
        if code != 0:
            batch.diagnostics = f"User application exited with status {code}"
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

            def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _text(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self.close_connection = True
                    return self._send(
                        413, {"code": "RequestEntityTooLarge", "message": "the request body exceeds 100 KB"}
                    )
                raw = self.rfile.read(length) if length else b""
                body = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        return self._send(400, {"code": "BadRequest", "message": "request body is not JSON"})
                server.requests.append((method, url.path, body))
                logs = _DRIVER_LOG.match(url.path)
                if method == "GET" and logs:  # the application's container log (the driver's output)
                    found = [b for b in server.batches.values() if b.app == logs["app"]]
                    if not found or found[0].state in ("not_started", "starting"):
                        return self._text(404, "no such container")
                    return self._text(200, "\n".join(found[0].driver_log) + "\n")
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    return self._send(401, {"code": "Unauthorized", "message": "token missing or invalid"})
                fault = server.take_fault(method)
                if fault is not None:
                    status, after = fault
                    return self._send(
                        status,
                        {
                            "code": "TooManyRequests" if status == 429 else "ServiceUnavailable",
                            "message": "try later",
                        },
                        {"Retry-After": after} if after else None,
                    )
                match = _PATH.match(url.path)
                if match is None or match["version"] != API_VERSION:
                    return self._send(404, {"code": "NotFound", "message": "no such API"})
                if match["pool"] not in server.pools:
                    return self._send(
                        404, {"code": "SparkPoolNotFound", "message": f"pool {match['pool']} not found"}
                    )
                batch_id = match["id"]
                if method == "POST" and batch_id is None:
                    problem = _check_body(body) or _check_sizes(body, server.pools[match["pool"]])
                    if problem:
                        return self._send(400, {"code": "BadRequest", "message": problem})
                    wait = server.take_create()
                    if wait is not None:
                        return self._send(
                            429,
                            {
                                "code": "TooManyRequests",
                                "message": f"more than {server.creates_per_second} batch creations a second",
                            },
                            {"Retry-After": str(max(1, round(wait + 0.5)))},
                        )
                    return self._send(200, server.submit(body, match["pool"]).created())
                if batch_id is None:
                    return self._send(405, {"message": "method not allowed"})
                batch = server.batches.get(int(batch_id))
                if batch is None or batch.pool != match["pool"]:
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
    if not isinstance(body.get("conf", {}), dict) or not all(
        isinstance(v, str) for v in body.get("conf", {}).values()
    ):
        return "'conf' must be an object of strings"
    if not isinstance(body.get("tags", {}), dict):
        return "'tags' must be an object"
    return None


def _check_sizes(body: dict[str, Any], node_size: str) -> str | None:
    """A driver or executor must be one of Synapse's job sizes and fit a node of the pool.
    (The rule is Synapse's; the message text is this server's, not a recorded one.)"""
    node_cores, node_memory = POOL_NODES[node_size]
    sizes = {cores: memory for cores, memory in POOL_NODES.values()}
    for role in ("driver", "executor"):
        cores, memory = body.get(f"{role}Cores"), body.get(f"{role}Memory")
        if cores is None and memory is None:
            continue
        match = re.fullmatch(r"(\d+)g", str(memory or ""))
        if cores not in sizes or match is None or int(match[1]) != sizes[cores]:
            return f"{role} size {cores} cores / {memory} is not a Spark job size of Synapse"
        if cores > node_cores or int(match[1]) > node_memory:
            return (
                f"{role} size {cores} cores / {memory} exceeds the node size of the pool "
                f"({node_size}: {node_cores} cores, {node_memory}g)"
            )
    return None
