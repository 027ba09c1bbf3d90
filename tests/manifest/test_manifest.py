"""The manifest: loading, located errors, interpolation, and the checks of the files it names.

Bad manifests that read best as files live in tests/data/manifests/ (beside the model, script and
sample request they point to); cases that need a symlink, an environment or a script written
for the occasion are built in tmp_path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import ExitCode, ManifestError
from tdsp_deploy.manifest import (
    LoadedManifest,
    ManifestBase,
    check_manifest,
    load_manifest,
    manifest_class,
)
from tdsp_deploy.manifest.model import Strict
from tests import paths
from tests.fakes.manifest_project import GOOD_SCRIPT, MINIMAL, project

CORPUS = paths.DATA / "manifests"


def problems_of(path: Path | str, **kwargs) -> list[tuple[int | None, str | None, str]]:
    """(line, field, message) of every problem, after checking they all name the file as given."""
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, **kwargs)
    assert caught.value.exit_code == ExitCode.USAGE
    assert all(p.file == str(path) for p in caught.value.problems)
    return [(p.line, p.field, p.message) for p in caught.value.problems]


def check_problems(path: Path) -> list[tuple[int | None, str | None, str]]:
    loaded = load_manifest(path)
    with pytest.raises(ManifestError) as caught:
        check_manifest(loaded)
    assert all(p.file == str(path) for p in caught.value.problems)
    return [(p.line, p.field, p.message) for p in caught.value.problems]


# --- good manifests ------------------------------------------------------------------------


def test_minimal_manifest_takes_the_defaults() -> None:
    loaded = load_manifest(CORPUS / "minimal.yaml", environ={})
    m = loaded.manifest
    assert isinstance(loaded, LoadedManifest)
    assert loaded.file == (CORPUS / "minimal.yaml").absolute()
    assert loaded.base_dir == CORPUS.absolute()
    assert m.name == "iris" and m.model_name == "iris"
    assert m.model.path == (CORPUS / "model").resolve()
    assert m.scoring.script == (CORPUS / "score.py").resolve()
    assert m.scoring.code == CORPUS.resolve()  # the script's folder
    assert m.scoring.script_name == "score.py"
    assert m.target.kind == "local" and m.target.host == "127.0.0.1" and m.target.port is None
    assert (m.rollout.traffic, m.rollout.mirror, m.rollout.deployment) == (100, 0, None)
    latency = m.smoke_test.latency
    assert (latency.requests, latency.concurrency, latency.warmup) == (200, 4, 10)
    assert (latency.p95_ms, latency.max_error_rate, m.smoke_test.tolerance) == (None, 0.0, 1e-6)
    assert m.smoke_test.expect is None
    assert m.environment.variables == {} and m.environment.requirements is None
    assert loaded.lines[("scoring", "script")] == 5
    assert loaded.lines[("smoke_test", "request")] == 7
    assert check_manifest(loaded) == []


def test_full_manifest() -> None:
    loaded = load_manifest(CORPUS / "full.yaml", environ={})
    m = loaded.manifest
    assert m.name == "iris-prod" and m.model_name == "iris-model"
    assert m.model.path == (CORPUS / "model" / "model.pkl").resolve()
    assert m.model.version == "3"  # YAML read an int; versions are text
    assert m.scoring.code == CORPUS.resolve()
    assert m.environment.requirements == (CORPUS / "requirements.txt").resolve()
    assert m.environment.variables == {"LOG_LEVEL": "info", "WORKERS": "2", "DEBUG": "false"}
    t = m.target
    assert (t.kind, t.host, t.port, t.workers, t.startup_timeout) == ("local", "127.0.0.1", 8080, 2, 30)
    assert (t.request_timeout_ms, t.max_request_mb) == (5000, 10)
    assert m.smoke_test.expect == (CORPUS / "expected-response.json").resolve()
    assert m.smoke_test.tolerance == 1e-4
    assert m.smoke_test.latency.model_dump() == {
        "requests": 50,
        "concurrency": 2,
        "warmup": 5,
        "p95_ms": 250,
        "max_error_rate": 0.01,
        "rate": None,  # a closed loop
    }
    assert (m.rollout.deployment, m.rollout.traffic, m.rollout.mirror) == ("green", 0, 5)
    assert m.rollout.sticky_header == "x-user-id"
    assert loaded.lines[("target", "port")] == 19
    assert loaded.lines[("environment", "variables", "WORKERS")] == 14
    assert check_manifest(loaded) == []


def test_target_without_kind_is_local(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "target:\n  port: 8123\n")
    loaded = load_manifest(path)
    assert loaded.manifest.target.kind == "local" and loaded.manifest.target.port == 8123
    assert loaded.raw["target"] == {"kind": "local", "port": 8123}


def test_anchors_aliases_and_merge_keys(tmp_path: Path) -> None:
    path = project(
        tmp_path,
        """\
        name: iris
        model: &model
          path: model/
        scoring:
          script: score.py
        smoke_test:
          request: sample-request.json
          latency: &fast {requests: 20, concurrency: 2}
        rollout:
          <<: {traffic: 10, mirror: 5}
          mirror: 0
        """,
    )
    loaded = load_manifest(path)
    assert loaded.manifest.smoke_test.latency.requests == 20
    assert (loaded.manifest.rollout.traffic, loaded.manifest.rollout.mirror) == (10, 0)


# --- reading the file ----------------------------------------------------------------------


def test_missing_file_says_how_to_start(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    assert problems_of(path) == [(None, None, "no such file")]
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert "tdsp-deploy init" in caught.value.hint


def test_folder_instead_of_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [(None, None, "is a folder, not a manifest file")]
    project(tmp_path)
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path)
    assert caught.value.hint == f"did you mean {tmp_path / 'deploy.yaml'}?"


def test_non_utf8_manifest_names_the_line(tmp_path: Path) -> None:
    path = project(tmp_path)
    path.write_bytes(b"name: iris\nmodel:\n  path: caf\xe9/\n")
    assert problems_of(path) == [(3, None, "not valid UTF-8 (byte 0xe9); save the manifest as UTF-8")]


def test_binary_file_is_not_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(range(256)) * 4)
    assert len(problems_of(path)) == 1


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = project(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_manifest(path).manifest.name == "iris"


def test_yaml_syntax_error_names_line_and_column() -> None:
    path = CORPUS / "yaml-syntax.yaml"
    assert problems_of(path) == [(6, None, "invalid YAML at column 8: mapping values are not allowed here")]


def test_yaml_syntax_error_with_context(tmp_path: Path) -> None:
    path = project(tmp_path, 'name: "iris\nmodel:\n  path: model/\n')
    [(line, field, message)] = problems_of(path)
    assert (line, field) == (4, None)
    assert message.startswith("invalid YAML at column 1: found unexpected end of stream")
    assert "(while scanning a quoted scalar on line 1)" in message


def test_tab_indentation_says_so(tmp_path: Path) -> None:
    path = project(tmp_path, "name: iris\nmodel:\n\tpath: model/\n")
    [(line, _, message)] = problems_of(path)
    assert line == 3 and message.endswith("indent with spaces, not tabs")


def test_two_documents_are_refused(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "---\nname: other\n")
    [(line, _, message)] = problems_of(path)
    assert line == 6 and "expected a single document" in message


def test_duplicate_key_at_top_level() -> None:
    assert problems_of(CORPUS / "duplicate-top.yaml") == [
        (6, "name", "given twice, on lines 1 and 6; keep one")
    ]


def test_duplicate_key_nested() -> None:
    path = CORPUS / "duplicate-nested.yaml"
    assert problems_of(path) == [(5, "model.name", "given twice, on lines 4 and 5; keep one")]


def test_top_level_list_is_refused() -> None:
    assert problems_of(CORPUS / "top-level-list.yaml") == [
        (1, None, "the top level must be a mapping of keys (name, model, scoring, ...), not a list")
    ]


def test_top_level_scalar_is_refused(tmp_path: Path) -> None:
    path = project(tmp_path, "just some text\n")
    [(line, _, message)] = problems_of(path)
    assert line == 1 and message.endswith("not a single value")


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "---\n", "~\n"])
def test_empty_manifest(tmp_path: Path, text: str) -> None:
    path = project(tmp_path, text)
    assert problems_of(path) == [(1, None, "is empty")]


def test_empty_manifest_in_corpus() -> None:
    assert problems_of(CORPUS / "empty.yaml") == [(1, None, "is empty")]


def test_exponential_aliases_are_bounded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = project(tmp_path, "\n".join(lines) + "\n")
    [(_, _, message)] = problems_of(path)
    assert message == "expands to more than 100000 values through aliases"


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "rollout: &loop\n  traffic: *loop\n")
    assert (7, "rollout.traffic", "an alias refers to a value that contains it") in problems_of(path)


def test_unsupported_tag(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL.replace("score.py", "!!python/name:os.system score.py"))
    [(line, field, message)] = problems_of(path)
    assert (line, field) == (5, "scoring.script")
    assert message.startswith("invalid value: could not determine a constructor")


def test_bad_explicit_scalar_tag(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "rollout:\n  traffic: !!int lots\n")
    assert problems_of(path) == [(7, "rollout.traffic", "invalid value: not a valid tag:yaml.org,2002:int")]


# --- schema problems, located --------------------------------------------------------------


def test_wrong_type() -> None:
    assert problems_of(CORPUS / "wrong-type.yaml") == [
        (7, "rollout.traffic", "must be a whole number, got 'lots'")
    ]


def test_out_of_range_lists_every_problem_in_line_order() -> None:
    assert problems_of(CORPUS / "out-of-range.yaml") == [
        (7, "target.port", "must be <= 65535"),
        (9, "rollout.traffic", "must be <= 100"),
        (10, "rollout.mirror", "must be <= 50"),
    ]


def test_error_renders_as_file_line_field_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    with pytest.raises(ManifestError) as caught:
        load_manifest("out-of-range.yaml")
    assert str(caught.value).splitlines()[0] == "out-of-range.yaml:7: target.port: must be <= 65535"
    doc = caught.value.to_json()
    assert doc["exit_code"] == 2 and doc["error"] == "manifest"
    assert doc["problems"][1] == {
        "file": "out-of-range.yaml",
        "line": 9,
        "field": "rollout.traffic",
        "message": "must be <= 100",
    }
    json.dumps(doc)


@pytest.mark.parametrize("name", ["9abc", "ab", "UPPER", "a" * 33, "iris_model"])
def test_bad_endpoint_name(tmp_path: Path, name: str) -> None:
    path = project(tmp_path, MINIMAL.replace("name: iris", f"name: {name}"))
    assert problems_of(path) == [
        (1, "name", f"must be 3-32 characters of a-z, 0-9 and '-', starting with a letter, got '{name}'")
    ]


def test_number_as_endpoint_name_asks_for_text(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL.replace("name: iris", "name: 123"))
    assert problems_of(path) == [(1, "name", "must be text (quote it), got 123")]


def test_unknown_keys_with_did_you_mean() -> None:
    assert problems_of(CORPUS / "unknown-keys.yaml") == [
        (6, "smoke-test", "unknown key; did you mean 'smoke_test'?"),
        (9, "rollout.trafic", "unknown key; did you mean 'traffic'?"),
    ]


def test_unknown_nested_key_suggests_or_lists_allowed_keys() -> None:
    assert problems_of(CORPUS / "unknown-nested-key.yaml") == [
        (9, "smoke_test.latency.request", "unknown key; did you mean 'requests'?"),
        (
            10,
            "smoke_test.latency.colour",
            "unknown key; allowed: requests, concurrency, warmup, p95_ms, max_error_rate, rate",
        ),
    ]


def test_unknown_target_kind() -> None:
    path = CORPUS / "unknown-kind.yaml"
    assert problems_of(path) == [(7, "target.kind", "unknown target kind 'kubernetes'; one of: local")]


def test_target_must_be_a_mapping(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "target: local\n")
    assert problems_of(path) == [(6, "target", "must be a mapping, got 'local'")]


class FakeTarget(Strict):
    """A second target kind, as a backend plugin would add."""

    kind: Literal["fake"] = "fake"
    region: str
    instance_count: int = Field(default=1, ge=1)


def test_several_targets_errors_are_located_without_the_union_tag(tmp_path: Path) -> None:
    targets = (LocalTarget, FakeTarget)
    path = project(tmp_path, MINIMAL + "target:\n  kind: fake\n  instance_count: 0\n  regoin: x\n")
    assert problems_of(path, targets=targets) == [
        (6, "target.region", "required"),
        (8, "target.instance_count", "must be >= 1"),
        (9, "target.regoin", "unknown key; did you mean 'region'?"),
    ]
    path = project(tmp_path, MINIMAL + "target:\n  kind: k8s\n")
    assert problems_of(path, targets=targets) == [
        (7, "target.kind", "unknown target kind 'k8s'; one of: local, fake")
    ]
    path = project(tmp_path, MINIMAL + "target:\n  port: 70000\n")  # no kind: local
    assert problems_of(path, targets=targets) == [(7, "target.port", "must be <= 65535")]
    path = project(tmp_path, MINIMAL + "target:\n  kind: fake\n  region: westeurope\n")
    assert load_manifest(path, targets=targets).manifest.target.region == "westeurope"
    assert issubclass(manifest_class(targets), ManifestBase)


class PlainLocal(Strict):
    """A local target's schema other than the built-in one: the default comes from what is handed in."""

    kind: Literal["local"] = "local"
    host: str = "0.0.0.0"


