"""What the local target keeps on disk, under ``$TDSP_DEPLOY_HOME/endpoints/<name>/``:

- ``endpoint.json``: router and slots (pids with start times, ports, versions, traffic),
- ``keys.json``: the endpoint's keys, mode 0600,
- ``admin.json``: the admin key (the router's control routes) and the slots' key (from which
  each slot's secret is derived, see slot_guard.py), mode 0600; only the CLI and the router
  read it, and no command prints it,
- ``router.json``: what the router process serves (see routes.py),
- ``supervisor.json``: what the supervisor restarted (written by it alone, see supervisor.py),
- ``started.json``: every process a command started, recorded as it starts and dropped once
  it has ended, so that one left by an interrupted command is still found and stopped,
- ``failed/<slot>.log``: the log of the latest deployment of that slot that failed,
- ``router.log``, ``supervisor.log`` and ``slots/<slot>/<revision>/server.log``: the
  processes' output,
- ``.lock``: held while a command changes the endpoint (a ``tdsp_deploy.locks.FileLock``).

Every write is atomic, so an interrupted command leaves the previous state readable.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdsp_deploy import paths
from tdsp_deploy.backends.local.processes import ProcessRef
from tdsp_deploy.errors import BackendError
from tdsp_deploy.json_files import write_json_atomic


@dataclasses.dataclass
class SlotRecord:
    """One running revision of a slot."""

    name: str
    revision: str
    port: int
    process: ProcessRef | None
    package_id: str
    config_id: str
    model_version: str
    directory: str
    deployed_at: float
    traffic: int = 0
    mirror: int = 0
    previous: SlotRecord | None = None  # the revision this one replaced, kept until finalized
    command: list[str] | None = None  # how to start it again (no secret: the environment is not kept)
    supervised: bool = False  # True once it answered its health probe: from then on it is restarted
    raw_http: bool = False  # its run() takes raw requests (@rawhttp): the router checks no body
    liveness_probe: dict[str, int] | None = None  # target.liveness_probe at deploy (None: defaults)
    pending: bool = False  # deployed by a push that has not finished with it: undone by the next one
    environment: dict[str, str] | None = None  # its own environment (hash, python...); None: the CLI's
    restarts: int = 0  # by the supervisor (merged in from supervisor.json when read)
    last_exit: int | None = None  # the exit status the supervisor saw before its latest restart
    last_restart_reason: str | None = None  # "exit" (the process ended) or "liveness" (it hung)
    last_restart_at: float | None = None  # wall-clock time of the latest restart

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["process"] = self.process.to_json() if self.process else None
        doc["previous"] = self.previous.to_json() if self.previous else None
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SlotRecord:
        doc = dict(doc)
        doc["process"] = ProcessRef.from_json(doc.get("process"))
        doc["previous"] = cls.from_json(doc["previous"]) if doc.get("previous") else None
        return cls(**doc)

    @property
    def log_path(self) -> Path:
        return Path(self.directory) / "server.log"


@dataclasses.dataclass
class EndpointRecord:
    name: str
    host: str
    port: int
    created_at: float
    router: ProcessRef | None = None
    supervisor: ProcessRef | None = None
    router_generation: int = 0
    revision_counter: int = 0
    experiment_id: str = ""  # salts sticky keys; set by an A/B experiment
    slots: dict[str, SlotRecord] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "created_at": self.created_at,
            "router": self.router.to_json() if self.router else None,
            "supervisor": self.supervisor.to_json() if self.supervisor else None,
            "router_generation": self.router_generation,
            "revision_counter": self.revision_counter,
            "experiment_id": self.experiment_id,
            "slots": {name: slot.to_json() for name, slot in sorted(self.slots.items())},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EndpointRecord:
        return cls(
            name=doc["name"],
            host=doc["host"],
            port=int(doc["port"]),
            created_at=float(doc["created_at"]),
            router=ProcessRef.from_json(doc.get("router")),
            supervisor=ProcessRef.from_json(doc.get("supervisor")),
            router_generation=int(doc.get("router_generation", 0)),
            revision_counter=int(doc.get("revision_counter", 0)),
            experiment_id=str(doc.get("experiment_id", "")),
            slots={name: SlotRecord.from_json(s) for name, s in doc.get("slots", {}).items()},
        )

    @property
    def traffic(self) -> dict[str, int]:
        return {name: slot.traffic for name, slot in sorted(self.slots.items())}

    def revisions(self) -> list[SlotRecord]:
        """Every running revision: each slot's current one and the one it replaces, if kept."""
        found = []
        for _, slot in sorted(self.slots.items()):
            found.append(slot)
            if slot.previous is not None:
                found.append(slot.previous)
        return found


