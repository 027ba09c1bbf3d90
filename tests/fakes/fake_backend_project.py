"""A project for the fake backend (tests/fakes/plugins), for the pipeline's and the backend contract's
tests."""

from __future__ import annotations

from pathlib import Path

import yaml


def make_project(
    root: Path, *, target: dict | None = None, smoke: dict | None = None, **extra: object
) -> Path:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "weights.json").write_text('{"w": [1, 2, 3]}')
    (root / "score.py").write_text("def init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n")
    (root / "request.json").write_text('{"data": [[1, 2, 3]]}')
    (root / "expected.json").write_text('{"predictions": [1.0, 2.5]}')
    manifest = {
        "name": "fakey",
        "model": {"path": "model/"},
        "scoring": {"script": "score.py"},
        "target": {"kind": "fake", **(target or {})},
        "smoke_test": smoke
        if smoke is not None
        else {
            "request": "request.json",
            "expect": "expected.json",
            "latency": {"requests": 20, "concurrency": 2, "warmup": 2},
        },
        **extra,
    }
    path = root / "deploy.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path