def test_the_default_target_is_the_handed_in_schema_of_kind_local(tmp_path: Path) -> None:
    path = project(tmp_path)  # no target section
    assert load_manifest(path, targets=(PlainLocal, FakeTarget)).manifest.target == PlainLocal()
    assert load_manifest(path).manifest.target == LocalTarget()  # none handed in: the installed local one
    # Without a local schema there is no default: the section must be written.
    assert problems_of(path, targets=(FakeTarget,)) == [(1, "target", "required")]


def test_missing_required_fields_point_at_their_parent() -> None:
    assert problems_of(CORPUS / "missing-required.yaml") == [
        (2, "model.path", "required"),
        (4, "scoring.script", "required"),
    ]


def test_missing_top_level_sections(tmp_path: Path) -> None:
    path = project(tmp_path, "\n# a comment first\nname: iris\n")
    assert problems_of(path) == [(3, "model", "required"), (3, "scoring", "required")]


def test_missing_files() -> None:
    found = problems_of(CORPUS / "missing-files.yaml")
    assert [(line, field) for line, field, _ in found] == [
        (3, "model.path"),
        (5, "scoring.script"),
        (7, "smoke_test.request"),
    ]
    assert (
        found[0][2] == f"'models/iris.onnx' does not exist (looked for {CORPUS.resolve()}/models/iris.onnx)"
    )
    assert found[1][2].startswith("'scoring.py' does not exist")
    assert found[2][2].startswith("'request.json' does not exist")


