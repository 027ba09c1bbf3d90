"""What a command costs before it does anything: its manifest is read once, the backends are
discovered once (from the entry-point cache: a warm start reads no distribution's metadata),
and `validate` and `--help` import only what they use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tdsp_deploy import manifest
from tdsp_deploy.backends.registry import Registry
from tdsp_deploy.errors import ExitCode
from tdsp_deploy.manifest import quick


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often a command reads a manifest (with the models, or with validate's quick check)
    and discovers the registry."""
    calls = {"load_manifest": 0, "quick_load": 0, "discover": 0}
    load, discover = manifest.load_manifest, Registry.discover.__func__  # type: ignore[attr-defined]
    quick_load = quick.quick_load

    def counting_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["load_manifest"] += 1
        return load(*args, **kwargs)

    def counting_quick_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["quick_load"] += 1
        return quick_load(*args, **kwargs)

    def counting_discover(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["discover"] += 1
        return discover(cls, *args, **kwargs)

    monkeypatch.setattr(manifest, "load_manifest", counting_load)
    monkeypatch.setattr(quick, "quick_load", counting_quick_load)
    monkeypatch.setattr(Registry, "discover", classmethod(counting_discover))
    return calls


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [
        (["validate", "--"], 0),  # parsed: validated by the models
        (["status"], ExitCode.BACKEND),  # not deployed: the backend was built and asked
        (["traffic"], ExitCode.BACKEND),
        (["logs"], ExitCode.BACKEND),
        (["ab", "status"], ExitCode.BACKEND),
        (["rollout", "status"], ExitCode.BACKEND),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(int(value)),
)
def test_a_command_reads_its_manifest_once_and_discovers_the_backends_once(
    cli, iris: Path, counted: dict[str, int], command: list[str], exit_code: int
) -> None:
    arguments = [*command, iris, "--json"] if command[-1] != "--" else [*command[:-1], "--json", "--", iris]
    result = cli(*arguments)
    assert result.exit_code == exit_code, result.stderr
    assert counted == {"load_manifest": 1, "quick_load": 0, "discover": 1}


def test_plain_validate_reads_its_manifest_once_without_the_models_or_the_registry(
    cli, iris: Path, counted: dict[str, int]
) -> None:
    result = cli("validate", iris, "--json")
    assert result.exit_code == 0, result.stderr
    assert counted == {"load_manifest": 0, "quick_load": 1, "discover": 0}


def test_a_manifest_the_quick_check_declines_is_read_by_the_models_once_more(
    cli, iris: Path, counted: dict[str, int]
) -> None:
    # a whole number written as 100.0: pydantic takes it, the quick check leaves it to pydantic
    iris.write_text(iris.read_text().replace("traffic: 100 ", "traffic: 100.0 "))
    result = cli("validate", iris, "--json")
    assert result.exit_code == 0, result.stderr
    assert counted == {"load_manifest": 1, "quick_load": 1, "discover": 1}


PROBE = textwrap.dedent(
    """
    import importlib.metadata, json, sys
    scans = []
    for name in ("entry_points", "distributions"):
        real = getattr(importlib.metadata, name)
        def counting(*args, _real=real, _name=name, **kwargs):
            scans.append(_name)
            return _real(*args, **kwargs)
        setattr(importlib.metadata, name, counting)
    from tdsp_deploy.cli import main
    code = main(sys.argv[1:])
    heavy = ["packaging.requirements", "tdsp_deploy.rollout", "http.client", "ssl", "rich.markdown",
             "pydantic", "yaml", "tdsp_deploy.manifest", "tdsp_deploy.backends", "typer", "click",
             "psutil", "tdsp_deploy.cli.commands"]
    print(json.dumps({"code": code, "scans": scans, "loaded": [m for m in heavy if m in sys.modules]}),
          file=sys.stderr)
    """
)


def _start(home: Path, *args: object) -> dict:  # type: ignore[type-arg]
    import json

    environment = {**os.environ, "TDSP_DEPLOY_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    return json.loads(done.stderr.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_warm_start_reads_no_distribution_metadata(iris: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _start(home, "validate", iris)
    assert first["code"] == 0 and first["scans"]  # a cold start reads the environment once...
    again = _start(home, "validate", iris)
    assert again["code"] == 0 and again["scans"] == []  # ...and the next ones read the cache


def test_validate_and_help_import_only_what_they_use(iris: Path, tmp_path: Path) -> None:
    validate = _start(tmp_path, "validate", iris)
    assert validate["code"] == 0
    # a manifest without rollout.steps needs no rollout package; the local backend checks an
    # environment file only when its slots share this environment; the plain form of validate
    # needs no command-line parser, and no process is looked at; a manifest the quick check
    # vouches for needs neither pydantic nor the backend's package (only its pre-flight checks)
    assert validate["loaded"] == ["yaml", "tdsp_deploy.manifest", "tdsp_deploy.backends"]
    helped = _start(tmp_path, "--help")
    assert helped["code"] == 0 and helped["loaded"] == ["typer", "tdsp_deploy.cli.commands"]


def _problems(folder: Path) -> list[Path]:
    """Manifests that validate fails on, each in its own way."""
    (folder / "model.pkl").write_bytes(b"model")
    (folder / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    cases = {
        "typo.yaml": "name: typo\nmodle: {path: model.pkl}\nscoring: {script: score.py}\n",
        "not-yaml.yaml": "name: [unclosed\n",
        "no-kind.yaml": "name: k8s\nmodel: {path: model.pkl}\nscoring: {script: score.py}\n"
        "target: {kind: k8s}\n",
        "missing-file.yaml": "name: gone\nmodel: {path: gone.pkl}\nscoring: {script: score.py}\n",
    }
    for name, text in cases.items():
        (folder / name).write_text(text)
    return [folder / name for name in cases] + [folder / "absent.yaml"]


@pytest.mark.parametrize("flags", [(), ("--json",), ("--debug", "--json")], ids=" ".join)
def test_validate_answers_alike_with_and_without_the_parser(
    cli, iris: Path, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    """`validate MANIFEST` runs without typer; `validate -- MANIFEST` is parsed by it: the same
    answer, exit code and streams for a valid manifest and for each kind of broken one."""
    for path in [iris, *_problems(tmp_path)]:
        plain = cli("validate", path, *flags)
        parsed = cli("validate", *flags, "--", path)
        assert (plain.exit_code, plain.stdout, plain.stderr) == (
            parsed.exit_code, parsed.stdout, parsed.stderr
        ), path  # fmt: skip
        assert plain.exit_code == (0 if path == iris else ExitCode.USAGE), plain.stderr


def test_a_shell_asking_for_completions_is_answered_by_the_parser(iris: Path) -> None:
    """Completion runs the program with the words in the environment; whatever its arguments,
    the answer is completions, not a validation."""
    environ = {
        **os.environ,
        "COMP_WORDS": "tdsp-deploy validate --js",
        "COMP_CWORD": "2",
        "_TDSP_DEPLOY_COMPLETE": "complete_bash",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tdsp_deploy", "validate", str(iris)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--json"] and "is valid" not in done.stderr
