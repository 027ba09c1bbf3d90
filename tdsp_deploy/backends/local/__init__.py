"""The embedded local target: an Azure ML managed online endpoint emulated on loopback.

Each slot is an ``azureml-inference-server-http`` process serving the user's unchanged
score.py on a loopback port; a router process on the endpoint port checks keys and routes.
Processes outlive the CLI; their state lives under ``$TDSP_DEPLOY_HOME`` (state.py).

This module is the backend contract; the work is done beside it: slots.py starts a
deployment's process (its environment, container layout and variables), lifecycle.py the
router, the supervisor and a revision's end, status.py and plan.py report and render.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy import interrupts
from tdsp_deploy.backends.base import (
    PIN_HEADER,
    Backend,
    Caller,
    Capabilities,
    EndpointStatus,
    ProgressEvent,
    SlotCounters,
    SlotStatus,
    no_progress,
    refuse_unless_deletable,
)
from tdsp_deploy.backends.local import processes
from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import BackendError, DeploymentTimeout, EndpointNotFound, UsageError
from tdsp_deploy.locks import FileLock

if TYPE_CHECKING:
    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.local.lifecycle import EndpointProcesses
    from tdsp_deploy.backends.local.slots import SlotStarter
    from tdsp_deploy.backends.local.state import EndpointFiles, EndpointRecord
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage


class LocalBackend(Backend):
    kind = "local"
    target_model = LocalTarget
    capabilities = Capabilities(weighted_traffic=True, mirror=True, metrics=True)

    def __init__(self, manifest: ManifestBase, *, progress: Progress = no_progress, home: Path | None = None):
        super().__init__(manifest, progress=progress)
        self.target: LocalTarget
        self.home = home

    # Made on first use: `validate` builds a backend for its pre-flight checks only, and the
    # modules behind these (processes, routes, state files) would be most of its start.
    @functools.cached_property
    def files(self) -> EndpointFiles:
        from tdsp_deploy.backends.local.state import EndpointFiles

        return EndpointFiles(self.manifest.name, self.home)

    @functools.cached_property
    def lifecycle(self) -> EndpointProcesses:
        from tdsp_deploy.backends.local.lifecycle import EndpointProcesses

        return EndpointProcesses(self.files, self.manifest, self.progress)

    @functools.cached_property
    def starter(self) -> SlotStarter:
        from tdsp_deploy.backends.local.slots import SlotStarter

        return SlotStarter(self.manifest, self.target, self.files, self.progress)

    @classmethod
    def endpoints_on_this_machine(cls, *, home: Path | None = None) -> list[Backend]:
        """Every endpoint deployed here. status() and credentials() read only the endpoint's
        name and its state files, so no manifest is needed to look at what runs."""
        from types import SimpleNamespace

        from tdsp_deploy.backends.local.state import all_endpoint_names

        return [
            cls(SimpleNamespace(name=name, target=LocalTarget()), home=home)  # type: ignore[arg-type]
            for name in all_endpoint_names(home)
        ]

    def live_counters(self, status: EndpointStatus) -> dict[str, SlotCounters]:
        """The router's counters (GET /metrics, see counters.py)."""
        from tdsp_deploy.backends.local.counters import read_counters

        return read_counters(status, self.credentials()["primary_key"])

    # -- reading -------------------------------------------------------------------------
    def deployed_record(self) -> EndpointRecord:
        record = self.files.read()
        if record is None:
            raise EndpointNotFound(
                f"endpoint '{self.manifest.name}' is not deployed on the local target",
                hint="deploy it with `tdsp-deploy push MANIFEST`",
            )
        return record

    def scoring_uri(self, record: EndpointRecord) -> str:
        from tdsp_deploy.backends.local.status import scoring_uri

        return scoring_uri(record)

    def status(self) -> EndpointStatus:
        record = self.files.read()
        if record is None:
            return EndpointStatus(name=self.manifest.name, kind=self.kind, exists=False)
        from tdsp_deploy.backends.local.status import endpoint_status

        return endpoint_status(
            self.kind, self.files, record, [ref for ref, _ in self.lifecycle.strays(record)]
        )

    def logs(self, slot: str, *, tail: int | None = None) -> str:
        record = self.deployed_record()
        found = record.slots.get(slot)
        if found is None:
            raise UsageError(
                f"endpoint '{record.name}' has no deployment '{slot}'",
                hint=f"deployments: {', '.join(record.slots) or 'none'}",
            )
        from tdsp_deploy.backends.local.slot_log import read_tail

        return read_tail(found.log_path, tail)

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
        from tdsp_deploy.backends.local.slot_log import read_tail

        return read_tail(path, tail)

    def credentials(self) -> dict[str, str]:
        self.deployed_record()
        return self.files.keys()

    def repair(self) -> list[str]:
        record = self.files.read()
        if record is None:
            return []
        from tdsp_deploy.backends.local import repair

        finished = repair.finish_interrupted(self, record)
        if finished:
            record = self.deployed_record()
        return finished + repair.restart_what_stopped(self, record)

    def regenerate_keys(self) -> None:
        record = self.deployed_record()
        self.files.new_keys()
        if processes.is_running(record.router):
            self.lifecycle.publish(record)  # the router re-reads the keys; old ones fail from now on

    def preflight(self) -> list[str]:
        from tdsp_deploy.backends.local_preflight import preflight

        return preflight(self.manifest)

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        def told(message: str) -> None:
            self.progress(ProgressEvent(step="lock", message=message))

        return FileLock(self.files.lock_path, self.manifest.name, timeout=timeout, on_wait=told)

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
        from tdsp_deploy.backends.local.entry_script import takes_raw_requests
        from tdsp_deploy.backends.local.slots import environment_json
        from tdsp_deploy.backends.local.state import SlotRecord
        from tdsp_deploy.backends.local.status import slot_status
        from tdsp_deploy.packaging import extract_package

        existing = self.files.read()
        record = existing or self._new_record()
        self.files.keys()
        try:
            self.lifecycle.ensure_router(record)
        except BackendError:
            if existing is None:  # nothing of the endpoint ran before: leave no record of it
                shutil.rmtree(self.files.root, ignore_errors=True)
            raise
        if not processes.is_running(record.supervisor):
            self.lifecycle.start_supervisor(record)

        record.revision_counter += 1
        revision = f"r{record.revision_counter}"
        directory = self.files.slot_dir(slot, revision)
        if directory.exists():
            shutil.rmtree(directory)
        self.progress(
            ProgressEvent(step="deploy", message=f"unpacking package {package.package_id[:12]} into {slot}")
        )
        lock = extract_package(package.path, directory / "package")
        built = self.starter.environment()

        port = processes.free_port()
        process, command = self.starter.start(
            self.lifecycle.spawn, directory, lock, port, built, directory / "server.log"
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
            environment=environment_json(built),
        )
        self.files.write(record)
        if stale is not None:
            self.lifecycle.stop_revision(record, stale)
        self.progress(
            ProgressEvent(step="deploy", message=f"started {slot} (pid {process.pid}, port {port})")
        )
        return slot_status(record.slots[slot])

    def wait_healthy(self, slot: str) -> SlotStatus:
        from tdsp_deploy.backends.local.lifecycle import probe
        from tdsp_deploy.backends.local.slot_log import read_tail
        from tdsp_deploy.backends.local.status import slot_status

        record = self.deployed_record()
        found = record.slots[slot]
        timeout = self.target.startup_timeout
        started = time.monotonic()
        last_told = -1.0
        while True:
            elapsed = time.monotonic() - started
            if not processes.is_running(found.process):
                raise self.starter.exited(
                    found, processes.exit_code(found.process) if found.process else None
                )
            if probe(found.port, timeout=1.0):
                break
            if elapsed > timeout:
                raise DeploymentTimeout(
                    f"deployment '{slot}' was not healthy after {timeout:g} s",
                    hint="raise target.startup_timeout if init() is slow, or read the log below; "
                    + self.starter.failed_log_hint(found),
                    details={"log_tail": read_tail(found.log_path, 30)},
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
        self.lifecycle.publish(record)
        self.progress(
            ProgressEvent(step="health", message=f"{slot} is healthy", elapsed=time.monotonic() - started)
        )
        return slot_status(found)

    def finalize_slot(self, slot: str) -> None:
        record = self.deployed_record()
        found = record.slots[slot]
        if found.pending:
            found.pending = False
            self.files.write(record)
        if found.previous is not None:
            replaced, found.previous = found.previous, None
            self.files.write(record)  # first out of the record, so the supervisor lets it go
            self.lifecycle.stop_revision(record, replaced)
            self.starter.collect_environments()

    def discard_slot(self, slot: str) -> None:
        from tdsp_deploy.backends.local.slot_log import keep_failed_log

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
            self.lifecycle.publish(record)
        keep_failed_log(self.files, failed)  # its folder goes; its log stays for `logs --failed`
        self.lifecycle.stop_revision(record, failed)
        self.starter.collect_environments()

    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        from tdsp_deploy.traffic import TrafficSplit, validate

        record = self.deployed_record()
        if mirror is None:
            mirror = {name: slot.mirror for name, slot in record.slots.items() if slot.mirror}
        split = TrafficSplit(traffic, mirror)
        validate(split, record.slots)
        for name, slot in record.slots.items():
            slot.traffic = traffic.get(name, 0)
            slot.mirror = mirror.get(name, 0)
        self.files.write(record)
        self.lifecycle.publish(record)

    def set_experiment(self, experiment_id: str) -> None:
        """Salt sticky keys with a new experiment's id (a new experiment reshuffles users)."""
        record = self.deployed_record()
        record.experiment_id = experiment_id
        self.files.write(record)
        self.lifecycle.publish(record)

    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        record = self.deployed_record()
        if processes.is_running(record.router):
            self.lifecycle.router_generation(record)  # asking for its state makes the router flush its log
        from tdsp_deploy.backends.local.request_log import records_since

        try:
            handle = open(self.files.request_log, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return
        with handle:
            yield from records_since(handle, since)

    def delete(self, slot: str | None = None) -> None:
        record = self.deployed_record()
        if slot is None:
            from tdsp_deploy.traffic import TrafficHistory

            processes.stop(record.supervisor)  # first, or it would restart what we stop
            revisions = list(record.revisions())
            strays = [ref for ref, _ in self.lifecycle.strays(record)]
            processes.stop_together([record.router, *(found.process for found in revisions), *strays])
            for found in revisions:
                self.lifecycle.stop_revision(None, found)  # gone already: what is left of each, its folder
            shutil.rmtree(self.files.root, ignore_errors=True)
            TrafficHistory(self.kind, record.name, self.files.home).clear()
            self.starter.collect_environments()
            return
        found = record.slots.get(slot)
        refuse_unless_deletable(record.name, slot, found, record.slots)
        del record.slots[slot]
        self.files.write(record)
        if processes.is_running(record.router):
            self.lifecycle.publish(record)
        self.lifecycle.stop_revision(record, found)
        if found.previous:
            self.lifecycle.stop_revision(record, found.previous)

    # -- calling -------------------------------------------------------------------------
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        from tdsp_deploy.http_caller import http_callers

        record = self.deployed_record()
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
        from tdsp_deploy.backends.local.plan import process_plan, write_plan

        return [write_plan(process_plan(self.starter, self.files.root, package), out_dir)]

    # -- internals -----------------------------------------------------------------------
    def _new_record(self) -> EndpointRecord:
        from tdsp_deploy.backends.local.state import EndpointRecord

        host = self.target.host
        port = self.target.port or processes.free_port(host)
        return EndpointRecord(name=self.manifest.name, host=host, port=port, created_at=time.time())
