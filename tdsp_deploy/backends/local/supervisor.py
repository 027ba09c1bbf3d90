"""Keeps an endpoint's slots running, as a container platform's restart policy would.

A slot process that dies is started again on the same port (so the router needs no change)
after a back-off that doubles from 0.5 s to 30 s and resets once the slot has stayed up for a
healthy stretch. Every exit and restart is appended to the slot's own log (so `logs` shows
it) and counted in ``supervisor.json`` (so `status` shows it).

One supervisor per endpoint, started with the router, recorded in endpoint.json and brought
back by `repair` (every push). What it restarts, and why only that:

- revisions that answered their health probe once (``supervised``): a slot whose init() fails
  during a push is the push's to report and roll back, not something to retry;
- revisions it has seen alive: it copies the environment of the running process, because
  that environment may hold secrets and is never written to disk. A slot already dead when
  the supervisor starts is `repair`'s to restart (it has the manifest).

It writes only its own file: a command holds the endpoint lock for as long as a push runs,
and a restart cannot wait that long. The commands read both files (state.py merges them).

Run as: ``python -m tdsp_deploy.backends.local.supervisor ENDPOINT_DIR``; SIGTERM stops it
(the slots keep running).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tdsp_deploy.backends.local import processes
from tdsp_deploy.backends.local.processes import ProcessRef
from tdsp_deploy.backends.local.state import EndpointFiles, SlotRecord
from tdsp_deploy.errors import DeploymentFailed
from tdsp_deploy.packaging.extract import verify_extracted

log = logging.getLogger("tdsp_deploy.supervisor")

POLL_INTERVAL_S = 0.2
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
HEALTHY_STRETCH_S = 60.0
# A revision that left the record is the command's to drain and stop; only a process the
# command could not know of (restarted while it worked) is stopped here, and only after this.
ORPHAN_GRACE_S = 45.0


@dataclasses.dataclass
class RestartPolicy:
    """Back-off between restarts: ``first``, doubling up to ``ceiling``; back to ``first``
    after the process stayed up for ``healthy_stretch`` seconds."""

    first: float = FIRST_DELAY_S
    ceiling: float = MAX_DELAY_S
    healthy_stretch: float = HEALTHY_STRETCH_S
    failures: int = 0  # exits since the last healthy stretch

    def next_delay(self) -> float:
        delay = min(self.first * 2**self.failures, self.ceiling)
        self.failures += 1
        return delay

    def ran_for(self, seconds: float) -> None:
        if seconds >= self.healthy_stretch:
            self.failures = 0


@dataclasses.dataclass
class Watched:
    """One revision the supervisor looks after."""

    slot: str
    directory: str
    port: int
    command: list[str]
    environment: dict[str, str] | None = None  # copied from the live process, kept in memory only
    policy: RestartPolicy = dataclasses.field(default_factory=RestartPolicy)
    process: ProcessRef | None = None
    up_since: float | None = None
    due: float | None = None  # when the pending restart may happen
    restarts: int = 0
    last_exit: int | None = None
    told_unknown: bool = False

    @property
    def log_path(self) -> Path:
        return Path(self.directory) / "server.log"


class Supervisor:
    def __init__(self, files: EndpointFiles, *, policy: RestartPolicy | None = None):
        self.files = files
        self.policy = policy or RestartPolicy()
        self.watched: dict[str, Watched] = {}
        self.leaving: list[tuple[float, Watched]] = []  # (stop after, revision) no longer wanted
        restarts = files.read_restarts()  # a supervisor brought back keeps counting
        self.known_counts = {d: int(e.get("restarts", 0)) for d, e in restarts.items()}

    def tick(self, now: float) -> bool:
        """One look at every revision; False once the endpoint is gone."""
        record = self.files.read()
        if record is None:
            return False
        wanted = {slot.directory: slot for slot in record.revisions() if slot.supervised and slot.command}
        for directory in list(self.watched):
            if directory not in wanted:
                watched = self.watched.pop(directory)
                if watched.restarts:  # a process of ours may outlive the revision
                    self.leaving.append((now + ORPHAN_GRACE_S, watched))
        self._stop_orphans(now)
        changed = False
        for directory, slot in wanted.items():
            watched = self.watched.get(directory) or self._watch(slot)
            changed |= self._look_after(watched, slot, now)
        if changed:
            self._write()
        return True

    def _watch(self, slot: SlotRecord) -> Watched:
        watched = Watched(
            slot=slot.name,
            directory=slot.directory,
            port=slot.port,
            command=list(slot.command or ()),
            policy=dataclasses.replace(self.policy),
            restarts=self.known_counts.get(slot.directory, 0),
            last_exit=slot.last_exit,
        )
        self.watched[slot.directory] = watched
        return watched

    def _look_after(self, watched: Watched, slot: SlotRecord, now: float) -> bool:
        if processes.is_running(slot.process):
            if watched.process != slot.process:  # first sight, or a command restarted it
                watched.process = slot.process
                watched.up_since = now
                watched.due = None
                watched.environment = _environment_of(slot.process)
            elif watched.up_since is not None:
                watched.policy.ran_for(now - watched.up_since)
            return False
        if watched.environment is None:
            if not watched.told_unknown:
                self._say(watched, "stopped before the supervisor saw it run; `tdsp-deploy push` restarts it")
                watched.told_unknown = True
            return False
        if watched.due is None:
            code = processes.exit_code(slot.process) if slot.process else None
            watched.last_exit = code
            delay = watched.policy.next_delay()
            watched.due = now + delay
            self._say(
                watched,
                "exited" + (f" with code {code}" if code is not None else "")
                + f"; restart {watched.restarts + 1} in {delay:g} s",
            )
            return False
        if now < watched.due:
            return False
        self._restart(watched, slot)
        return True

    def _restart(self, watched: Watched, dead: SlotRecord) -> None:
        # Workers of a master that was killed may still hold the port: end what is left of it.
        processes.end_leftovers(dead.process, Path(watched.directory))
        if not (Path(watched.directory) / "package").is_dir():
            watched.due = None
            return  # being removed by a command
        try:  # load only what was checked at deploy time, not whatever is on disk now
            verify_extracted(Path(watched.directory) / "package", dead.package_id)
        except DeploymentFailed as refused:
            watched.due = time.monotonic() + watched.policy.next_delay()
            self._say(watched, f"not restarted: {refused.message}")
            return
        process = processes.spawn(
            watched.command,
            cwd=Path(watched.directory) / "package" / "code",
            env=watched.environment or {},
            log_path=watched.log_path,
        )
        watched.process = process
        watched.up_since = time.monotonic()
        watched.due = None
        watched.restarts += 1
        self._say(watched, f"restarted (pid {process.pid}, port {watched.port}), restart {watched.restarts}")
        # A command may have removed the revision while this one started: then it is an orphan.
        record = self.files.read()
        if record is None or all(s.directory != watched.directory for s in record.revisions()):
            processes.stop(process)

    def _stop_orphans(self, now: float) -> None:
        """Stop a process this supervisor started for a revision that has left the record, if
        it still runs after the grace period (the command that removed the revision drains and
        stops the process it knows of; this one it may not have known)."""
        still = []
        for due, watched in self.leaving:
            if not processes.is_running(watched.process):
                continue
            if now < due:
                still.append((due, watched))
                continue
            pid = watched.process.pid if watched.process else None
            self._say(watched, f"stopping pid {pid}: its revision was removed")
            processes.stop(watched.process)
        self.leaving = still

    def _write(self) -> None:
        revisions: dict[str, dict[str, Any]] = {}
        for directory, watched in sorted(self.watched.items()):
            if watched.restarts:
                revisions[directory] = {
                    "slot": watched.slot,
                    "process": watched.process.to_json() if watched.process else None,
                    "restarts": watched.restarts,
                    "last_exit": watched.last_exit,
                }
        if self.files.root.is_dir():
            self.files.write_restarts(revisions)

    def _say(self, watched: Watched, message: str) -> None:
        line = f"deployment '{watched.slot}' ({Path(watched.directory).name}): {message}"
        log.info("%s", line)
        with contextlib.suppress(OSError), open(watched.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} tdsp-deploy supervisor: {line}\n")


def _environment_of(process: ProcessRef | None) -> dict[str, str] | None:
    import psutil

    if process is None:
        return None
    try:
        return dict(psutil.Process(process.pid).environ())
    except psutil.Error:
        return None


def run(root: Path, stop: threading.Event) -> None:
    files = EndpointFiles(root.name, root.parent.parent)
    with open(root / ".supervisor.lock", "a") as lock:  # noqa: SIM117
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another supervisor looks after endpoint %s; leaving", files.name)
            return
        supervisor = Supervisor(files)
        log.info("supervising endpoint %s (pid %s)", files.name, os.getpid())
        while not stop.is_set():
            try:
                if not supervisor.tick(time.monotonic()):
                    log.info("endpoint %s is gone; stopping", files.name)
                    return
            except Exception:  # keep supervising; one bad look is no reason to stop for good
                log.exception("supervision round failed")
            stop.wait(POLL_INTERVAL_S)
        log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tdsp_deploy.backends.local.supervisor ENDPOINT_DIR", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s supervisor: %(message)s", stream=sys.stderr
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(Path(args[0]), stop)


if __name__ == "__main__":
    main()