def test_path_escaping_the_folder() -> None:
    [(line, field, message)] = problems_of(CORPUS / "escapes-folder.yaml")
    assert (line, field) == (3, "model.path")
    assert message.startswith("path '../x' leaves the manifest's folder")
    assert message.endswith("keep files beside the manifest or give an absolute path")


def test_symlink_escaping_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside.pkl"
    outside.write_bytes(b"weights")
    path = project(tmp_path / "proj", MINIMAL.replace("model/", "link.pkl"))
    (tmp_path / "proj" / "link.pkl").symlink_to(outside)
    [(line, field, message)] = problems_of(path)
    assert (line, field) == (3, "model.path")
    assert "leaves the manifest's folder" in message


def test_symlink_inside_the_folder_is_fine(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL.replace("model/", "link.pkl"))
    (tmp_path / "link.pkl").symlink_to(tmp_path / "model" / "model.pkl")
    # the model keeps the name it is given (as on Azure ML); the link's target is checked
    assert load_manifest(path).manifest.model.path == tmp_path.resolve() / "link.pkl"


def test_absolute_path_may_be_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "shared" / "model.onnx"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"onnx")
    path = project(tmp_path / "proj", MINIMAL.replace("model/", str(elsewhere)))
    assert load_manifest(path).manifest.model.path == elsewhere.resolve()


