"""Manifests to hold validate's quick check (tdsp_deploy/manifest/quick.py) against the pydantic
models: the repository's own, and mutations of them made field by field from the models'
description (quick_spec.py): each field deleted, and given values at and across its limits, of
the wrong type, null, text where a number goes, numbers where text goes, paths that leave the
folder or are not there; unknown keys in every section; and seeded random combinations.

``disagreement`` says how the quick check and the loader differ on one file (None: they agree,
which includes the quick check declining)."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from pydantic import BaseModel

from tdsp_deploy.backends.local_preflight import preflight
from tdsp_deploy.backends.registry import Registry
from tdsp_deploy.errors import TdspError
from tdsp_deploy.manifest import check_manifest, load_manifest
from tdsp_deploy.manifest.quick import quick_load
from tdsp_deploy.manifest.quick_spec import MANIFEST, MODELS
from tests import paths

ENVIRON = {"SET": "7", "NAME": "from-env", "EMPTY": ""}
DELETE = object()

# Every section of a local manifest with values other than the defaults (paths of the iris copy).
RICH = {
    "name": "rich-endpoint",
    "model": {"path": "model/", "name": "iris.Model_1", "version": 3, "flavor": "onnx"},
    "scoring": {"code": "src/", "script": "score.py"},
    "environment": {
        "requirements": "requirements.txt",
        "variables": {"A_1": 1, "B": True, "C": 1.5, "D": "text", "E": "${SET}"},
        "isolation": "isolated",
        "python": "3.11",
    },
    "target": {
        "kind": "local",
        "host": "127.0.0.1",
        "port": 8080,
        "workers": 2,
        "http_server": "gunicorn",
        "startup_timeout": 30,
        "request_timeout_ms": 1000,
        "max_request_mb": 10.5,
        "liveness_probe": {"initial_delay": 1, "period": 1, "timeout": 1, "failure_threshold": 1},
    },
    "smoke_test": {
        "request": "sample-request.json",
        "expect": "expected-response.json",
        "tolerance": 0.001,
        "latency": {"requests": 5, "concurrency": 1, "warmup": 0, "p95_ms": 100, "max_error_rate": 0.5},
    },
    "rollout": {"deployment": "blue", "traffic": 0, "mirror": 10, "sticky_header": "x-user-id"},
    "ab": {
        "primary_metric": {"name": "conv", "type": "binary", "direction": "lower_is_better"},
        "alpha": 0.1,
        "power": 0.9,
        "minimum_detectable_effect": 0.01,
        "baseline": 0.5,
        "guardrails": {"max_error_rate": 0.1, "max_p95_ms": 100},
        "max_duration_hours": 2,
    },
}


def corpus() -> list[Path]:
    """Every manifest the repository holds (tests' data and examples)."""
    found = [*paths.DATA.rglob("*.yaml"), *paths.DATA.rglob("*.yml"), *paths.EXAMPLES.rglob("*.yaml")]
    return sorted(path for path in found if "conda" not in path.name)


def load_full(path: Path) -> Any:
    """What `validate` loads with the models: the target schema of the kind the file names."""
    registry = Registry.discover()
    return load_manifest(path, targets=lambda kind: registry.target_models(only=kind)[0], environ=ENVIRON)


def disagreement(path: Path) -> str | None:
    """How the quick check and the loader differ on ``path``; None when they agree."""
    return compare(path)[0]


def compare(path: Path) -> tuple[str | None, bool]:
    """How the quick check and the loader differ on ``path`` (None: they agree, which includes
    the quick check declining), and whether the quick check accepted it."""
    try:
        full = load_full(path)
    except TdspError:
        full = None
    try:
        quick = quick_load(path, ENVIRON)
    except TdspError:
        quick = None  # a file that cannot be read: the loader reports it
    if quick is None:
        return None, False
    if full is None:
        return "the quick check accepted a manifest the loader refuses", True
    for what in ("raw", "lines", "file", "base_dir", "shown_as"):
        if getattr(quick, what) != getattr(full, what):
            return f"{what} differs", True
    if (
        quick.secrets.values != full.secrets.values
        or quick.manifest.secret_values.values != full.secrets.values
    ):
        return "the secrets differ", True
    if plain(quick.manifest) != plain(full.manifest):
        return f"values differ: {plain(quick.manifest)} != {plain(full.manifest)}", True
    if _checked(quick, preflight(quick.manifest)) != _checked(full, _backend_preflight(full)):
        return "the checks of the files or the pre-flight warnings differ", True
    return None, True


def _backend_preflight(full: Any) -> list[str]:
    return Registry.discover().make_backend(full.manifest).preflight()  # type: ignore[no-any-return]


def _checked(loaded: Any, preflight_warnings: list[str]) -> Any:
    try:
        return check_manifest(loaded) + preflight_warnings
    except TdspError as exc:
        return exc.to_json()


def plain(value: Any) -> Any:
    """A validated manifest as nested dicts of (type name, value): the models and the quick
    check's records compare equal only when every field has the same value and type."""
    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SimpleNamespace):
        return {name: plain(item) for name, item in vars(value).items() if name != "secret_values"}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


