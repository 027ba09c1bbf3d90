"""validate's quick check (tdsp_deploy/manifest/quick.py) against the pydantic models.

For every manifest in the repository and for mutations of two complete ones (each field at
and across its limits, of every wrong kind, deleted; unknown keys; other targets; seeded
random combinations), the quick check either declines or returns what the loader returns,
field for field, with the same checks of the files and the same pre-flight warnings. It never
accepts a manifest the loader refuses; a quick check with a planted bug is caught."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tdsp_deploy.manifest import quick
from tdsp_deploy.manifest.quick_spec_build import quick_spec_text
from tests import paths
from tests.fakes.manifest_mutations import (
    RICH,
    compare,
    corpus,
    disagreement,
    load_full,
    mutations,
    random_mutations,
    write,
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the iris example: the mutated manifests are written beside its files."""
    root = tmp_path_factory.mktemp("quick") / "iris"
    shutil.copytree(paths.EXAMPLES / "iris", root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _compare(documents: Iterable[Any], project: Path) -> tuple[list[str], int, int]:
    """(disagreements, manifests the quick check accepted, manifests compared)."""
    found, accepted, total = [], 0, 0
    path = project / "mutated.yaml"
    seen = set()
    for document in documents:
        key = repr(document)
        if key in seen:
            continue
        seen.add(key)
        write(document, path)
        total += 1
        problem, vouched = compare(path)
        accepted += vouched
        if problem:
            found.append(f"{problem}\n{path.read_text()}")
    return found, accepted, total


def test_every_manifest_of_the_repository_gets_the_same_answer() -> None:
    files = corpus()
    assert len(files) >= 20
    assert [str(path) for path in files if disagreement(path)] == []
    # the valid local manifests among them are vouched for by the quick check, not all left to pydantic
    assert quick.quick_load(paths.EXAMPLES / "iris" / "deploy.yaml") is not None
    assert quick.quick_load(paths.DATA / "manifests" / "full.yaml") is not None
    assert quick.quick_load(paths.DATA / "manifests" / "minimal.yaml") is not None


@pytest.mark.parametrize("base", ["iris", "rich"])
def test_each_field_mutated_gets_the_same_answer(project: Path, base: str) -> None:
    document = yaml.safe_load((project / "deploy.yaml").read_text()) if base == "iris" else RICH
    assert load_full(write(document, project / "base.yaml"))  # the base itself is valid
    found, accepted, total = _compare(mutations(document, project), project)
    assert found == [], f"{len(found)} of {total} differ; the first:\n{found[0]}"
    assert total > 500 and accepted > total // 5, (accepted, total)  # it vouches for many, not none


def test_random_combinations_get_the_same_answer(project: Path) -> None:
    base = yaml.safe_load((project / "deploy.yaml").read_text())
    documents = [
        *random_mutations(base, project, 150, seed=21),
        *random_mutations(RICH, project, 150, seed=22),
    ]
    found, accepted, total = _compare(documents, project)
    assert found == [], f"{len(found)} of {total} differ; the first:\n{found[0]}"
    assert accepted > 0


def test_a_quick_check_that_skips_a_limit_is_caught(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: with the numeric limits left out of the quick check, it accepts
    manifests the loader refuses, and the mutations find them."""
    checked_number = quick._number

    def no_limits(value: Any, kind: str, constraints: dict[str, Any]) -> Any:
        return checked_number(value, kind, {})

    monkeypatch.setattr(quick, "_number", no_limits)
    found, _, _ = _compare(mutations(RICH, project, bounded_only=True), project)
    assert found and all("accepted a manifest the loader refuses" in problem for problem in found)


def test_a_quick_check_with_a_wrong_default_is_caught(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = quick.MODELS["LocalTarget"]["fields"]["workers"]
    monkeypatch.setitem(target, "default", 2)
    found, _, _ = _compare([yaml.safe_load((project / "deploy.yaml").read_text())], project)
    assert found and found[0].startswith("values differ")


def test_a_validator_the_quick_check_does_not_know_makes_it_decline(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model validator whose source changed (another digest) is not run as the old one."""
    validators = quick.MODELS["EnvironmentSection"]["model_validators"]
    monkeypatch.setitem(validators, "_one_spec", {"mode": "after", "source": "changed00000"})
    assert quick.quick_load(project / "deploy.yaml") is None


def test_every_validator_of_the_models_is_one_the_quick_check_knows() -> None:
    """When a model gains a validator (or one changes), quick_spec.py changes with it (the
    reference test fails until it is regenerated) and this fails until quick.py knows it."""
    field_functions, field_validators, model_validators = set(), set(), set()
    for name, model in quick.MODELS.items():
        for key, validator in model["field_validators"].items():
            field_validators.add((name, key, validator["source"]))
        for key, validator in model["model_validators"].items():
            model_validators.add((name, key, validator["source"]))
    for spec in _field_specs():
        field_functions.update(spec.get("before", []) + spec.get("after", []))
    # the duration parser belongs to the staged rollouts, which the quick check declines
    unknown = {f for f in field_functions if "traffic_sections:_seconds#" not in f} - set(
        quick._FIELD_FUNCTIONS
    )
    assert unknown == set()
    staged = {("RolloutStep",), ("RolloutGuardrails",)}
    assert {v for v in field_validators if (v[0],) not in staged} == set(quick._FIELD_VALIDATORS)
    assert model_validators == set(quick._MODEL_VALIDATORS)


def test_the_committed_spec_is_what_the_models_give() -> None:
    from tdsp_deploy.backends.local.target import LocalTarget

    committed = (paths.ROOT / "tdsp_deploy" / "manifest" / "quick_spec.py").read_text()
    assert committed == quick_spec_text(LocalTarget), "regenerate: python -m tdsp_deploy.manifest.reference"


def _field_specs() -> Iterable[dict[str, Any]]:
    def walk(spec: dict[str, Any]) -> Iterable[dict[str, Any]]:
        yield spec
        for inner in ("key", "value", "item"):
            if inner in spec:
                yield from walk(spec[inner])

    for model in quick.MODELS.values():
        for spec in model["fields"].values():
            yield from walk(spec)
