"""Simulated request records and outcomes of an A/B experiment, and the analysis run over them, for the
A/B analysis and report tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from tdsp_deploy.ab.analysis import analyze

STARTED = 1_700_000_000.0


def experiment(mode: str = "split", ended_at: float | None = None) -> dict[str, Any]:
    return {
        "id": "e1",
        "endpoint": "iris",
        "control": "blue",
        "treatment": "green",
        "mode": mode,
        "started_at": STARTED,
        "ended_at": ended_at,
    }


def spec(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "primary_metric": {"name": "conversion", "type": "binary", "direction": "higher_is_better"},
        "alpha": 0.05,
        "power": 0.8,
        "minimum_detectable_effect": 0.02,
        "baseline": 0.10,
        "guardrails": {"max_error_rate": None, "max_p95_ms": None, "max_error_rate_increase": None},
        "max_duration_hours": None,
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def traffic(
    n: int,
    *,
    rate: tuple[float, float] = (0.10, 0.10),
    error_rate: tuple[float, float] = (0.005, 0.005),
    latency: tuple[float, float] = (40.0, 40.0),
    outcome: str = "binary",
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """``n`` live requests per variant, alternating, one every 0.1 s, with outcomes drawn at
    the given rates (binary) or around them as means (continuous, sd 1)."""
    rng = np.random.default_rng(seed)
    records, outcomes = [], {}
    for i in range(2 * n):
        arm = i % 2
        request_id = f"req-{i}"
        records.append(
            {
                "kind": "live",
                "t": STARTED + 1 + i * 0.1,
                "id": request_id,
                "deployment": ("blue", "green")[arm],
                "status": 500 if rng.random() < error_rate[arm] else 200,
                "latency_ms": float(rng.exponential(latency[arm])),
                "pinned": False,
            }
        )
        if outcome == "binary":
            outcomes[request_id] = float(rng.random() < rate[arm])
        else:
            outcomes[request_id] = float(rng.normal(rate[arm], 1.0))
    return records, outcomes


def run(
    records: list[dict[str, Any]],
    outcomes: dict[str, float] | None,
    *,
    now: float | None = None,
    mode: str = "split",
    ended_at: float | None = None,
    **spec_changes: Any,
) -> dict[str, Any]:
    return analyze(
        records,
        experiment(mode, ended_at),
        spec(**spec_changes),
        outcomes,
        now=now if now is not None else STARTED + 3600,
    )