def test_path_too_long_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL.replace("model/", "m" * 5000))
    [(line, field, message)] = problems_of(path)
    assert (line, field) == (3, "model.path") and message.endswith("cannot be read: File name too long")


def test_script_relative_to_code_folder(tmp_path: Path) -> None:
    manifest = MINIMAL.replace("scoring:\n", "scoring:\n  code: src\n")
    path = project(tmp_path, manifest, {"src/score.py": GOOD_SCRIPT})
    scoring = load_manifest(path).manifest.scoring
    assert scoring.code == (tmp_path / "src").resolve() and scoring.script_name == "score.py"

    path = project(tmp_path, manifest.replace("score.py", "../score.py"))
    [(line, field, message)] = problems_of(path)
    assert (line, field) == (6, "scoring.script") and message.startswith(
        "'../score.py' leaves the code folder"
    )

    path = project(tmp_path, manifest.replace("code: src", "code: score.py"))
    [(line, field, message)] = problems_of(path)  # no second problem about the script
    assert (line, field) == (5, "scoring.code") and message.startswith("must be a folder")


def test_script_must_be_a_file(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL.replace("score.py", "model"))
    [(line, field, message)] = problems_of(path)
    assert (line, field) == (5, "scoring.script") and message.endswith("is a folder")


def test_requirements_and_conda_file_together() -> None:
    path = CORPUS / "both-env-specs.yaml"
    assert problems_of(path) == [(6, "environment", "give either requirements or conda_file, not both")]


