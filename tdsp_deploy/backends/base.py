"""The contract every target implements.

The push pipeline drives a backend through these methods only; it never knows which platform
it talks to. What a target can do beyond the required methods it declares in its
``capabilities`` (a ``Capabilities`` value), which callers read instead of probing the object.
Every backend is built through one factory, ``make_backend(manifest, progress, **seams)``,
where the seams are what a test hands in instead of the platform (a client, a connection, a
store, a state home); the registry calls it for every command.

A backend never imports the CLI or rich: it reports progress through the ``progress``
callback it is given (``tell``), and raises errors from ``tdsp_deploy.errors``.
Platform SDKs are imported inside the methods that need them, never at module import.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

# Answers and progress live in the core (the HTTP callers answer, packaging reports, too);
# named here for the backends.
from tdsp_deploy.answers import PIN_HEADER, Caller, InvokeResult, json_answer  # noqa: F401
from tdsp_deploy.progress import Progress, ProgressEvent, no_progress  # noqa: F401

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import BuiltPackage


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a target can do beyond the methods every backend has. The pipeline and the CLI
    ask here; a capability that is False is refused with a message before anything changes."""

    #: splits live traffic between slots by weight (else one slot takes all of it)
    weighted_traffic: bool = False
    #: copies a share of live traffic to a shadow slot (rollout.mirror, traffic --mirror)
    mirror: bool = False
    #: scores a data set in a batch job (``run_job``, the ``run`` command)
    batch_jobs: bool = False
    #: reports live per-deployment request counters (``live_counters``, ``status --watch``)
    metrics: bool = False
    #: has pre-flight refusals that ``--force`` turns into warnings (``force``)
    forceable_preflight: bool = False


