"""An Azure ML project (model, scoring script, manifest, expected answer) and the edits the azureml and
rollout tests make to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

NAME = "irisaz"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
EXPECTED = {"predictions": [0, 1, 2]}


# -- the project and the push -----------------------------------------------------------------
def make_project(root: Path, *, target: dict | None = None, rollout: dict | None = None) -> Path:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "weights.json").write_text('{"w": [1, 2, 3]}')
    (root / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n")
    (root / "requirements.txt").write_text("numpy\nazureml-inference-server-http\n")
    (root / "request.json").write_text('{"data": [[5.1, 3.5, 1.4, 0.2]]}')
    (root / "expected.json").write_text(json.dumps(EXPECTED))
    manifest = {
        "name": NAME,
        "model": {"path": "model/", "name": "iris-classifier"},
        "scoring": {"script": "score.py"},
        "environment": {
            "requirements": "requirements.txt",
            "image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
        },
        "target": {
            "kind": "azureml",
            "subscription_id": SUBSCRIPTION,
            "resource_group": "rg-tdsp",
            "workspace": "ws-tdsp",
            "request_settings": {"max_concurrent_requests_per_instance": 2},
            "timeout": 30,
            **(target or {}),
        },
        "smoke_test": {
            "request": "request.json",
            "expect": "expected.json",
            "latency": {"requests": 20, "concurrency": 2, "warmup": 2},
        },
        "rollout": rollout or {},
    }
    path = root / "deploy.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def edit(manifest: Path, **sections: Any) -> None:
    doc = yaml.safe_load(manifest.read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    manifest.write_text(yaml.safe_dump(doc))


def new_model(manifest: Path, content: str) -> None:
    (manifest.parent / "model" / "weights.json").write_text(content)