def test_bad_environment_variable_name() -> None:
    assert problems_of(CORPUS / "bad-env-var.yaml") == [
        (
            9,
            "environment.variables.2FAST",
            "not a valid environment variable name: use letters, digits and '_', not a digit first",
        )
    ]


def test_environment_variables_become_text(tmp_path: Path) -> None:
    variables = "environment:\n  variables: {THREADS: 4, RATIO: 0.5, DEBUG: true, EMPTY: '', V: 2024-05-01}\n"
    loaded = load_manifest(project(tmp_path, MINIMAL + variables))
    assert loaded.manifest.environment.variables == {
        "THREADS": "4",
        "RATIO": "0.5",
        "DEBUG": "true",
        "EMPTY": "",
        "V": "2024-05-01",  # not a date: no manifest field is one
    }


def test_non_string_keys_are_read_as_written(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "environment:\n  variables: {1: x, yes: y}\n")
    found = problems_of(path)
    assert [(line, field) for line, field, _ in found] == [(7, "environment.variables.1")]


# --- ${VAR} interpolation ------------------------------------------------------------------


def test_undefined_variable_names_it_and_its_place(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "target:\n  port: ${PORT}\n")
    assert problems_of(path, environ={}) == [
        (7, "target.port", "undefined variable 'PORT'; set it, or give a default: ${PORT:-value}")
    ]


