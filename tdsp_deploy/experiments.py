"""A/B experiments an endpoint has run: which slots, since when, how they ended.

Kept as one JSON file per endpoint under the state home (per target kind), so that any
target that splits traffic can run experiments, and `ab status` / `ab analyze` find the
running one without being told.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

from tdsp_deploy import paths
from tdsp_deploy.errors import UsageError
from tdsp_deploy.json_files import write_json_atomic

# what the analysis reads of an experiment: who is compared, how, and over which time
_ANALYZED = ("id", "endpoint", "control", "treatment", "mode", "share", "started_at", "ended_at")


@dataclasses.dataclass
class Experiment:
    id: str
    endpoint: str
    control: str
    treatment: str
    mode: str  # "split" | "mirror"
    share: int  # percent of live traffic the treatment takes (split) or is copied (mirror)
    started_at: float
    spec: dict[str, Any]
    required_per_variant: int | None = None
    ended_at: float | None = None
    decision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def analysis_input(self) -> dict[str, Any]:
        """What tdsp_deploy.ab.analysis.analyze takes as ``experiment``: these fields, in order."""
        return {key: value for key, value in self.to_json().items() if key in _ANALYZED}


class ExperimentStore:
    def __init__(self, kind: str, endpoint: str, home: Path | None = None):
        self.endpoint = endpoint
        self.path = (home or paths.state_home()) / "experiments" / kind / f"{endpoint}.json"

    def all(self) -> list[Experiment]:
        try:
            docs = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        return [Experiment(**doc) for doc in docs]

    def _save(self, experiments: list[Experiment]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, [e.to_json() for e in experiments])

    def running(self) -> Experiment | None:
        return next((e for e in reversed(self.all()) if e.ended_at is None), None)

    def latest(self) -> Experiment:
        """The running experiment, else the last one; UsageError when there is none."""
        experiments = self.all()
        if not experiments:
            raise UsageError(
                f"endpoint '{self.endpoint}' has no A/B experiment",
                hint="start one with `tdsp-deploy ab start MANIFEST --control blue --treatment green`",
            )
        return self.running() or experiments[-1]

    def start(self, **fields: Any) -> Experiment:
        running = self.running()
        if running is not None:
            raise UsageError(
                f"experiment {running.id} ({running.control} vs {running.treatment}) is still running",
                hint="end it first: `tdsp-deploy ab promote` or `tdsp-deploy ab rollback`",
            )
        experiment = Experiment(
            id=uuid.uuid4().hex[:12], endpoint=self.endpoint, started_at=time.time(), **fields
        )
        self._save([*self.all(), experiment])
        return experiment

    def end(self, experiment: Experiment, decision: str) -> Experiment:
        experiments = self.all()
        for stored in experiments:
            if stored.id == experiment.id:
                stored.ended_at = time.time()
                stored.decision = decision
                experiment = stored
        self._save(experiments)
        return experiment