# -- mutations --------------------------------------------------------------------------------
def field_paths(
    model: str = MANIFEST, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict]]:
    """Every field of the models reachable from the manifest, with its description."""
    for name, spec in MODELS[model]["fields"].items():
        yield (*prefix, name), spec
        if spec["type"] == "model" and len(prefix) < 4:
            yield from field_paths(spec["model"], (*prefix, name))


def candidates(spec: dict, project: Path) -> list[Any]:
    """Values for a field: at and across its limits, and of every wrong kind."""
    anything = [None, True, [], "text", 1.5]
    kind, limits = spec["type"], spec.get("constraints", {})
    values: list[Any] = []
    for bound in ("ge", "gt", "le", "lt"):
        if bound in limits:
            edge = limits[bound]
            values += [edge, edge - 1, edge + 1, float(edge), math.nextafter(edge, math.inf)]
            values += [math.nextafter(edge, -math.inf), str(edge)]
    if kind in ("int", "float"):
        values += [2, 2.0, 10**20, 2**53 + 1, math.inf, math.nan, "5", False, -0.0, 1e-300]
    if kind in ("str", "path"):
        values += ["${SET}", "${UNSET}", "${NAME}", "${EMPTY:-x}"]
    if kind == "str":
        values += ["ab", "abc", "a" * 32, "a" * 33, "Abc", "ab-", "a-b", "abc\n", "ééé", "3.11", "3.1.2"]
        values += ["x" * 64, "x" * 65, "", 3, 3.0, "x-user-id", "-x", "_a.b"]
    if kind == "path":
        values += [
            "model/",
            "src",
            "src/score.py",
            "score.py",
            "missing.txt",
            "../outside",
            "",
            ".",
            "a\x00b",
        ]
        values += [str(project / "requirements.txt"), "/nonexistent", str(project.parent), 5]
    if kind == "literal":
        values += [*spec["choices"], "other", 1]
    if kind == "dict":
        values += [{"OK": 1}, {"BAD-NAME": 1}, {"1A": "x"}, {"OK": None}, {"OK": [1]}, {"OK": "${UNSET}"}]
    if kind == "list":
        values += [[{"traffic": 100}], [{"traffic": 50, "bake": "1m"}, {"traffic": 100}], [{"traffic": 50}]]
    if kind == "model":
        values += [{"unknown_key": 1}]
    return values + anything + [DELETE]


def mutations(base: dict, project: Path, *, bounded_only: bool = False) -> Iterator[dict]:
    """The base document with one field changed at a time, then an unknown key in each section
    (``bounded_only``: only the numbers with bounds are changed)."""
    for path, spec in field_paths():
        bounded = set(spec.get("constraints", {})) & {"ge", "gt", "le", "lt"}
        if not _exists(base, path[:-1]) or bounded_only and not bounded:
            continue
        for value in candidates(spec, project):
            yield _with(base, path, value)
    if bounded_only:
        return
    for path, spec in field_paths():
        if spec["type"] == "model" and _exists(base, path):
            yield _with(base, (*path, "extra_key"), 1)
    yield _with(base, ("extra_key",), 1)
    for kind in ("azureml", "sqlserver", "synapse", "k8s", None, 5):
        yield _with(base, ("target", "kind"), kind)
    yield _with(base, ("target", "kind"), DELETE)
    yield _with(base, ("model", "flavor"), "mlflow")
    for rollout in (
        {"steps": [{"traffic": 50, "bake": "1m"}, {"traffic": 100}]},
        {"strategy": "linear", "step": 50, "bake": "10m"},
        {"traffic": 0, "mirror": 0},
        {"traffic": 100, "mirror": 10},
        {"guardrails": {}},
        {"step": 5},
    ):
        yield _with(base, ("rollout",), rollout)


def random_mutations(base: dict, project: Path, count: int, seed: int) -> Iterator[dict]:
    """``count`` documents with two to four changes each, the same for the same seed."""
    rng = random.Random(seed)
    fields = list(field_paths())
    for _ in range(count):
        document = base
        for _ in range(rng.randint(2, 4)):
            path, spec = rng.choice(fields)
            if _exists(document, path[:-1]):
                document = _with(document, path, rng.choice(candidates(spec, project)))
        yield document


def write(document: Any, path: Path) -> Path:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(document, Dumper=dumper, sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    return path


def _exists(document: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return False
        document = document[key]
    return isinstance(document, dict)


def _with(document: dict, path: tuple[str, ...], value: Any) -> dict:
    changed = copy.deepcopy(document)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return changed