def test_variable_default(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "target:\n  port: ${PORT:-8000}\n  host: ${HOST:-127.0.0.1}\n")
    target = load_manifest(path, environ={"HOST": ""}).manifest.target  # empty takes the default, as in sh
    assert (target.port, target.host) == (8000, "127.0.0.1")
    target = load_manifest(path, environ={"PORT": "9000"}).manifest.target
    assert target.port == 9000


def test_variable_number_validates_as_number(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "target:\n  port: ${PORT}\n")
    loaded = load_manifest(path, environ={"PORT": "8080"})
    assert loaded.manifest.target.port == 8080 and isinstance(loaded.manifest.target.port, int)
    assert loaded.raw["target"]["port"] == "8080"


def test_variables_inside_text_and_the_escape(tmp_path: Path) -> None:
    manifest = (
        MINIMAL
        + "environment:\n  variables:\n    URL: http://${HOST}:${PORT:-80}/x\n    RAW: $${HOME} costs $$5\n"
    )
    variables = load_manifest(
        project(tmp_path, manifest), environ={"HOST": "db"}
    ).manifest.environment.variables
    assert variables == {"URL": "http://db:80/x", "RAW": "${HOME} costs $$5"}


def test_variables_from_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDSP_TEST_MODEL", "model/")
    path = project(tmp_path, MINIMAL.replace("model/", "${TDSP_TEST_MODEL}"))
    assert load_manifest(path).manifest.model.path == (tmp_path / "model").resolve()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${1X}", "bad reference '${1X}'; write ${NAME} or ${NAME:-default}"),
        ("${A-b}", "bad reference '${A-b}'; write ${NAME} or ${NAME:-default}"),
        ("abc${", "unclosed '${'; write ${NAME}, or $${ for a literal '${'"),
    ],
)
def test_bad_references(tmp_path: Path, value: str, message: str) -> None:
    path = project(tmp_path, MINIMAL + f"environment:\n  variables:\n    X: '{value}'\n")
    assert problems_of(path, environ={}) == [(8, "environment.variables.X", message)]


def test_interpolated_values_are_not_repeated_in_errors(tmp_path: Path) -> None:
    # A variable may hold a secret; an error about its field must not print it.
    path = project(tmp_path, MINIMAL.replace("name: iris", "name: ${NAME}"))
    [(line, field, message)] = problems_of(path, environ={"NAME": "Hunter2-Secret"})
    assert (line, field) == (1, "name") and "Hunter2" not in message


def test_interpolation_problems_come_with_the_others(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "target:\n  port: ${PORT}\nrollout:\n  traffic: 150\n")
    assert [(line, field) for line, field, _ in problems_of(path, environ={})] == [
        (7, "target.port"),
        (9, "rollout.traffic"),
    ]


# --- checks of the script and JSON files ---------------------------------------------------


def test_script_syntax_error(tmp_path: Path) -> None:
    script = "def init():\n    pass\n\ndef run(data)\n    return data\n"
    path = project(tmp_path, files={"score.py": script})
    [(line, field, message)] = check_problems(path)
    assert (line, field) == (5, "scoring.script")
    assert message.startswith("score.py:4: syntax error: expected ':'")


def test_script_without_init_and_run(tmp_path: Path) -> None:
    path = project(tmp_path, files={"score.py": "class Model:\n    def run(self, data):\n        pass\n"})
    assert check_problems(path) == [
        (
            5,
            "scoring.script",
            "score.py: no top-level function 'init' and 'run'; "
            "the scoring contract needs def init() and def run(raw_data)",
        )
    ]


def test_script_without_run(tmp_path: Path) -> None:
    path = project(tmp_path, files={"score.py": "def init():\n    pass\n"})
    [(_, _, message)] = check_problems(path)
    assert message.startswith("score.py: no top-level function 'run';")


