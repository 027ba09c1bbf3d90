"""`tdsp-deploy validate MANIFEST` with the quick check (no pydantic) answers exactly as the models
do: the same stdout, stderr and exit code, byte for byte, human and --json, for every manifest
of the repository and a sample of mutated ones; and its success path imports no pydantic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import paths
from tests.fakes.manifest_mutations import ENVIRON, RICH, corpus, mutations, random_mutations, write


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "iris"
    shutil.copytree(paths.EXAMPLES / "iris", root, ignore=shutil.ignore_patterns("__pycache__"))
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("UNSET", raising=False)
    return root


def _same_answer(cli, path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """Where the plain form (quick check first) and the parsed form (the models) differ."""
    differences = []
    for flags in ((), ("--json",)):
        quick = cli("validate", path, *flags)
        models = cli("validate", *flags, "--", path)
        if (quick.exit_code, quick.stdout, quick.stderr) != (models.exit_code, models.stdout, models.stderr):
            differences.append(f"{path} {flags}: {quick} != {models}")
    return differences


def test_the_repository_s_manifests_are_answered_alike(cli) -> None:  # type: ignore[no-untyped-def]
    assert [d for path in corpus() for d in _same_answer(cli, path)] == []


def test_mutated_manifests_are_answered_alike(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    base = yaml.safe_load((project / "deploy.yaml").read_text())
    documents = [*mutations(base, project)][::7] + [*mutations(RICH, project)][::11]
    documents += [*random_mutations(RICH, project, 40, seed=23)]
    differences, codes = [], set()
    for number, document in enumerate(documents):
        path = write(document, project / f"m{number}.yaml")
        differences += _same_answer(cli, path)
        codes.add(cli("validate", path, "--json").exit_code)
    assert differences == []
    assert codes == {0, 2}  # valid ones and refused ones, both compared


def test_a_valid_manifest_whose_files_fail_their_checks_is_answered_alike(cli, project: Path) -> None:  # type: ignore[no-untyped-def]
    """The quick check vouches for the manifest; the checks of its files then fail (no run(), a
    sample request that is not JSON): the models' path says so, byte for byte the same."""
    (project / "src" / "score.py").write_text("def init():\n    pass\n")
    (project / "sample-request.json").write_text("{not json")
    manifest = project / "deploy.yaml"
    assert _same_answer(cli, manifest) == []
    answer = cli("validate", manifest, "--json")
    assert answer.exit_code == 2 and "no top-level function 'run'" in answer.stdout


def test_validate_s_success_path_imports_no_pydantic(project: Path, tmp_path: Path) -> None:
    """The real console script, in its own process: no pydantic, no typing_extensions, no
    backend package (its pre-flight checks live beside it), and the same answer."""
    script = Path(sys.executable).with_name("tdsp-deploy")
    environ = {**os.environ, "TDSP_DEPLOY_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "validate", str(project / "deploy.yaml"), "--json"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["valid"] is True
    imported = _imported(done.stderr)
    assert "tdsp_deploy.manifest.quick" in imported and "yaml" in imported  # the table is read right
    heavy = {
        "pydantic",
        "pydantic_core",
        "typing_extensions",
        "annotated_types",
        "tdsp_deploy.backends.local.target",
        "tdsp_deploy.backends.registry",
    }
    assert imported & heavy == set()


def test_a_manifest_the_quick_check_declines_still_imports_pydantic(project: Path, tmp_path: Path) -> None:
    """...and the same check sees pydantic when the models do the work (the check can fail)."""
    manifest = project / "deploy.yaml"
    manifest.write_text(manifest.read_text().replace("traffic: 100 ", "traffic: 100.0 "))
    environ = {**os.environ, "TDSP_DEPLOY_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tdsp_deploy", "validate", str(manifest)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert {"pydantic", "tdsp_deploy.backends.local.target"} <= _imported(done.stderr)


def _imported(importtime: str) -> set[str]:
    """The modules named in ``-X importtime``'s table."""
    lines = importtime.splitlines()
    return {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
