"""Fuzzing the manifest loader: whatever the file holds, what comes out is a clean validation
error (a TdspError with its exit code and a message), never another exception.

Two sources of input: random YAML documents, and mutations of the example manifest (keys
dropped, renamed or added, values replaced by anything, lines deleted, swapped, cut or
re-indented), the mistakes people make when they edit a working file.

The default profile runs a modest, derandomized number of examples so CI time stays flat;
``TDSP_FUZZ_PROFILE=thorough`` runs many more with a fresh seed each time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdsp_deploy.errors import ExitCode, TdspError
from tdsp_deploy.manifest import check_manifest, load_manifest
from tests import paths

EXAMPLE = paths.EXAMPLES / "iris"
settings.register_profile(
    "ci", max_examples=75, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=3000, deadline=None)
FUZZ = settings.get_profile(os.environ.get("TDSP_FUZZ_PROFILE", "ci"))
ENVIRON = {"SET": "7"}  # the variables a manifest may refer to while fuzzed


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example, so that mutated manifests name files that exist."""
    root = tmp_path_factory.mktemp("fuzz") / "iris"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def only_clean_errors(path: Path) -> None:
    """Load and check ``path``; a TdspError is fine, anything else fails the test."""
    try:
        check_manifest(load_manifest(path, environ=ENVIRON))
    except TdspError as error:
        assert error.exit_code in set(ExitCode) and error.exit_code != ExitCode.UNEXPECTED
        assert error.message.strip()
        json.dumps(error.to_json())


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["model/", "src/", "score.py", "../", "/etc/passwd", "", "${SET}", "${UNSET}", "${",
                     "$${X}", "a\x00b", "local", "azureml", "blue", "-1", "1e309", "~", "yes", "0o777",
                     "x" * 5000]),
)  # fmt: skip
KEYS = st.sampled_from(
    ["name", "model", "path", "scoring", "script", "code", "environment", "variables", "target", "kind",
     "port", "host", "smoke_test", "latency", "p95_ms", "rollout", "traffic", "mirror", "ab", "<<", "flavor"]
) | st.text(max_size=8)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=15,
)


@FUZZ
@given(document=VALUES, flow=st.booleans())
def test_random_yaml_documents(project: Path, document: Any, flow: bool) -> None:
    path = project / "random.yaml"
    path.write_text(yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True), encoding="utf-8")
    only_clean_errors(path)


# --- mutations of the example ---------------------------------------------------------------


def paths_of(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a parsed document (mappings only)."""
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found.append((*prefix, key))
            found += paths_of(value, (*prefix, key))
    return found


def mutate(doc: dict, data: st.DataObject) -> dict:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = paths_of(doc)
        where = data.draw(st.sampled_from(paths), label="path")
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        key = where[-1]
        action = data.draw(st.sampled_from(["drop", "replace", "rename", "add"]), label="action")
        if action == "drop":
            del parent[key]
        elif action == "replace":
            parent[key] = data.draw(VALUES, label="value")
        elif action == "rename":
            parent[data.draw(KEYS, label="new key")] = parent.pop(key)
        else:
            parent[data.draw(KEYS, label="added key")] = data.draw(VALUES, label="added value")
    return doc


@FUZZ
@given(data=st.data())
def test_structural_mutations_of_the_example(project: Path, data: st.DataObject) -> None:
    doc = yaml.safe_load((project / "deploy.yaml").read_text())
    path = project / "mutated.yaml"
    path.write_text(yaml.safe_dump(mutate(doc, data), allow_unicode=True), encoding="utf-8")
    only_clean_errors(path)


@FUZZ
@given(data=st.data())
def test_textual_mutations_of_the_example(project: Path, data: st.DataObject) -> None:
    path = project / "edited.yaml"
    path.write_text(edited(project, data), encoding="utf-8")
    only_clean_errors(path)


def _shape(node: Any) -> Any:
    """A composed YAML node as comparable data: tag, line, and the value or the children."""
    line = node.start_mark.line
    if isinstance(node, yaml.MappingNode):
        return (node.tag, line, [(_shape(key), _shape(value)) for key, value in node.value])
    if isinstance(node, yaml.SequenceNode):
        return (node.tag, line, [_shape(item) for item in node.value])
    return (node.tag, line, node.value)


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML without libyaml")
@FUZZ
@given(data=st.data())
def test_libyaml_composes_what_the_python_parser_composes(project: Path, data: st.DataObject) -> None:
    # The loader composes with libyaml and falls back to Python (whose messages it shows) on
    # any refusal: a text libyaml accepts must give Python's tree, or be refused by both.
    text = edited(project, data)
    if "\t" in text:
        return  # composed by Python alone: libyaml accepts tabs where Python does not
    try:
        fast = yaml.compose(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return
    try:
        slow = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise AssertionError(f"libyaml accepted what Python refuses: {exc}") from None
    assert (fast is None) == (slow is None)
    if fast is not None:
        assert _shape(fast) == _shape(slow)


def edited(project: Path, data: st.DataObject) -> str:
    """The example manifest with one to three of the edits people make by hand."""
    lines = (project / "deploy.yaml").read_text().splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        if not lines:
            break
        at = data.draw(st.integers(0, len(lines) - 1), label="line")
        edits = ["delete", "swap", "indent", "dedent", "cut", "insert"]
        edit = data.draw(st.sampled_from(edits), label="edit")
        if edit == "delete":
            del lines[at]
        elif edit == "swap":
            other = data.draw(st.integers(0, len(lines) - 1), label="other line")
            lines[at], lines[other] = lines[other], lines[at]
        elif edit == "indent":
            lines[at] = data.draw(st.sampled_from([" ", "  ", "\t", "    "]), label="indent") + lines[at]
        elif edit == "dedent":
            lines[at] = lines[at].lstrip(" ")
        elif edit == "cut":
            lines[at] = lines[at][: data.draw(st.integers(0, len(lines[at])), label="cut at")]
        else:
            text = data.draw(st.text(st.sampled_from(list(":-[]{}&*!|>'\"#%@,?$ \n\tab1")), max_size=12))
            column = data.draw(st.integers(0, len(lines[at])), label="column")
            lines[at] = lines[at][:column] + text + lines[at][column:]
    return "".join(lines)


def test_the_unmutated_example_is_valid(project: Path) -> None:
    # Guards the mutation tests' reach: without mutation the example passes every check.
    assert check_manifest(load_manifest(project / "deploy.yaml", environ=ENVIRON)) == []