def test_run_without_parameter(tmp_path: Path) -> None:
    path = project(tmp_path, files={"score.py": "def init():\n    pass\n\n\ndef run():\n    return 1\n"})
    assert check_problems(path) == [
        (
            5,
            "scoring.script",
            "score.py:5: run() takes no positional parameter; the server calls run(raw_data)",
        )
    ]


def test_run_with_keyword_only_parameter(tmp_path: Path) -> None:
    path = project(tmp_path, files={"score.py": "def init(): pass\nrun = lambda *, data: data\n"})
    [(_, _, message)] = check_problems(path)
    assert message.startswith("score.py:2: run() takes no positional parameter")


def test_init_with_required_parameter(tmp_path: Path) -> None:
    path = project(tmp_path, files={"score.py": "def init(path):\n    pass\n\ndef run(data):\n    pass\n"})
    [(_, _, message)] = check_problems(path)
    assert message == "score.py:1: init() is called with no arguments; give its parameters defaults"


@pytest.mark.parametrize(
    "script",
    [
        GOOD_SCRIPT,
        # inference_schema's decorators: the wrapped run takes its inputs by name
        "from inference_schema.schema_decorators import input_schema, output_schema\n"
        "from inference_schema.parameter_types.standard_py_parameter_type import (\n"
        "    StandardPythonParameterType,\n"
        ")\n"
        "def init():\n    pass\n"
        "@input_schema('data', StandardPythonParameterType([1.0]))\n"
        "@output_schema(StandardPythonParameterType([1]))\n"
        "def run(data):\n    return data\n",
        "async def init():\n    pass\nasync def run(raw_data, *rest):\n    return raw_data\n",
        "def init(): pass\nrun = lambda raw: raw\n",
        "from mylib.scoring import init, run\n",
        "import json\ntry:\n    import fast\n    def init(): pass\n"
        "except ImportError:\n    def init(): pass\n"
        "if True:\n    def run(*args): pass\n",
        "init = run = None  # assigned: the signature cannot be read, so it is not judged\n",
        "# -*- coding: latin-1 -*-\ns = 'caf\xe9'\ndef init(): pass\ndef run(d): pass\n",
    ],
    ids=["plain", "input_schema", "async", "lambda", "imported", "conditional", "assigned", "latin-1"],
)
def test_scripts_that_follow_the_contract(tmp_path: Path, script: str) -> None:
    content = script.encode("latin-1") if "latin-1" in script else script
    path = project(tmp_path, files={"score.py": content})
    assert check_manifest(load_manifest(path)) == []


def test_script_with_null_byte(tmp_path: Path) -> None:
    path = project(tmp_path, files={"score.py": b"def init(): pass\x00\n"})
    [(line, field, message)] = check_problems(path)
    assert (line, field) == (5, "scoring.script") and message.startswith("score.py:")


def test_invalid_json_request(tmp_path: Path) -> None:
    manifest = MINIMAL + "smoke_test:\n  request: sample-request.json\n"
    path = project(tmp_path, manifest, {"sample-request.json": '{\n  "data": [1, 2,]\n}\n'})
    assert check_problems(path) == [
        (7, "smoke_test.request", "sample-request.json:2: invalid JSON: Expecting value (column 17)")
    ]


def test_invalid_expected_response_and_script_together(tmp_path: Path) -> None:
    manifest = MINIMAL + "smoke_test:\n  request: sample-request.json\n  expect: expected.json\n"
    files = {"expected.json": b'{"a": "\xff"}', "score.py": "def init(): pass\n"}
    path = project(tmp_path, manifest, files)
    assert check_problems(path) == [
        (
            5,
            "scoring.script",
            "score.py: no top-level function 'run'; "
            "the scoring contract needs def init() and def run(raw_data)",
        ),
        (8, "smoke_test.expect", "expected.json:1: not valid UTF-8 (byte 0xff); save it as UTF-8"),
    ]


def test_request_folder_is_not_json(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "smoke_test:\n  request: model\n")
    assert check_problems(path) == [(7, "smoke_test.request", "model is a folder; give a JSON file")]


