"""The endpoint's own processes: the router on the endpoint port and the supervisor, started,
told the current routes and traffic, and the end of a revision's process (drained through the
router, then stopped).

Every process is written down (started.json, then the endpoint record) before anything can
interrupt in between, so that one a command started is always found again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tdsp_deploy import interrupts
from tdsp_deploy.backends.base import ProgressEvent
from tdsp_deploy.backends.local import processes
from tdsp_deploy.backends.local.routes import RouterConfig, SlotRoute
from tdsp_deploy.backends.local.slot_log import read_tail
from tdsp_deploy.backends.local.state import EndpointFiles, EndpointRecord, SlotRecord
from tdsp_deploy.errors import BackendError

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.local.target import LocalTarget
    from tdsp_deploy.manifest.model import ManifestBase

ROUTER_START_TIMEOUT_S = 15.0
RELOAD_TIMEOUT_S = 10.0
MAX_DRAIN_S = 30.0  # a slot's in-flight requests get at most this long (or the request timeout)


@dataclasses.dataclass
class EndpointProcesses:
    """Starts, reconfigures and stops the processes of one endpoint."""

    files: EndpointFiles
    manifest: ManifestBase  # read when the router is configured: status builds one without a rollout
    progress: Progress

    @property
    def target(self) -> LocalTarget:
        return self.manifest.target  # type: ignore[return-value]

    def spawn(self, command: list[str], *, what: str, cwd: Path, env: dict[str, str], log_path: Path):  # type: ignore[no-untyped-def]
        """Start a process and write it down before anything can interrupt in between."""
        with interrupts.deferred():
            ref = processes.spawn(command, cwd=cwd, env=env, log_path=log_path)
            self.files.remember(ref, what, alive=processes.is_running)
        return ref

    def strays(self, record: EndpointRecord) -> list[tuple[processes.ProcessRef, str]]:
        """Processes a command started for this endpoint that still run and that the record
        does not account for (an interrupted command's)."""
        known = {record.router, record.supervisor, *(slot.process for slot in record.revisions())}
        started = self.files.started()
        return [(ref, what) for ref, what in started if ref not in known and processes.is_running(ref)]

    # -- the router ------------------------------------------------------------------------
    def router_config(self, record: EndpointRecord) -> RouterConfig:
        self.files.admin()  # created before the router reads it
        return RouterConfig(
            endpoint=record.name,
            host=record.host,
            port=record.port,
            keys_file=str(self.files.keys_path),
            admin_file=str(self.files.admin_path),
            slots=routes(record),
            generation=record.router_generation,
            request_timeout_s=self.target.request_timeout_ms / 1000,
            max_request_bytes=int(self.target.max_request_mb * 1024 * 1024),
            sticky_header=self.manifest.rollout.sticky_header,
            experiment_id=record.experiment_id,
            request_log=str(self.files.request_log),
        )

    def publish(self, record: EndpointRecord) -> None:
        """Tell the router the current slots and traffic, and wait until it serves them."""
        record.router_generation += 1
        self.files.write(record)
        self.router_config(record).write(self.files.router_config_path)
        if not processes.is_running(record.router):
            self.start_router(record)
            return
        os.kill(record.router.pid, signal.SIGHUP)  # type: ignore[union-attr]
        if not processes.wait_until(
            lambda: self.router_generation(record) == record.router_generation, timeout=RELOAD_TIMEOUT_S
        ):
            raise BackendError(
                f"the router of endpoint '{record.name}' did not take the new configuration",
                hint=f"see {self.files.router_log}",
            )

    def router_generation(self, record: EndpointRecord) -> int | None:
        """The configuration the router serves (asking also makes it flush its request log)."""
        from tdsp_deploy.backends.local.control import control_request

        answer = control_request(
            self.files, client_host(record.host), record.port, "GET", "/-/state", timeout=2
        )
        if answer is None or answer[0] != 200:
            return None
        try:
            return int(json.loads(answer[1])["generation"])
        except (ValueError, KeyError, TypeError):
            return None

    def ensure_router(self, record: EndpointRecord) -> None:
        if processes.is_running(record.router):
            return
        self.files.write(record)
        self.router_config(record).write(self.files.router_config_path)
        self.start_router(record)

    def start_router(self, record: EndpointRecord) -> None:
        if not processes.port_is_free(record.host, record.port):
            raise BackendError(
                f"port {record.port} on {record.host} is taken by another program; the router cannot start",
                hint="free the port, or set target.port to another one",
            )
        self.progress(
            ProgressEvent(step="router", message=f"starting the router on {record.host}:{record.port}")
        )
        self._start(record, "router", self.files.router_config_path, self.files.router_log)
        host = client_host(record.host)
        if not processes.wait_until(
            lambda: probe(record.port, host=host, timeout=0.5) or not processes.is_running(record.router),
            timeout=ROUTER_START_TIMEOUT_S,
        ) or not processes.is_running(record.router):
            processes.stop(record.router)
            raise BackendError(
                f"the router of endpoint '{record.name}' did not start",
                hint=f"see {self.files.router_log}",
                details={"log_tail": read_tail(self.files.router_log, 20)},
            )

    def start_supervisor(self, record: EndpointRecord) -> None:
        self._start(record, "supervisor", self.files.root, self.files.supervisor_log)

    def _start(self, record: EndpointRecord, what: str, argument: Path, log_path: Path) -> None:
        """Start the router or the supervisor (``python -m tdsp_deploy.backends.local.<what>``)
        and record it."""
        with interrupts.deferred():
            ref = self.spawn(
                [sys.executable, "-m", f"tdsp_deploy.backends.local.{what}", str(argument)],
                what=what,
                cwd=self.files.root,
                env=dict(os.environ),
                log_path=log_path,
            )
            setattr(record, what, ref)
            self.files.write(record)

    # -- a revision's end ------------------------------------------------------------------
    def stop_revision(self, record: EndpointRecord | None, slot: SlotRecord) -> None:
        """Stop a revision that no longer takes requests. It left the record and the router's
        routes before this; let what the router already sent it finish first (bounded)."""
        if record is not None and processes.is_running(slot.process):
            self._drain(record, slot)
        processes.stop(slot.process)
        processes.end_leftovers(slot.process, Path(slot.directory))
        shutil.rmtree(slot.directory, ignore_errors=True)

    def _drain(self, record: EndpointRecord, slot: SlotRecord) -> None:
        """Wait until the router has no request in flight to the revision's process, at most the
        request timeout (and MAX_DRAIN_S). The router answers ``POST /-/drain`` once that
        process's requests are done; a router from before that existed is watched through the
        kernel's connection table instead (a request in flight holds a connection to the slot)."""
        if not processes.is_running(record.router):
            return
        limit = min(self.target.request_timeout_ms / 1000, MAX_DRAIN_S)
        started = time.monotonic()
        drained = self._router_drain(record, slot.port, limit)
        if drained is None:
            drained = processes.wait_until(
                lambda: processes.upstream_connections(record.router, slot.port) == 0,
                timeout=limit,
                interval=0.02,
            )
        waited = time.monotonic() - started
        what = f"{slot.name} ({slot.revision})"
        if not drained:
            message = f"{what} still had requests in flight after {limit:g} s; stopping it"
            self.progress(ProgressEvent(step="drain", message=message))
        elif waited > 0.1:
            self.progress(ProgressEvent(step="drain", message=f"drained {what} in {waited:.2f} s"))

    def _router_drain(self, record: EndpointRecord, port: int, timeout: float) -> bool | None:
        """True when the router says the process on ``port`` has nothing in flight, False when
        it still had after ``timeout``; None when the router cannot drain."""
        from tdsp_deploy.backends.local.control import control_request

        body = json.dumps({"port": port, "timeout_s": timeout}).encode()
        host = client_host(record.host)
        answer = control_request(self.files, host, record.port, "POST", "/-/drain", body, timeout=timeout + 5)
        if answer is None:
            return None
        if answer[0] == 200:
            return True
        return False if answer[0] == 504 else None


def routes(record: EndpointRecord) -> tuple[SlotRoute, ...]:
    """Where each slot's traffic goes: its newest revision once that answers its liveness
    probe, until then the revision it replaces (if any). A revision that answered once
    keeps its route while it is down: the supervisor brings it back on the same port."""
    found = []
    for name, slot in sorted(record.slots.items()):
        serving = slot if slot.supervised or probe(slot.port, timeout=1.0) else slot.previous
        if serving is not None:
            found.append(
                SlotRoute(
                    name,
                    serving.port,
                    slot.traffic,
                    slot.mirror,
                    serving.raw_http,
                    serving.revision,
                    worker_count(serving.command),
                )
            )
    return tuple(found)


def worker_count(command: list[str] | None) -> int:
    """The worker processes a slot was started with (its command's --worker_count), 1 if unsaid."""
    if command and "--worker_count" in command[:-1]:
        value = command[command.index("--worker_count") + 1]
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def probe(port: int, *, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """The liveness probe: GET / answers 200."""
    import http.client  # here, not at the top: `validate` loads this module and never probes

    try:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection.request("GET", "/")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False