@dataclasses.dataclass(frozen=True)
class SlotCounters:
    """A deployment's request counters as the endpoint reports them (totals since its front
    end started): requests, errors, and a latency histogram."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[tuple[float, int], ...] = ()  # (upper bound in seconds, cumulative count)

    def minus(self, earlier: SlotCounters) -> SlotCounters:
        """What happened between ``earlier`` and this (a restarted front end starts from zero)."""
        if self.requests < earlier.requests:
            return self
        before = dict(earlier.buckets)
        return SlotCounters(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            tuple((bound, count - before.get(bound, 0)) for bound, count in self.buckets),
        )


@dataclasses.dataclass
class SlotStatus:
    """One deployment slot (Azure ML: a deployment) of an endpoint."""

    name: str
    state: str  # "healthy" | "starting" | "unhealthy" | "stopped"
    traffic: int = 0
    mirror: int = 0  # percent of live requests copied to this slot
    model_version: str | None = None
    package_id: str | None = None
    config_id: str | None = None  # package + settings; equal config_id means nothing to redeploy
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def refuse_unless_deletable(
    endpoint: str, slot: str, found: Any, names: Iterable[str], *, noun: str = "deployment"
) -> None:
    """Refuse, as Azure ML does, to delete a slot that does not exist or still takes traffic
    (live or mirrored): its traffic must move to another slot first. ``found`` is the slot's
    status or record (anything with ``traffic`` and, where the target mirrors, ``mirror``)."""
    from tdsp_deploy.errors import UsageError

    if found is None:
        known = ", ".join(names) or "none"
        raise UsageError(f"endpoint '{endpoint}' has no {noun} '{slot}'", hint=f"{noun}s: {known}")
    mirror = getattr(found, "mirror", 0)
    if found.traffic > 0 or mirror > 0:
        raise UsageError(
            f"{noun} '{slot}' takes {found.traffic}% of the traffic"
            + (f" and {mirror}% mirrored" if mirror else ""),
            hint=f"move its traffic to another {noun} first (tdsp-deploy traffic MANIFEST other=100),"
            " or delete the whole endpoint",
        )


@dataclasses.dataclass
class EndpointStatus:
    name: str
    kind: str
    exists: bool
    scoring_uri: str | None = None
    slots: list[SlotStatus] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def traffic(self) -> dict[str, int]:
        return {slot.name: slot.traffic for slot in self.slots}

    @property
    def mirror(self) -> dict[str, int]:
        return {slot.name: slot.mirror for slot in self.slots if slot.mirror}

    def slot(self, name: str) -> SlotStatus | None:
        return next((s for s in self.slots if s.name == name), None)

    def live_slot(self) -> SlotStatus | None:
        """The slot with the most traffic (None when no slot takes traffic)."""
        live = [s for s in self.slots if s.traffic > 0]
        return max(live, key=lambda s: s.traffic) if live else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "exists": self.exists,
            "scoring_uri": self.scoring_uri,
            "traffic": self.traffic,
            "mirror": self.mirror,
            "slots": [s.to_json() for s in self.slots],
            **({"details": self.details} if self.details else {}),
        }


#: On an answer a batch target gives again from the job that already answered the same request
#: (a smoke test's repeats): its value is that job's id, and the answer's elapsed_ms that job's time.
REPLAYED_ANSWER_HEADER = "x-tdsp-answered-by-batch"


class Backend(abc.ABC):
    """A deployment target. One instance serves one manifest (one endpoint)."""

    kind: ClassVar[str]
    target_model: ClassVar[type[BaseModel]]
    #: pip extra that installs what this backend needs, for the hint when it is missing
    extra: ClassVar[str | None] = None
    #: modules that must be importable for this backend to work (checked without importing)
    requires: ClassVar[tuple[str, ...]] = ()
    #: what the target can do beyond the required methods
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: `tdsp-deploy import` for a platform whose own files describe deployments (see
    #: ``Importer``); None: the target has none
    importer: ClassVar[Importer | None] = None

    def __init__(self, manifest: ManifestBase, *, progress: Progress = no_progress):
        self.manifest = manifest
        self.target = manifest.target  # type: ignore[attr-defined]
        self.progress = progress
        #: --force on a target with capabilities.forceable_preflight: its pre-flight refusals
        #: (e.g. a library version that may not unpickle the model) become warnings
        self.force = False

    # -- making ------------------------------------------------------------------------
    @classmethod
    def make_backend(cls, manifest: ManifestBase, progress: Progress = no_progress, **seams: Any) -> Backend:
        """The backend for ``manifest``: the one factory the registry calls. ``seams`` are what
        a test hands in instead of the platform (client, connection, store, home, ...), given
        to the constructor as keyword arguments."""
        return cls(manifest, progress=progress, **seams)

    @classmethod
    def endpoints_on_this_machine(cls, *, home: Path | None = None) -> list[Backend]:
        """A backend for every endpoint this target runs on this machine, able to answer
        ``status`` and ``credentials`` without their manifests (``status --all``)."""
        return []

    def tell(self, step: str, message: str, **numbers: Any) -> None:
        """Report progress (numbers: elapsed, timeout, done, total; see ProgressEvent)."""
        self.progress(ProgressEvent(step=step, message=message, **numbers))

    def unpacked(self, package: BuiltPackage, where: str) -> Path:
        """The package extracted (and checked against its lock) once per content, under
        ``<state home>/<where>/packages/``: for targets that send the files, not the archive."""
        from tdsp_deploy import paths
        from tdsp_deploy.packaging import extract_once

        return extract_once(package.path, paths.state_home() / where / "packages" / package.package_id)

    # -- reading -----------------------------------------------------------------------
    @abc.abstractmethod
    def status(self) -> EndpointStatus:
        """What is deployed now. An endpoint that does not exist has ``exists=False``."""

    @abc.abstractmethod
    def logs(self, slot: str, *, tail: int | None = None) -> str:
        """The slot's server log (the last ``tail`` lines when given)."""

    def failed_logs(self, slot: str, *, tail: int | None = None) -> str:
        """The log of the latest deployment of ``slot`` that failed and was rolled back."""
        from tdsp_deploy.errors import UsageError

        raise UsageError(
            f"the {self.kind} target keeps no log of failed deployments",
            hint="the platform's own log history has them",
        )

    @abc.abstractmethod
    def credentials(self) -> dict[str, str]:
        """The endpoint's keys: ``primary_key`` and ``secondary_key``."""

    def repair(self) -> list[str]:
        """Bring back what should be running and is not (a killed process, a machine that
        restarted); say what was done. Push calls it first, so a push always heals."""
        return []

    def regenerate_keys(self) -> None:
        """Replace the endpoint's keys; requests with the old ones are refused from then on."""
        from tdsp_deploy.errors import UsageError

        raise UsageError(f"the {self.kind} target cannot regenerate its keys from here")

    def preflight(self) -> list[str]:
        """Warnings about the manifest on this target, found before anything is deployed
        (e.g. the environment file asks for packages the target will not have)."""
        return []

    def lock(self, *, timeout: float = 600.0) -> AbstractContextManager[object]:
        """Held while a command changes the endpoint, so that two pushes never interleave.
        Waits up to ``timeout`` seconds, then raises BackendError."""
        return contextlib.nullcontext()

    def config_id(self, package: BuiltPackage) -> str:
        """Identifies what a slot would run: the package plus the settings that shape it.
        A slot whose config_id equals this needs no redeploy."""
        settings = {
            "package": package.package_id,
            "variables": self.manifest.environment.variables,
            "target": self.target.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    # -- deploying ---------------------------------------------------------------------
    @abc.abstractmethod
    def deploy_slot(self, slot: str, package: BuiltPackage) -> SlotStatus:
        """Create the endpoint if needed and deploy ``package`` to ``slot`` with no live traffic.

        When the slot already exists, its previous revision is kept until
        ``finalize_slot`` or restored by ``discard_slot``. Returns once the slot exists;
        ``wait_healthy`` waits for it to serve.
        """

    @abc.abstractmethod
    def wait_healthy(self, slot: str) -> SlotStatus:
        """Block until the slot answers its liveness probe; raise DeploymentFailed/Timeout."""

    @abc.abstractmethod
    def finalize_slot(self, slot: str) -> None:
        """The new revision of ``slot`` passed: drop what ``deploy_slot`` kept for undo."""

    @abc.abstractmethod
    def discard_slot(self, slot: str) -> None:
        """Undo ``deploy_slot``: restore the slot's previous revision, or remove the slot."""

    @abc.abstractmethod
    def set_traffic(self, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> None:
        """Set live traffic weights (percent, summing to 100 or 0) for the named slots, and
        the mirrored share (None: leave mirroring as it is); slots not named get 0. The
        split has passed tdsp_deploy.traffic.validate. Must never drop a slot's traffic by
        accident."""

    @abc.abstractmethod
    def delete(self, slot: str | None = None) -> None:
        """Remove one slot, or the whole endpoint with everything it holds."""

    # -- calling -----------------------------------------------------------------------
    @abc.abstractmethod
    def callers(self, slot: str | None = None) -> AbstractContextManager[Iterator[Caller]]:
        """A context whose value yields fresh callers (one per latency-run worker),
        pinned to ``slot`` when given; their connections close when the context ends."""

    def invoke(self, body: bytes, *, slot: str | None = None) -> InvokeResult:
        """Send one request to the endpoint (pinned to ``slot`` when given)."""
        with self.callers(slot) as new_callers:
            return next(new_callers)(body)

    def live_counters(self, status: EndpointStatus) -> dict[str, SlotCounters]:
        """Each deployment's request counters now (capabilities.metrics), for the endpoint
        whose ``status`` was just read; BackendError when they cannot be read now."""
        from tdsp_deploy.errors import UsageError

        raise UsageError(f"the {self.kind} target reports no live request counters")

    def run_job(
        self, source: Any = None, sink: Any = None, *, local: bool = False, slot: str | None = None,
        master: str = "local[*]",
    ) -> dict[str, Any]:  # fmt: skip
        """Score the rows at ``source`` into ``sink`` in a batch job (capabilities.batch_jobs);
        ``local``: with the manifest's own model on this machine; ``slot``: only that slot."""
        from tdsp_deploy.errors import UsageError

        raise UsageError(f"the {self.kind} target runs no batch jobs")

    def job_location(self, text: str, format: str | None = None) -> Any:
        """``text`` (a path or a table, as `run --input/--output` give it) as the location
        ``run_job`` takes (capabilities.batch_jobs); ValueError saying what is wrong with it."""
        from tdsp_deploy.errors import UsageError

        raise UsageError(f"the {self.kind} target runs no batch jobs")

    def minute_metrics(self) -> Any:
        """A reader of the platform's per-minute metrics of each deployment, for a staged
        rollout: ``read(start, end)`` gives, by deployment, an object with ``requests``,
        ``errors`` and ``quantiles`` (per-minute latencies by "p95"...). For targets whose
        platform keeps the metrics (Azure Monitor), not the request log; BackendError when it
        cannot be reached."""
        from tdsp_deploy.errors import UsageError

        raise UsageError(f"the {self.kind} target keeps no per-minute metrics")

    # -- experiments ---------------------------------------------------------------------
    def set_experiment(self, experiment_id: str) -> None:  # noqa: B027 (optional hook: most targets need nothing)
        """A new A/B experiment starts: targets that hash sticky keys salt them with its id."""

    def request_records(self, since: float) -> Iterator[dict[str, Any]]:
        """The endpoint's request log from ``since`` (unix time): one dict per live or shadow
        request, as tdsp_deploy.ab.analysis reads them."""
        from tdsp_deploy.errors import UsageError

        raise UsageError(f"the {self.kind} target keeps no request log to analyze")

    # -- reviewing ---------------------------------------------------------------------
    @abc.abstractmethod
    def render(self, package: BuiltPackage, out_dir: Path) -> list[Path]:
        """Write, offline, exactly what a push would send or start; return the files."""


#: `tdsp-deploy import`: writes a manifest for each deployment the platform's own files describe
#: (Azure ML: an az ml endpoint YAML and its deployments' YAML), each checked by loading it as a
#: push would. Called as ``(env, endpoint, deployments, output, *, target, request, force,
#: workspace_settings, check)``; the Azure ML backend's ``import_command.run_import`` is one.
Importer = Callable[..., None]


@dataclasses.dataclass(frozen=True)
class TargetPlugin:
    """What an entry point may name instead of a Backend class: a kind with more than one
    backend behind it (synapse: a Spark or a SQL-pool backend, by ``target.mode``). It holds
    what the registry needs before a manifest is read, and the factory that picks the backend."""

    kind: str
    target_model: type[BaseModel]
    make_backend: Callable[..., Backend]  # (manifest, progress=no_progress, **seams)
    extra: str | None = None
    requires: tuple[str, ...] = ()
    importer: Importer | None = None

    def endpoints_on_this_machine(self, *, home: Path | None = None) -> list[Backend]:
        return []


#: What the registry holds for a kind: a Backend class (its own factory) or a TargetPlugin.
BackendFactory = type[Backend] | TargetPlugin


def check_requirements(backend: BackendFactory) -> None:
    """Fail with a one-line hint when a backend's SDK is not installed (without importing it).
    ``backend``: anything with ``kind``, ``extra`` and ``requires`` (a Backend class, a plugin)."""
    from tdsp_deploy.errors import PluginError

    missing = [module for module in backend.requires if not _installed(module)]
    if missing:
        extra = backend.extra or backend.kind
        raise PluginError(
            f"target '{backend.kind}' needs {', '.join(missing)}, which is not installed",
            hint=f"pip install 'tdsp-deploy[{extra}]'",
        )


def _installed(module: str) -> bool:
    # find_spec imports only the parent packages (namespace packages such as `azure`), never
    # the module itself
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):
        return False