def test_warnings_for_empty_model_and_ignored_image(tmp_path: Path) -> None:
    manifest = MINIMAL.replace("model/", "empty.pkl") + "environment:\n  image: python:3.11\n"
    path = project(tmp_path, manifest, {"empty.pkl": b""})
    assert check_manifest(load_manifest(path)) == [
        f"{path}:3: model.path: the model file empty.pkl is empty",
        f"{path}:7: environment.image: ignored by the local target",
    ]


def test_warning_for_empty_model_folder(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL.replace("model/", "weights/"))
    (tmp_path / "weights" / "sub").mkdir(parents=True)
    assert check_manifest(load_manifest(path)) == [f"{path}:3: model.path: the model folder weights is empty"]


# --- nothing but ManifestError, whatever the input -----------------------------------------

KEYS = [
    "name", "model", "path", "version", "scoring", "code", "script", "environment", "requirements",
    "conda_file", "image", "variables", "target", "kind", "host", "port", "workers", "smoke_test",
    "request", "expect", "tolerance", "latency", "requests", "p95_ms", "rollout", "deployment",
    "traffic", "mirror", "<<",
]  # fmt: skip

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["model/", "score.py", "sample-request.json", "../x", "/", "", ".", "local", "iris", "9abc"]
        + ["${X}", "${X:-1}", "${UNSET}", "$${", "${", "${1}", "m" * 300, "a\x00b"]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
# Characters YAML gives meaning to, plus a few words, so that random text reaches the parser's corners.
YAML_TOKENS = list(":-[]{}&*!|>'\"#%@`,?<$\t\n ") + ["a", "1", "<<", "name", "model", "  ", "\n  ", "${X}"]
YAML_ISH = st.lists(st.sampled_from(YAML_TOKENS), max_size=80).map("".join)
VALID = yaml.safe_load(MINIMAL + "smoke_test:\n  request: sample-request.json\n")


def assert_only_manifest_errors(path: Path) -> None:
    try:
        loaded = load_manifest(path, environ={"X": "7"})
    except ManifestError as exc:
        assert exc.problems and exc.exit_code == ExitCode.USAGE
        for problem in exc.problems:
            assert problem.file == str(path) and problem.message
            assert problem.line is None or problem.line >= 1
        json.dumps(exc.to_json())
        return
    try:
        assert isinstance(check_manifest(loaded), list)
    except ManifestError as exc:
        assert exc.problems


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project(tmp_path_factory.mktemp("fuzz")).parent


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300), YAML_ISH))
def test_fuzz_arbitrary_text(fuzz_dir: Path, content: str | bytes) -> None:
    path = fuzz_dir / "text.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    assert_only_manifest_errors(path)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6),
    st.dictionaries(
        st.sampled_from(["model", "scoring", "smoke_test", "target", "rollout"]), VALUES, max_size=2
    ),
)
def test_fuzz_yaml_shaped_manifests(fuzz_dir: Path, anything: dict, overrides: dict) -> None:
    path = fuzz_dir / "dict.yaml"
    for document in (anything, {**VALID, **overrides}):
        path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        assert_only_manifest_errors(path)


def test_fuzz_dir_holds_a_valid_project(fuzz_dir: Path) -> None:
    # Guards the fuzz test's reach: with the fixture files present, overrides get past reading.
    path = fuzz_dir / "valid.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    assert load_manifest(path).manifest.smoke_test is not None
    assert os.path.exists(fuzz_dir / "score.py")


def test_complex_key_is_reported_and_the_rest_still_validated(tmp_path: Path) -> None:
    path = project(tmp_path, MINIMAL + "rollout:\n  ? [a, b]\n  : 1\n  traffic: 150\n")
    assert problems_of(path) == [
        (7, "rollout", "keys must be plain names, not lists or mappings"),
        (9, "rollout.traffic", "must be <= 100"),
    ]
