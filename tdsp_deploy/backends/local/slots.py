"""How a deployment's process starts: in its own environment (built from what the manifest
declares) or the CLI's, laid out as Azure ML's container (container.py), with the platform's
variables and none of the CLI's, and what to tell the user when it does not come up.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.base import ProgressEvent
from tdsp_deploy.backends.local import container
from tdsp_deploy.backends.local.slot_guard import SLOT_SECRET_ENV, slot_secret
from tdsp_deploy.backends.local.slot_log import entry_script_failure, keep_failed_log, read_tail
from tdsp_deploy.backends.local.state import EndpointFiles, SlotRecord
from tdsp_deploy.errors import BackendError, DeploymentFailed

if TYPE_CHECKING:
    from collections.abc import Callable

    from tdsp_deploy.backends.base import Progress
    from tdsp_deploy.backends.local.processes import ProcessRef
    from tdsp_deploy.backends.local.target import LocalTarget
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock

# All a deployment's process takes from the CLI's environment: what running at all needs.
SYSTEM_VARIABLES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
LOG_LINES_READ = 400  # of a slot that failed to start: the server may list the model folder after the error


@dataclasses.dataclass
class SlotStarter:
    """Starts the processes of one endpoint's deployments."""

    manifest: ManifestBase
    target: LocalTarget
    files: EndpointFiles
    progress: Progress

    def start(
        self,
        spawn: Callable[..., ProcessRef],
        directory: Path,
        lock: PackageLock,
        port: int,
        environment: Any,
        log_path: Path,
    ) -> tuple[ProcessRef, list[str]]:
        """Start the revision unpacked in ``directory`` on ``port``: its process and command."""
        layout = self.lay_out(directory, lock)
        python, runtime = interpreter(environment)
        command = self.command(layout, port, python=python)
        process = spawn(
            command,
            what="deployment",
            cwd=layout.app_root,
            env=self.variables(layout, directory, runtime),
            log_path=log_path,
        )
        return process, command

    def lay_out(self, directory: Path, lock: PackageLock) -> container.Layout:
        return container.lay_out(
            directory, self._code_name(), lock.scoring_script_name, lock.model.name, lock.model_version
        )

    def planned(self, directory: Path, lock: PackageLock) -> container.Layout:
        return container.planned(
            directory, self._code_name(), lock.scoring_script_name, lock.model.name, lock.model_version
        )

    def _code_name(self) -> str:
        scoring = self.manifest.scoring
        return container.code_folder_name(scoring.code if scoring is not None else None)

    def command(self, layout: container.Layout, port: int, *, python: str = sys.executable) -> list[str]:
        # run in layout.app_root, as the inference image starts the server: the entry script
        # is named relative to it
        return [
            python,
            "-m",
            "tdsp_deploy.backends.local.slot_server",
            "--entry_script",
            layout.entry_script,
            "--model_dir",
            str(layout.model_dir),
            "--port",
            str(port),
            "--worker_count",
            str(self.target.workers),
            "--http_server",
            self.target.http_server,
        ]

    def variables(
        self, layout: container.Layout, directory: Path, runtime: str | None = None
    ) -> dict[str, str]:
        """What the platform gives a deployment: the manifest's variables and the platform's
        own, never the CLI's environment (which may hold SQL_PASSWORD, AZURE_* credentials...);
        only what any process needs to run on this machine (PATH, locale, HOME, TMPDIR) is
        passed on from it."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name in SYSTEM_VARIABLES or name.startswith("LC_")
        }
        env.update(self.manifest.environment.variables)
        env.update(
            {
                **layout.variables(),
                "PYTHONUNBUFFERED": "1",
                # the inference server's own time limit for run(); the router enforces ours
                "SCORING_TIMEOUT_MS": str(self.target.request_timeout_ms),
            }
        )
        # Where a granian worker whose init() failed leaves its exit code (slot_app.py): in
        # the revision's folder, which goes with the revision however the process ends.
        from tdsp_deploy.backends.local.slot_server import BOOT_EXIT_FILE

        env[BOOT_EXIT_FILE] = str(directory / "boot-exit")
        # Its secret: it answers only requests that carry it, which only the router adds.
        env[SLOT_SECRET_ENV] = slot_secret(
            self.files.admin()["slot_key"], directory.parent.name, directory.name
        )
        if runtime:  # an environment of its own: the slot's modules, and nothing else of ours
            env["PYTHONPATH"] = runtime
        return env

    # -- environments --------------------------------------------------------------------------
    def environment(self):  # type: ignore[no-untyped-def]
        """The deployment's own environment, built now if needed; None to run in this one."""
        from tdsp_deploy.backends.local import venvs

        def told(message: str) -> None:
            self.progress(ProgressEvent(step="environment", message=message))

        plan = venvs.plan(
            self.manifest.environment,
            self.target.http_server,
            model_path=self.manifest.model.path,
            warn=lambda w: told(f"warning: {w}"),
        )
        if plan is None:
            return None
        return venvs.ensure(plan, self.files.home, self.progress)

    def collect_environments(self) -> None:
        """Remove the environments no deployment of any endpoint uses any more."""
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

    # -- when it does not come up ----------------------------------------------------------
    def exited(self, found: SlotRecord, code: int | None) -> DeploymentFailed:
        """The error for a revision whose process ended before it answered: what stopped the
        entry script when the server says, a module its environment lacks, the kept log."""
        tail = read_tail(found.log_path, 30)
        failure = entry_script_failure(read_tail(found.log_path, LOG_LINES_READ))
        return DeploymentFailed(
            f"deployment '{found.name}' exited during start-up"
            + (f" with code {code}" if code is not None else "")
            + (f": {failure}" if failure else "; init() failed or the server could not start"),
            hint=self._missing_module_hint(found, tail)
            + ("fix the entry script; " if failure else "")
            + self.failed_log_hint(found),
            details={"log_tail": tail},
        )

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

    def failed_log_hint(self, found: SlotRecord) -> str:
        kept = keep_failed_log(self.files, found)
        return (
            f"the log below shows why; the whole log is kept at {kept} "
            f"(`tdsp-deploy logs MANIFEST --deployment {found.name} --failed`)"
        )


def this_python() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def environment_json(built: Any) -> dict[str, str] | None:
    if built is None:
        return None
    return {**built.plan.to_json(), "python_path": str(built.python), "runtime": str(built.runtime)}


def interpreter(environment: Any) -> tuple[str, str | None]:
    """The slot's interpreter and its PYTHONPATH: its own environment's, or this CLI's."""
    if environment is None:
        return sys.executable, None
    if isinstance(environment, dict):
        return environment["python_path"], environment["runtime"]
    return str(environment.python), str(environment.runtime)
