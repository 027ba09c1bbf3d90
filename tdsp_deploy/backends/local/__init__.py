"""The embedded local target: an Azure ML managed online endpoint emulated on loopback.

Each slot is an ``azureml-inference-server-http`` process serving the user's unchanged
score.py on a loopback port; a router process on the endpoint port checks keys and routes.
Processes outlive the CLI; their state lives under ``$TDSP_DEPLOY_HOME`` (state.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy import interrupts
from tdsp_deploy.backends.base import (
    Backend,
    Caller,
    EndpointStatus,
    ProgressEvent,
    SlotStatus,
    no_progress,
    refuse_unless_deletable,
)
from tdsp_deploy.backends.local import processes
from tdsp_deploy.backends.local.entry_script import takes_raw_requests
from tdsp_deploy.backends.local.routes import RouterConfig, SlotRoute
from tdsp_deploy.backends.local.slot_guard import SLOT_SECRET_ENV, slot_secret
from tdsp_deploy.backends.local.state import EndpointFiles, EndpointLock, EndpointRecord, SlotRecord
from tdsp_deploy.errors import BackendError, DeploymentFailed, DeploymentTimeout, EndpointNotFound, UsageError
from tdsp_deploy.manifest.model import LocalTarget
from tdsp_deploy.secrets import redact_variables

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage

PIN_HEADER = "azureml-model-deployment"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ROUTER_START_TIMEOUT_S = 15.0
RELOAD_TIMEOUT_S = 10.0
MAX_DRAIN_S = 30.0  # a slot's in-flight requests get at most this long (or the request timeout)
# All a deployment's process takes from the CLI's environment: what running at all needs.
SYSTEM_VARIABLES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})


class LocalBackend(Backend):
    kind = "local"
    target_model = LocalTarget
    supports_weighted_traffic = True
    supports_mirror = True

    def __init__(self, manifest: ManifestBase, *, progress: Progress = no_progress, home: Path | None = None):
        super().__init__(manifest, progress=progress)
        self.target: LocalTarget
        self.files = EndpointFiles(manifest.name, home)

    # -- reading -------------------------------------------------------------------------
    def _record(self) -> EndpointRecord:
        record = self.files.read()
        if record is None:
            raise EndpointNotFound(
                f"endpoint '{self.manifest.name}' is not deployed on the local target",
                hint="deploy it with `tdsp-deploy push MANIFEST`",
            )
        return record

    def scoring_uri(self, record: EndpointRecord) -> str:
        return f"http://{_client_host(record.host)}:{record.port}/score"

    def status(self) -> EndpointStatus:
        record = self.files.read()
        if record is None:
            return EndpointStatus(name=self.manifest.name, kind=self.kind, exists=False)
        router_up = processes.is_running(record.router)
        supervisor_up = processes.is_running(record.supervisor)
        slots = [self._slot_status(slot) for _, slot in sorted(record.slots.items())]
        return EndpointStatus(
            name=record.name,
            kind=self.kind,
            exists=True,
            scoring_uri=self.scoring_uri(record),
            slots=slots,
            details={
                "router": {
                    "state": "running" if router_up else "stopped",
                    "pid": record.router.pid if record.router and router_up else None,
                    "host": record.host,
                    "port": record.port,
                },
                "supervisor": {
                    "state": "running" if supervisor_up else "stopped",
                    "pid": record.supervisor.pid if record.supervisor and supervisor_up else None,
                    "log": str(self.files.supervisor_log),
                },
                "state_dir": str(self.files.root),
                # started by a command that was interrupted before it could record or stop them;
                # the next push or delete stops them
                "stray_processes": [ref.pid for ref, _ in self._strays(record)],
            },
        )

    def _strays(self, record: EndpointRecord) -> list[tuple[processes.ProcessRef, str]]:
        """Processes a command started for this endpoint that still run and that the record
        does not account for (an interrupted command's)."""
        known = {record.router, record.supervisor, *(slot.process for slot in record.revisions())}
        return [(ref, what) for ref, what in self.files.started() if ref not in known and processes.is_running(ref)]

    def _spawn(self, command: list[str], *, what: str, cwd: Path, env: dict[str, str], log_path: Path):  # type: ignore[no-untyped-def]
        """Start a process and write it down before anything can interrupt in between."""
        with interrupts.deferred():
            ref = processes.spawn(command, cwd=cwd, env=env, log_path=log_path)
            self.files.remember(ref, what, alive=processes.is_running)
        return ref

    def _slot_status(self, slot: SlotRecord) -> SlotStatus:
        running = processes.is_running(slot.process)
        state = ("healthy" if _probe(slot.port, timeout=2.0) else "unhealthy") if running else "stopped"
        return SlotStatus(
            name=slot.name,
            state=state,
            traffic=slot.traffic,
            mirror=slot.mirror,
            model_version=slot.model_version,
            package_id=slot.package_id,
            config_id=slot.config_id,
            details={
                "pid": slot.process.pid if slot.process and running else None,
                "port": slot.port,
                "revision": slot.revision,
                "deployed_at": slot.deployed_at,
                "log": str(slot.log_path),
                "restarts": slot.restarts,  # by the supervisor: the process ended, or hung
                "last_exit": slot.last_exit,
                "last_restart_reason": slot.last_restart_reason,
                "last_restart_at": slot.last_restart_at,
                # the deployment's own environment (hash, Python), or "shared": the CLI's
                "environment": slot.environment or {"hash": "shared", "python": _this_python()},
            },
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        record = self._record()
        found = record.slots.get(slot)
        if found is None:
            raise UsageError(
                f"endpoint '{record.name}' has no deployment '{slot}'",
                hint=f"deployments: {', '.join(record.slots) or 'none'}",
            )
        return _read_tail(found.log_path, tail)

    def failed_logs(self, slot: str, *, tail: int | None = None) -> str:
        path = self.files.failed_log(slot)
        if not slot:  # the latest failure, whichever deployment it was
            kept = sorted(path.parent.glob("*.log"), key=lambda p: p.stat().st_mtime)
            path = kept[-1] if kept else path
        if not path.exists():
            raise UsageError(
                f"no failed deployment{f' {slot!r}' if slot else ''} of endpoint '{self.manifest.name}' "
                "has left a log",
                hint="a push that fails keeps its deployment's log here until the next failure",
            )
        return _read_tail(path, tail)

    def _keep_failed_log(self, slot: SlotRecord) -> Path:
        """Copy a failing revision's log where it outlives the revision's folder."""
        kept = self.files.failed_log(slot.name)
        kept.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(slot.log_path, kept)
        except FileNotFoundError:
            kept.write_text("")
        return kept

    def credentials(self) -> dict[str, str]:
        self._record()
        return self.files.keys()

    def repair(self) -> list[str]:
        record = self.files.read()
        if record is None:
            return []
        finished = self._finish_interrupted(record)
        if finished:
            record = self._record()
        return finished + self._restart_what_stopped(record)

    def _finish_interrupted(self, record: EndpointRecord) -> list[str]:
        """Complete what an interrupted command left: roll back a deployment its push never
        finished with, stop the processes it started and never recorded or stopped."""
        done = []
        for name in sorted(n for n, slot in record.slots.items() if slot.pending):
            self.discard_slot(name)
            done.append(f"rolled back deployment '{name}', left by a push that did not finish")
        record = self._record()
        strays = self._strays(record)
        if strays:
            processes.stop_together([ref for ref, _ in strays])
            done += [f"stopped a {what} process (pid {ref.pid}) left by an interrupted command" for ref, what in strays]
        return done

    def _restart_what_stopped(self, record: EndpointRecord) -> list[str]:
        dead = [
            slot
            for slot in record.slots.values()
            if not processes.is_running(slot.process) and (Path(slot.directory) / "package").is_dir()
        ]
        supervisor_up = processes.is_running(record.supervisor)
        if not dead and supervisor_up and processes.is_running(record.router):
            return []
        done, restarted = [], []
        if dead:
            # The supervisor may be restarting them too: stop it first so only one of us does.
            processes.stop(record.supervisor)
            record = self._record()
            for name in sorted(slot.name for slot in dead):
                slot = record.slots[name]
                if processes.is_running(slot.process):
                    continue
                try:
                    self._restart_slot(record, slot)
                except DeploymentFailed as refused:  # its files changed on disk: not loaded again
                    done.append(f"deployment '{name}' not restarted: {refused.message}")
                    continue
                restarted.append(name)
                done.append(f"restarted deployment '{name}' (its process had stopped)")
        if not processes.is_running(record.router):
            self._start_router(record)
            done.append(f"restarted the router on {record.host}:{record.port}")
        for name in restarted:
            self.wait_healthy(name)  # publishes the slot to the router once it answers
        record = self._record()
        if not processes.is_running(record.supervisor):
            self._start_supervisor(record)
            if not supervisor_up and not dead:
                done.append("restarted the supervisor")
        return done

    def _restart_slot(self, record: EndpointRecord, slot: SlotRecord) -> None:
        from tdsp_deploy.packaging.extract import verify_extracted

        directory = Path(slot.directory)
        processes.end_leftovers(slot.process, directory)
        lock = verify_extracted(directory / "package", slot.package_id)  # before the model loads again
        if not processes.port_is_free("127.0.0.1", slot.port):  # keep the port: the router knows it
            slot.port = processes.free_port()
        model_dir = azureml_model_dir(directory, lock.model.name, lock.model_version)
        python, runtime = _interpreter(slot.environment)
        slot.command = self._slot_command(lock.scoring_script_name, model_dir, slot.port, python=python)
        with interrupts.deferred():
            slot.process = self._spawn(
                slot.command,
                what="deployment",
                cwd=directory / "package" / "code",
                env=self._slot_environment(model_dir, directory, runtime),
                log_path=slot.log_path,
            )
            self.files.write(record)

    def regenerate_keys(self) -> None:
        record = self._record()
        self.files.new_keys()
        if processes.is_running(record.router):
            self._publish(record)  # the router re-reads the keys; old ones fail from now on

    def preflight(self) -> list[str]:
        from tdsp_deploy.backends.local.venvs import declared as venvs_declared
        from tdsp_deploy.environment import check_environment

        warnings = []
        if self.target.host not in LOOPBACK_HOSTS:
            warnings.append(
                f"target.host {self.target.host} lets other machines reach the endpoint (the key still "
                "guards it); use 127.0.0.1 unless that is what you want"
            )
        probe, timeout_ms = self.target.liveness_probe, self.target.request_timeout_ms
        silence = probe.period * probe.failure_threshold  # a busy worker answers no probe meanwhile
        if silence < timeout_ms / 1000:
            warnings.append(
                f"target.liveness_probe gives up on a slot after {silence} s without an answer, less "
                f"than target.request_timeout_ms ({timeout_ms} ms): a slot busy with one long request "
                "may be restarted; raise period or failure_threshold"
            )
        environment = self.manifest.environment
        if environment.isolation == "shared":
            # Slots run in this Python environment: say where it differs from the manifest's.
            return warnings + check_environment(environment)
        if venvs_declared(environment, self.manifest.model.path) is None:
            warnings.append(
                "the manifest declares no environment (environment.requirements or conda_file): the "
                "deployment runs in this CLI's Python environment, and Azure ML will need one"
            )
        return warnings  # isolated: built from the file alone at push (validate resolves nothing)

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        def told(message: str) -> None:
            self.progress(ProgressEvent(step="lock", message=message))

        return EndpointLock(self.files, timeout=timeout, on_wait=told)

    # -- deploying -----------------------------------------------------------------------
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        # Ctrl-C waits until the new revision is started and recorded, then undoes it: never a
        # process that the record does not know.
        try:
            with interrupts.deferred():
                return self._deploy_slot(slot, package)
        except KeyboardInterrupt:
            self.discard_slot(slot)
            raise

    def _deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        from tdsp_deploy.packaging import extract_package

        existing = self.files.read()
        record = existing or self._new_record()
        self.files.keys()
        try:
            self._ensure_router(record)
        except BackendError:
            if existing is None:  # nothing of the endpoint ran before: leave no record of it
                shutil.rmtree(self.files.root, ignore_errors=True)
            raise
        if not processes.is_running(record.supervisor):
            self._start_supervisor(record)

        record.revision_counter += 1
        revision = f"r{record.revision_counter}"
        directory = self.files.slot_dir(slot, revision)
        if directory.exists():
            shutil.rmtree(directory)
        self.progress(
            ProgressEvent(step="deploy", message=f"unpacking package {package.package_id[:12]} into {slot}")
        )
        lock = extract_package(package.path, directory / "package")
        built = self._environment()

        port = processes.free_port()
        model_dir = azureml_model_dir(directory, lock.model.name, lock.model_version)
        python, runtime = _interpreter(built)
        command = self._slot_command(lock.scoring_script_name, model_dir, port, python=python)
        process = self._spawn(
            command,
            what="deployment",
            cwd=directory / "package" / "code",
            env=self._slot_environment(model_dir, directory, runtime),
            log_path=directory / "server.log",
        )
        previous = record.slots.get(slot)
        stale = None
        if previous is not None and previous.previous is not None:
            # An earlier push died between deploy and finalize; its undo revision is stale.
            stale, previous.previous = previous.previous, None
        record.slots[slot] = SlotRecord(
            name=slot,
            revision=revision,
            port=port,
            process=process,
            package_id=package.package_id,
            config_id=self.config_id(package),
            model_version=lock.model_version,
            directory=str(directory),
            deployed_at=time.time(),
            traffic=previous.traffic if previous else 0,
            previous=previous,
            command=command,
            raw_http=takes_raw_requests(directory / "package" / "code" / lock.scoring_script_name),
            liveness_probe=self.target.liveness_probe.model_dump(),
            pending=True,
            environment=_environment_json(built),
        )
        self.files.write(record)
        if stale is not None:
            self._stop_revision(record, stale)
        self.progress(
            ProgressEvent(step="deploy", message=f"started {slot} (pid {process.pid}, port {port})")
        )
        return self._slot_status(record.slots[slot])

    def _environment(self):  # type: ignore[no-untyped-def]
        """The deployment's own environment, built now if needed; None to run in this one."""
        from tdsp_deploy.backends.local import venvs

        def told(message: str) -> None:
            self.progress(ProgressEvent(step="environment", message=message))

        plan = venvs.plan(self.manifest.environment, self.target.http_server, model_path=self.manifest.model.path,
                          warn=lambda w: told(f"warning: {w}"))  # fmt: skip
        if plan is None:
            return None
        return venvs.ensure(plan, self.files.home, self.progress)

    def _collect_environments(self) -> None:
        from tdsp_deploy.backends.local import venvs
        from tdsp_deploy.backends.local.state import all_endpoint_names

        in_use = set()
        for name in all_endpoint_names(self.files.home):
            try:
                record = EndpointFiles(name, self.files.home).read()
            except BackendError:
                return  # an unreadable record may use any of them: keep all
            for slot in record.revisions() if record else []:
                if slot.environment:
                    in_use.add(str(slot.environment.get("hash")))
        venvs.collect(self.files.home, in_use)

    def _slot_command(self, script_name: str, model_dir: Path, port: int, *, python: str = sys.executable) -> list[str]:
        return [
            python,
            "-m",
            "tdsp_deploy.backends.local.slot_server",
            "--entry_script",
            script_name,
            "--model_dir",
            str(model_dir),
            "--port",
            str(port),
            "--worker_count",
            str(self.target.workers),
            "--http_server",
            self.target.http_server,
        ]

    def _slot_environment(self, model_dir: Path, directory: Path, runtime: str | None = None) -> dict[str, str]:
        """What the platform gives a deployment: the manifest's variables and the platform's
        own, never the CLI's environment (which may hold SQL_PASSWORD, AZURE_* credentials...);
        only what any process needs to run on this machine (PATH, locale, HOME, TMPDIR) is
        passed on from it."""
        code = directory / "package" / "code"
        env = {
            name: value
            for name, value in os.environ.items()
            if name in SYSTEM_VARIABLES or name.startswith("LC_")
        }
        env.update(self.manifest.environment.variables)
        env.update(
            {
                "AZUREML_MODEL_DIR": str(model_dir),
                "AML_APP_ROOT": str(code),
                "PYTHONUNBUFFERED": "1",
                # the inference server's own time limit for run(); the router enforces ours
                "SCORING_TIMEOUT_MS": str(self.target.request_timeout_ms),
            }
        )
        # Its secret: it answers only requests that carry it, which only the router adds.
        env[SLOT_SECRET_ENV] = slot_secret(
            self.files.admin()["slot_key"], directory.parent.name, directory.name
        )
        if runtime:  # an environment of its own: the slot's modules, and nothing else of ours
            env["PYTHONPATH"] = runtime
        return env

    def wait_healthy(self, slot: str) -> SlotStatus:
        record = self._record()
        found = record.slots[slot]
        timeout = self.target.startup_timeout
        started = time.monotonic()
        last_told = -1.0
        while True:
            elapsed = time.monotonic() - started
            if not processes.is_running(found.process):
                code = processes.exit_code(found.process) if found.process else None
                tail = _read_tail(found.log_path, 30)
                raise DeploymentFailed(
                    f"deployment '{slot}' exited during start-up"
                    + (f" with code {code}" if code is not None else "")
                    + "; init() failed or the server could not start",
                    hint=self._missing_module_hint(found, tail) + self._failed_log_hint(found),
                    details={"log_tail": tail},
                )
            if _probe(found.port, timeout=1.0):
                break
            if elapsed > timeout:
                raise DeploymentTimeout(
                    f"deployment '{slot}' was not healthy after {timeout:g} s",
                    hint="raise target.startup_timeout if init() is slow, or read the log below; "
                    + self._failed_log_hint(found),
                    details={"log_tail": _read_tail(found.log_path, 30)},
                )
            if elapsed - last_told >= 0.5:
                self.progress(
                    ProgressEvent(
                        step="health",
                        message=f"waiting for {slot} to be healthy",
                        elapsed=elapsed,
                        timeout=timeout,
                    )
                )
                last_told = elapsed
            time.sleep(0.05)
        found.supervised = True  # it ran: from now on the supervisor restarts it if it dies
        self._publish(record)
        self.progress(
            ProgressEvent(step="health", message=f"{slot} is healthy", elapsed=time.monotonic() - started)
        )
        return self._slot_status(found)

    def _missing_module_hint(self, found: SlotRecord, tail: str) -> str:
        from tdsp_deploy.backends.local.venvs import DISTRIBUTION_OF, missing_module

        module = missing_module(tail)
        if module is None or not found.environment:
            return ""
        environment = self.manifest.environment
        declared = found.environment.get("declared_in") or environment.requirements or environment.conda_file
        package = DISTRIBUTION_OF.get(module, module)
        where = f"add '{package}' to {declared}" if declared else "declare it in environment.requirements"
        return (
            f"the script imports '{module}', which the deployment's environment lacks (it holds only "
            f"what the environment file declares, as on Azure ML): {where}; "
        )

    def _failed_log_hint(self, found: SlotRecord) -> str:
        kept = self._keep_failed_log(found)
        return (
            f"the log below shows why; the whole log is kept at {kept} "
            f"(`tdsp-deploy logs MANIFEST --deployment {found.name} --failed`)"
        )

    def finalize_slot(self, slot: str) -> None:
        record = self._record()
        found = record.slots[slot]
        if found.pending:
            found.pending = False
            self.files.write(record)
        if found.previous is not None:
            replaced, found.previous = found.previous, None
            self.files.write(record)  # first out of the record, so the supervisor lets it go
            self._stop_revision(record, replaced)
            self._collect_environments()

    def discard_slot(self, slot: str) -> None:
        record = self.files.read()
        if record is None or slot not in record.slots:
            return
        failed = record.slots[slot]
        if not failed.pending and failed.previous is None:
            return  # not a revision a push is still working on: nothing of it to undo
        if failed.previous is not None:
            restored = failed.previous
            restored.traffic = failed.traffic
            record.slots[slot] = restored
        else:
            del record.slots[slot]
        self.files.write(record)
        if processes.is_running(record.router):
            self._publish(record)
        self._keep_failed_log(failed)  # its folder goes; its log stays for `logs --failed`
        self._stop_revision(record, failed)
        self._collect_environments()

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        from tdsp_deploy.traffic import TrafficSplit, validate

        record = self._record()
        if mirror is None:
            mirror = {name: slot.mirror for name, slot in record.slots.items() if slot.mirror}
        split = TrafficSplit(traffic, mirror)
        validate(split, record.slots)
        for name, slot in record.slots.items():
            slot.traffic = traffic.get(name, 0)
            slot.mirror = mirror.get(name, 0)
        self.files.write(record)
        self._publish(record)

    def set_experiment(self, experiment_id: str) -> None:
        """Salt sticky keys with a new experiment's id (a new experiment reshuffles users)."""
        record = self._record()
        record.experiment_id = experiment_id
        self.files.write(record)
        self._publish(record)

    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        record = self._record()
        if processes.is_running(record.router):
            self._router_generation(record)  # asking for its state makes the router flush its log
        try:
            handle = open(self.files.request_log, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                if not line.strip():
                    continue
                record = json.loads(line)
                if record.get("t", 0) >= since:
                    yield record

    def delete(self, slot: str | None = None) -> None:
        record = self._record()
        if slot is None:
            from tdsp_deploy.traffic import TrafficHistory

            processes.stop(record.supervisor)  # first, or it would restart what we stop
            revisions = list(record.revisions())
            strays = [ref for ref, _ in self._strays(record)]
            processes.stop_together([record.router, *(found.process for found in revisions), *strays])
            for found in revisions:
                self._stop_revision(None, found)  # gone already: what is left of each, its folder
            shutil.rmtree(self.files.root, ignore_errors=True)
            TrafficHistory(self.kind, record.name, self.files.home).clear()
            self._collect_environments()
            return
        found = record.slots.get(slot)
        refuse_unless_deletable(record.name, slot, found, record.slots)
        del record.slots[slot]
        self.files.write(record)
        if processes.is_running(record.router):
            self._publish(record)
        self._stop_revision(record, found)
        if found.previous:
            self._stop_revision(record, found.previous)

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        from tdsp_deploy.http_caller import http_callers

        record = self._record()
        if not processes.is_running(record.router):
            raise BackendError(
                f"the router of endpoint '{record.name}' is not running",
                hint="push again to bring it back, or delete the endpoint",
            )
        headers = {"Authorization": f"Bearer {self.files.keys()['primary_key']}"}
        if slot:
            headers[PIN_HEADER] = slot
        return http_callers(
            self.scoring_uri(record), headers, timeout=self.target.request_timeout_ms / 1000 + 5
        )

    # -- reviewing -----------------------------------------------------------------------
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        slot = self.manifest.rollout.deployment or "blue"
        state = self.files.root
        lock = package.lock
        planned_model_dir = _layout_model_dir(state / "slots" / slot / "rN", lock.model.name, lock.model_version)
        plan = {
            "target": "local",
            "endpoint": self.manifest.name,
            "package": {"id": package.package_id, "archive": str(package.path)},
            "router": {
                "command": [
                    sys.executable,
                    "-m",
                    "tdsp_deploy.backends.local.router",
                    str(state / "router.json"),
                ],
                "host": self.target.host,
                "port": self.target.port or "a free port, chosen at the first push and kept",
                "auth": "Authorization: Bearer <primary or secondary key>, keys in keys.json (mode 0600)",
                "control_auth": "/-/state, /-/drain, /-/resume: the admin key in admin.json (mode 0600), "
                "never the scoring keys",
                "max_request_mb": self.target.max_request_mb,
                "request_timeout_ms": self.target.request_timeout_ms,
            },
            "slot": {
                "name": slot
                if self.manifest.rollout.deployment
                else "blue or green (the one without traffic)",
                "command": self._slot_command(package.lock.scoring_script_name, planned_model_dir, 0),
                "bind": "127.0.0.1 (loopback only; the router is the only door, and the slot answers "
                "only requests with its secret, which the router adds)",
                "workers": self.target.workers,
                "environment": {
                    **redact_variables(self.manifest.environment.variables, self.manifest.secret_values),
                    "AZUREML_MODEL_DIR": str(planned_model_dir),
                },
                "startup_timeout_s": self.target.startup_timeout,
            },
            "supervisor": {
                "command": [sys.executable, "-m", "tdsp_deploy.backends.local.supervisor", str(state)],
                "restarts": "a slot process that ends, on the same port, after 0.5 s doubling to 30 s "
                "(reset after 60 s up); its files are checked against the package lock first",
                "liveness_probe": self.target.liveness_probe.model_dump(),
            },
            "rollout": self.manifest.rollout.model_dump(),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "local-plan.json"
        path.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
        return [path]

    # -- internals -----------------------------------------------------------------------
    def _new_record(self) -> EndpointRecord:
        host = self.target.host
        port = self.target.port or processes.free_port(host)
        return EndpointRecord(name=self.manifest.name, host=host, port=port, created_at=time.time())

    def _router_config(self, record: EndpointRecord) -> RouterConfig:
        self.files.admin()  # created before the router reads it
        return RouterConfig(
            endpoint=record.name,
            host=record.host,
            port=record.port,
            keys_file=str(self.files.keys_path),
            admin_file=str(self.files.admin_path),
            slots=self._routes(record),
            generation=record.router_generation,
            request_timeout_s=self.target.request_timeout_ms / 1000,
            max_request_bytes=int(self.target.max_request_mb * 1024 * 1024),
            sticky_header=self.manifest.rollout.sticky_header,
            experiment_id=record.experiment_id,
            request_log=str(self.files.request_log),
        )

    @staticmethod
    def _routes(record: EndpointRecord) -> tuple[SlotRoute, ...]:
        """Where each slot's traffic goes: its newest revision once that answers its liveness
        probe, until then the revision it replaces (if any). A revision that answered once
        keeps its route while it is down: the supervisor brings it back on the same port."""
        routes = []
        for name, slot in sorted(record.slots.items()):
            serving = slot if slot.supervised or _probe(slot.port, timeout=1.0) else slot.previous
            if serving is not None:
                routes.append(
                    SlotRoute(
                        name, serving.port, slot.traffic, slot.mirror, serving.raw_http, serving.revision
                    )
                )
        return tuple(routes)

    def _publish(self, record: EndpointRecord) -> None:
        """Tell the router the current slots and traffic, and wait until it serves them."""
        record.router_generation += 1
        self.files.write(record)
        self._router_config(record).write(self.files.router_config_path)
        if not processes.is_running(record.router):
            self._start_router(record)
            return
        os.kill(record.router.pid, signal.SIGHUP)  # type: ignore[union-attr]
        if not processes.wait_until(
            lambda: self._router_generation(record) == record.router_generation, timeout=RELOAD_TIMEOUT_S
        ):
            raise BackendError(
                f"the router of endpoint '{record.name}' did not take the new configuration",
                hint=f"see {self.files.router_log}",
            )

    def _router_generation(self, record: EndpointRecord) -> int | None:
        from tdsp_deploy.backends.local.control import control_request

        answer = control_request(
            self.files, _client_host(record.host), record.port, "GET", "/-/state", timeout=2
        )
        if answer is None or answer[0] != 200:
            return None
        try:
            return int(json.loads(answer[1])["generation"])
        except (ValueError, KeyError, TypeError):
            return None

    def _ensure_router(self, record: EndpointRecord) -> None:
        if processes.is_running(record.router):
            return
        self.files.write(record)
        self._router_config(record).write(self.files.router_config_path)
        self._start_router(record)

    def _start_router(self, record: EndpointRecord) -> None:
        if not processes.port_is_free(record.host, record.port):
            raise BackendError(
                f"port {record.port} on {record.host} is taken by another program; the router cannot start",
                hint="free the port, or set target.port to another one",
            )
        self.progress(
            ProgressEvent(step="router", message=f"starting the router on {record.host}:{record.port}")
        )
        with interrupts.deferred():
            record.router = self._spawn(
                [sys.executable, "-m", "tdsp_deploy.backends.local.router", str(self.files.router_config_path)],
                what="router",
                cwd=self.files.root,
                env=dict(os.environ),
                log_path=self.files.router_log,
            )
            self.files.write(record)
        host = _client_host(record.host)
        if not processes.wait_until(
            lambda: _probe(record.port, host=host, timeout=0.5) or not processes.is_running(record.router),
            timeout=ROUTER_START_TIMEOUT_S,
        ) or not processes.is_running(record.router):
            processes.stop(record.router)
            raise BackendError(
                f"the router of endpoint '{record.name}' did not start",
                hint=f"see {self.files.router_log}",
                details={"log_tail": _read_tail(self.files.router_log, 20)},
            )

    def _start_supervisor(self, record: EndpointRecord) -> None:
        with interrupts.deferred():
            record.supervisor = self._spawn(
                [sys.executable, "-m", "tdsp_deploy.backends.local.supervisor", str(self.files.root)],
                what="supervisor",
                cwd=self.files.root,
                env=dict(os.environ),
                log_path=self.files.supervisor_log,
            )
            self.files.write(record)

    def _stop_revision(self, record: EndpointRecord | None, slot: SlotRecord) -> None:
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
        host = _client_host(record.host)
        answer = control_request(self.files, host, record.port, "POST", "/-/drain", body, timeout=timeout + 5)
        if answer is None:
            return None
        if answer[0] == 200:
            return True
        return False if answer[0] == 504 else None


def _this_python() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def _environment_json(built: Any) -> dict[str, str] | None:
    if built is None:
        return None
    return {**built.plan.to_json(), "python_path": str(built.python), "runtime": str(built.runtime)}


def _interpreter(environment: Any) -> tuple[str, str | None]:
    """The slot's interpreter and its PYTHONPATH: its own environment's, or this CLI's."""
    if environment is None:
        return sys.executable, None
    if isinstance(environment, dict):
        return environment["python_path"], environment["runtime"]
    return str(environment.python), str(environment.runtime)


def _layout_model_dir(directory: Path, name: str, version: str) -> Path:
    # Azure ML numbers a model's versions 1, 2, ...; a version derived from the content hash
    # is not a number, and the inference server reads a model directory whose last part is not
    # one as a folder of several models (and logs an error): such a model is version 1 here.
    return directory / "azureml-models" / name / (version if version.isdigit() else "1")


def azureml_model_dir(directory: Path, name: str, version: str) -> Path:
    """The revision's AZUREML_MODEL_DIR, laid out as in Azure ML's container
    (``.../azureml-models/<model name>/<version>/``, the model folder or file beneath): a link
    to the unpacked package's model folder, which stays where its lock verifies it."""
    model_dir = _layout_model_dir(directory, name, version)
    if not model_dir.is_symlink():
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        model_dir.symlink_to(os.path.relpath(directory / "package" / "model", model_dir.parent))
    return model_dir


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _probe(port: int, *, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
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


def _read_tail(path: Path, lines: int | None) -> str:
    try:
        with open(path, "rb") as handle:
            if lines is None:
                return handle.read().decode("utf-8", "replace")
            # Read from the end in blocks: logs can be large.
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = 8192
            data = b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
            return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
