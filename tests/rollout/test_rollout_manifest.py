"""The manifest's staged rollout: rollout.steps / strategy: linear and rollout.guardrails, their
clear errors, and what `validate` says about a target that cannot report a guardrail's metric."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import ExitCode, ManifestError
from tdsp_deploy.manifest import load_manifest
from tdsp_deploy.rollout import validation_warnings
from tests.fakes.manifest_project import project

BASE = """\
name: iris
model:
  path: model/
scoring:
  script: score.py
"""


def load(tmp_path: Path, rollout: str):  # type: ignore[no-untyped-def]
    path = project(tmp_path / "p", BASE + "rollout:\n" + textwrap.indent(textwrap.dedent(rollout), "  "))
    return load_manifest(path, targets=(LocalTarget,))


def refused(tmp_path: Path, rollout: str) -> str:
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, rollout)
    assert caught.value.exit_code == ExitCode.USAGE
    return caught.value.message


def test_steps_with_bakes_in_words_and_guardrails(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        steps: [{traffic: 5, bake: 10m}, {traffic: 25, bake: 1h30m}, {traffic: 100}]
        guardrails: {max_error_rate: 0.01, max_p95_increase_ms: 10, min_requests: 500, max_bake: 2h}
        """,
    )
    steps = loaded.manifest.rollout.staged_steps()
    assert [(s.traffic, s.bake) for s in steps] == [(5, 600.0), (25, 5400.0), (100, None)]
    guardrails = loaded.manifest.rollout.guardrails
    assert guardrails.max_bake == 7200.0 and guardrails.min_requests == 500 and guardrails.alpha == 0.05


def test_linear_strategy_expands_to_steps(tmp_path: Path) -> None:
    loaded = load(tmp_path, "strategy: linear\nstep: 30\nbake: 45s\n")
    steps = loaded.manifest.rollout.staged_steps()
    assert [(s.traffic, s.bake) for s in steps] == [(30, 45.0), (60, 45.0), (90, 45.0), (100, None)]


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ("steps: [{traffic: 25, bake: 1m}, {traffic: 5, bake: 1m}, {traffic: 100}]", "raise the traffic"),
        ("steps: [{traffic: 5, bake: 1m}, {traffic: 50, bake: 1m}]", "last step must take 100%"),
        ("steps: [{traffic: 5}, {traffic: 100}]", "needs a bake"),
        ("steps: [{traffic: 5, bake: 1m}, {traffic: 100, bake: 1m}]", "no control left"),
        ("steps: [{traffic: 5, bake: soon}, {traffic: 100}]", "'soon' is not a duration"),
        ("strategy: linear\nstep: 20\n", "needs `step` (%) and `bake`"),
        ("steps: [{traffic: 50, bake: 1m}, {traffic: 100}]\nstrategy: linear", "either steps or strategy"),
        ("traffic: 10\nsteps: [{traffic: 50, bake: 1m}, {traffic: 100}]", "either traffic or steps"),
        ("guardrails: {max_error_rate: 0.01}", "add steps"),
        ("steps: [{traffic: 5, bake: 1m}, {traffic: 100}]\nguardrails: {max_p95_ms: -1}", "must be > 0"),
        (
            "steps: [{traffic: 5, bake: 1m}, {traffic: 100}]\nguardrails: {max_eror_rate: 0.1}",
            "max_eror_rate",
        ),
    ],
)
def test_a_wrong_rollout_is_refused_with_a_located_reason(tmp_path: Path, rollout: str, message: str) -> None:
    text = refused(tmp_path, rollout)
    assert message in text
    assert "deploy.yaml:" in text and "rollout" in text


class _Target:
    def __init__(self, kind: str):
        self.kind = kind


class _Manifest:
    def __init__(self, rollout, kind: str):  # type: ignore[no-untyped-def]
        self.rollout = rollout
        self.target = _Target(kind)


def test_validate_says_when_a_target_cannot_report_a_guardrail(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        steps: [{traffic: 10, bake: 1m}, {traffic: 100}]
        guardrails: {max_error_rate: 0.01, max_mirror_disagreement: 0.1}
        """,
    )
    assert validation_warnings(loaded.manifest) == []  # the local target reports all of them
    on_sql = validation_warnings(_Manifest(loaded.manifest.rollout, "sqlserver"))
    assert on_sql == [
        "rollout.guardrails.max_mirror_disagreement: the sqlserver target cannot report this metric;"
        " push will refuse it"
    ]
    on_plugin = validation_warnings(_Manifest(loaded.manifest.rollout, "fake"))
    assert len(on_plugin) == 1 and "fake target reports no live metrics" in on_plugin[0]


def test_push_refuses_a_staged_rollout_the_target_cannot_watch(tmp_path: Path) -> None:
    from tdsp_deploy.errors import UsageError
    from tdsp_deploy.rollout import check_supported

    rollout = load(tmp_path, "steps: [{traffic: 10, bake: 1m}, {traffic: 100}]").manifest.rollout

    class Target:
        request_log = False

    from tdsp_deploy.backends.base import Capabilities

    class SqlBackend:
        kind = "sqlserver"
        capabilities = Capabilities(weighted_traffic=True)
        target = Target()

    with pytest.raises(UsageError, match="target.request_log is off"):
        check_supported(SqlBackend(), rollout)  # type: ignore[arg-type]
    Target.request_log = True
    check_supported(SqlBackend(), rollout)  # type: ignore[arg-type]
    SqlBackend.kind = "fake"
    with pytest.raises(UsageError, match="reports no live metrics"):
        check_supported(SqlBackend(), rollout)  # type: ignore[arg-type]
