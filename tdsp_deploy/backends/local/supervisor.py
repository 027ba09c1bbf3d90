"""Keeps an endpoint's slots running, as a container platform's restart policy would.

A slot process that dies is started again on the same port (so the router needs no change)
after a back-off that doubles from 0.5 s to 30 s and resets once the slot has stayed up for a
healthy stretch. So is one that hangs: each slot's ``GET /`` is probed with the manifest's
``target.liveness_probe`` settings (Azure ML's), and after ``failure_threshold`` failed probes
in a row its process group is killed (SIGKILL: a stopped process would not act on SIGTERM) and
restarted the same way. Every exit, kill and restart is appended to the slot's own log (so
`logs` shows it) and counted, with its reason, in ``supervisor.json`` (so `status` shows it).

Probes run on a small thread pool, so a slot that does not answer never holds up the others;
a process the supervisor started itself is not judged until it has answered once (its init()
may take a while), one a command started has answered already (the push waited for it).

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
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tdsp_deploy.backends.local import processes
from tdsp_deploy.backends.local.container import app_root_of
from tdsp_deploy.backends.local.processes import ProcessRef
from tdsp_deploy.backends.local.state import EndpointFiles, SlotRecord
from tdsp_deploy.backends.local.target import LivenessProbe
from tdsp_deploy.errors import DeploymentFailed
from tdsp_deploy.packaging.extract import verify_extracted

log = logging.getLogger("tdsp_deploy.supervisor")

POLL_INTERVAL_S = 0.2
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
HEALTHY_STRETCH_S = 60.0
MAX_DOUBLINGS = 32
# A revision that left the record is the command's to drain and stop; only a process the
# command could not know of (restarted while it worked) is stopped here, and only after this.
ORPHAN_GRACE_S = 45.0
PROBE_THREADS = 8
EXITED = "exit"
HUNG = "liveness"


@dataclasses.dataclass
class RestartPolicy:
    """Back-off between restarts: ``first``, doubling up to ``ceiling``; back to ``first``
    after the process stayed up for ``healthy_stretch`` seconds."""

    first: float = FIRST_DELAY_S
    ceiling: float = MAX_DELAY_S
    healthy_stretch: float = HEALTHY_STRETCH_S
    failures: int = 0  # exits since the last healthy stretch

    def next_delay(self) -> float:
        # The exponent stops growing well past the ceiling: a slot that crash-loops for hours
        # must not reach 2**1024, which no longer converts to a float.
        delay = min(self.first * 2 ** min(self.failures, MAX_DOUBLINGS), self.ceiling)
        self.failures += 1
        return delay

    def ran_for(self, seconds: float) -> None:
        if seconds >= self.healthy_stretch:
            self.failures = 0


@dataclasses.dataclass
class LivenessCheck:
    """The liveness probing of one slot process."""

    settings: LivenessProbe
    next_probe: float  # when the next probe may start
    answered: bool  # since the process started: until then a failure is start-up, not a hang
    failures: int = 0  # in a row
    successes: int = 0  # in a row
    probe: Future[bool] | None = None  # the probe in flight

    def record(self, answered: bool) -> None:
        if answered:
            self.answered = True
            self.successes += 1
            if self.successes >= self.settings.success_threshold:
                self.failures = 0
        else:
            self.successes = 0
            if self.answered:
                self.failures += 1

    @property
    def hung(self) -> bool:
        return self.failures >= self.settings.failure_threshold


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
    reason: str = EXITED  # why the pending restart is due
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)  # restarts by reason
    last_restart_at: float | None = None  # wall clock
    liveness: LivenessCheck | None = None
    told_unprobed: bool = False

    @property
    def log_path(self) -> Path:
        return Path(self.directory) / "server.log"


class Supervisor:
    def __init__(self, files: EndpointFiles, *, policy: RestartPolicy | None = None):
        self.files = files
        self.policy = policy or RestartPolicy()
        self.watched: dict[str, Watched] = {}
        self.leaving: list[tuple[float, Watched]] = []  # (stop after, revision) no longer wanted
        self.known = files.read_restarts()  # a supervisor brought back keeps counting
        self.probes = ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="liveness")

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
        known = self.known.get(slot.directory, {})
        watched = Watched(
            slot=slot.name,
            directory=slot.directory,
            port=slot.port,
            command=list(slot.command or ()),
            policy=dataclasses.replace(self.policy),
            restarts=int(known.get("restarts", 0)),
            last_exit=slot.last_exit,
            reasons=dict(known.get("reasons", {})),
            last_restart_at=known.get("last_restart_at"),
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
                # A command starts a process and waits until it answers before it is supervised.
                watched.liveness = self._liveness(slot, now, answered=True)
            elif watched.up_since is not None:
                watched.policy.ran_for(now - watched.up_since)
            if watched.due is None:  # not killed already, waiting for the kernel to show it
                self._probe(watched, now)
            return False
        if watched.environment is None:
            if not watched.told_unknown:
                self._say(watched, "stopped before the supervisor saw it run; `tdsp-deploy push` restarts it")
                watched.told_unknown = True
            return False
        if watched.due is None:
            code = processes.exit_code(slot.process) if slot.process else None
            watched.last_exit = code
            watched.reason = EXITED
            delay = watched.policy.next_delay()
            watched.due = now + delay
            self._say(
                watched,
                "exited"
                + (f" with code {code}" if code is not None else "")
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
            cwd=app_root_of(Path(watched.directory), watched.environment),
            env=watched.environment or {},
            log_path=watched.log_path,
        )
        watched.process = process
        watched.up_since = time.monotonic()
        watched.due = None
        watched.restarts += 1
        watched.reasons[watched.reason] = watched.reasons.get(watched.reason, 0) + 1
        watched.last_restart_at = time.time()
        watched.liveness = self._liveness(dead, watched.up_since, answered=False)
        why = "it hung" if watched.reason == HUNG else "it ended"
        self._say(
            watched,
            f"restarted (pid {process.pid}, port {watched.port}) because {why}, restart {watched.restarts}",
        )
        # A command may have removed the revision while this one started: then it is an orphan.
        record = self.files.read()
        if record is None or all(s.directory != watched.directory for s in record.revisions()):
            processes.stop(process)

    # -- liveness ---------------------------------------------------------------------------
    @staticmethod
    def _liveness(slot: SlotRecord, now: float, *, answered: bool) -> LivenessCheck:
        settings = LivenessProbe.model_validate(slot.liveness_probe or {})
        return LivenessCheck(settings, next_probe=now + settings.initial_delay, answered=answered)

    def _probe(self, watched: Watched, now: float) -> None:
        """Take the result of the probe in flight, kill the process once it failed too often in
        a row, and start the next probe when it is due."""
        check = watched.liveness
        if check is None:
            return
        if check.probe is not None:
            if not check.probe.done():
                return
            answered = check.probe.result()
            check.probe = None
            check.record(answered)
            if not answered and check.failures:  # in supervisor.log: the slot's own log stays quiet
                log.info(
                    "deployment '%s' (%s): liveness probe failed, %d of %d in a row",
                    watched.slot,
                    Path(watched.directory).name,
                    check.failures,
                    check.settings.failure_threshold,
                )
            if check.hung:
                self._kill_hung(watched, check, now)
                return
        if now >= check.next_probe:
            check.next_probe = now + check.settings.period
            check.probe = self.probes.submit(answers, watched.port, check.settings.timeout)

    def _kill_hung(self, watched: Watched, check: LivenessCheck, now: float) -> None:
        settings = check.settings
        failed = (
            f"did not answer its liveness probe {check.failures} times in a row "
            f"(GET / on port {watched.port}, timeout {settings.timeout} s, every {settings.period} s)"
        )
        if watched.environment is None:  # it cannot be started again from here: leave it
            if not watched.told_unprobed:
                self._say(watched, f"{failed}; `tdsp-deploy push` restarts it")
                watched.told_unprobed = True
            check.failures = 0
            return
        pid = watched.process.pid if watched.process else None
        processes.kill(watched.process)
        watched.reason = HUNG
        watched.last_exit = None
        delay = watched.policy.next_delay()
        watched.due = now + delay
        watched.liveness = None
        self._say(
            watched,
            f"{failed}; killed (pid {pid} and its workers); restart {watched.restarts + 1} in {delay:g} s",
        )

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
                    "reasons": watched.reasons,
                    "last_reason": watched.reason,
                    "last_restart_at": watched.last_restart_at,
                    "last_exit": watched.last_exit,
                }
        if self.files.root.is_dir():
            self.files.write_restarts(revisions)

    def _say(self, watched: Watched, message: str) -> None:
        line = f"deployment '{watched.slot}' ({Path(watched.directory).name}): {message}"
        log.info("%s", line)
        with contextlib.suppress(OSError), open(watched.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} tdsp-deploy supervisor: {line}\n")


def answers(port: int, timeout: float) -> bool:
    """The liveness probe: ``GET /`` on the slot's port answers 200 within ``timeout`` seconds."""
    import http.client

    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", "/")
            return connection.getresponse().status == 200
        finally:
            connection.close()
    except (OSError, http.client.HTTPException):
        return False


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
        try:
            while not stop.is_set():
                try:
                    if not supervisor.tick(time.monotonic()):
                        log.info("endpoint %s is gone; stopping", files.name)
                        return
                except Exception:  # keep supervising; one bad look is no reason to stop for good
                    log.exception("supervision round failed")
                stop.wait(POLL_INTERVAL_S)
            log.info("stopped")
        finally:
            supervisor.probes.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    from tdsp_deploy.backends.local import daemon

    root = daemon.start(argv, "supervisor", "ENDPOINT_DIR")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(root, stop)


if __name__ == "__main__":
    main()