class _InRoot:
    """One file of the endpoint's folder, read as an attribute: ``files.keys_path``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, files: EndpointFiles, owner: type | None = None) -> Path:
        return files.root / self.name


class EndpointFiles:
    """The paths of one endpoint's state, and reading and writing them."""

    def __init__(self, name: str, home: Path | None = None):
        self.home = home or paths.state_home()
        self.root = self.home / "endpoints" / name
        self.name = name

    record_path = _InRoot("endpoint.json")
    keys_path = _InRoot("keys.json")
    admin_path = _InRoot("admin.json")
    router_config_path = _InRoot("router.json")
    request_log = _InRoot("requests.jsonl")
    router_log = _InRoot("router.log")
    supervisor_state_path = _InRoot("supervisor.json")
    supervisor_log = _InRoot("supervisor.log")
    started_path = _InRoot("started.json")

    @property
    def lock_path(self) -> Path:
        """Flocked while a command changes the endpoint (tdsp_deploy.locks.FileLock)."""
        return self.root / ".lock"

    def failed_log(self, slot: str) -> Path:
        return self.root / "failed" / f"{slot}.log"

    def started(self) -> list[tuple[ProcessRef, str]]:
        """Every process a command started here that may still run, with what it is."""
        try:
            doc = json.loads(self.started_path.read_text())
            entries = [(ProcessRef.from_json(e), str(e.get("what", ""))) for e in doc.get("processes", [])]
        except (FileNotFoundError, ValueError, AttributeError, KeyError, TypeError):
            return []
        return [(ref, what) for ref, what in entries if ref is not None]

    def remember(self, ref: ProcessRef, what: str, *, alive: Callable[[ProcessRef], bool]) -> None:
        """Add a process just started (and drop those that have ended since)."""
        entries = [(known, kind) for known, kind in self.started() if alive(known)] + [(ref, what)]
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.started_path, {"format": 1, "processes": [{**r.to_json(), "what": w} for r, w in entries]}
        )

    def slot_dir(self, slot: str, revision: str) -> Path:
        return self.root / "slots" / slot / revision

    def exists(self) -> bool:
        return self.record_path.exists()

    def read(self) -> EndpointRecord | None:
        try:
            record = EndpointRecord.from_json(json.loads(self.record_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"the local state of endpoint '{self.name}' is unreadable: {exc}",
                hint=f"inspect {self.record_path}, or remove {self.root} after stopping its processes",
            ) from exc
        self._merge_restarts(record)
        return record

    def read_restarts(self) -> dict[str, dict[str, Any]]:
        """The supervisor's account, by revision folder: its latest process and restart count."""
        try:
            doc = json.loads(self.supervisor_state_path.read_text())
            return dict(doc.get("revisions", {}))
        except (FileNotFoundError, ValueError, AttributeError):
            return {}  # never written, or from a supervisor of another version: nothing restarted

    def write_restarts(self, revisions: dict[str, dict[str, Any]]) -> None:
        write_json_atomic(self.supervisor_state_path, {"format": 1, "revisions": revisions})

    def _merge_restarts(self, record: EndpointRecord) -> None:
        """The supervisor writes only its own file (commands hold the endpoint lock for minutes,
        it cannot wait for it); a revision's process is the newer of the two accounts."""
        restarts = self.read_restarts()
        if not restarts:
            return
        for slot in record.revisions():
            entry = restarts.get(slot.directory)
            if not entry:
                continue
            slot.restarts = int(entry.get("restarts", 0))
            slot.last_exit = entry.get("last_exit")
            slot.last_restart_reason = entry.get("last_reason")
            slot.last_restart_at = entry.get("last_restart_at")
            restarted = ProcessRef.from_json(entry.get("process"))
            if restarted and (slot.process is None or restarted.create_time > slot.process.create_time):
                slot.process = restarted

    def write(self, record: EndpointRecord) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.record_path, record.to_json())

    def keys(self) -> dict[str, str]:
        """The endpoint's keys, created (mode 0600) on first use."""
        try:
            return json.loads(self.keys_path.read_text())
        except FileNotFoundError:
            return self.new_keys()

    def new_keys(self) -> dict[str, str]:
        """Two fresh random keys (256 bits each), replacing any there were (mode 0600)."""
        self.root.mkdir(parents=True, exist_ok=True)
        keys = {"primary_key": secrets.token_urlsafe(32), "secondary_key": secrets.token_urlsafe(32)}
        write_json_atomic(self.keys_path, keys, mode=0o600)
        return keys

    def admin(self) -> dict[str, str]:
        """The admin key and the slots' key, created (mode 0600) on first use. Unlike the
        scoring keys they are never shown: only this CLI and the router use them."""
        try:
            doc = json.loads(self.admin_path.read_text())
            if doc.get("admin_key") and doc.get("slot_key"):
                return doc
        except FileNotFoundError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        doc = {"admin_key": secrets.token_urlsafe(32), "slot_key": secrets.token_urlsafe(32)}
        write_json_atomic(self.admin_path, doc, mode=0o600)
        return doc

    def admin_headers(self) -> dict[str, str]:
        """What the CLI sends to the router's control routes."""
        return {"Authorization": f"Bearer {self.admin()['admin_key']}"}


def all_endpoint_names(home: Path | None = None) -> list[str]:
    root = (home or paths.state_home()) / "endpoints"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "endpoint.json").exists())
