"""The published manifest reference and JSON Schema match what the schema generates."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.manifest.model import target_kind
from tdsp_deploy.manifest.reference import (
    REFERENCE_PATH,
    REGENERATE,
    SCHEMA_PATH,
    builtin_target_models,
    published_files,
    stale_files,
)
from tdsp_deploy.manifest.schema import manifest_json_schema
from tests import paths

ROOT = paths.ROOT


def test_the_committed_reference_and_schema_are_what_the_schema_generates():
    stale = stale_files(ROOT)
    assert not stale, (
        f"{', '.join(map(str, stale))} differ from what the manifest schema generates; "
        f"regenerate them with `{REGENERATE}` and commit the result"
    )


def test_the_check_notices_a_schema_change(tmp_path):
    # the published files of a different schema (one target only) are reported as stale
    narrower = published_files((LocalTarget,))
    assert set(stale_files(ROOT, narrower)) == {SCHEMA_PATH, REFERENCE_PATH}
    for relative, text in narrower.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    assert stale_files(tmp_path, narrower) == []


def test_the_reference_documents_every_key_of_every_builtin_target():
    models = builtin_target_models()
    kinds = {target_kind(model) for model in models}
    assert {"local", "azureml", "sqlserver"} <= kinds
    reference = published_files(models)[REFERENCE_PATH]
    for model in models:
        heading = f"## target (kind: {target_kind(model)})"
        assert heading in reference
        section = reference.split(heading, 1)[1].split("\n## ", 1)[0]
        for field in model.model_fields.values():
            key = field.alias or next(k for k, v in model.model_fields.items() if v is field)
            assert f"`{key}`" in section, f"{key} of target {target_kind(model)} is not documented"
    schema = manifest_json_schema(models)
    for key in schema["properties"]:
        assert f"`{key}`" in reference.split("\n## ", 2)[1]  # the top-level table


def test_schema_reference_command_prints_markdown_and_writes_files(cli, tmp_path):
    printed = cli("schema", "--reference")
    assert printed.exit_code == 0
    assert printed.stdout.startswith("# Manifest reference")
    assert "## target (kind: local)" in printed.stdout and "## target (kind: fake)" in printed.stdout
    written = cli("schema", "-o", tmp_path / "out" / "manifest.schema.json", "--json")
    assert written.exit_code == 0 and written.json()["format"] == "json-schema"
    document = json.loads((tmp_path / "out" / "manifest.schema.json").read_text())
    assert document["title"] == "tdsp-deploy manifest (v1)"


def test_regenerating_writes_only_what_is_stale(tmp_path, capsys):
    from tdsp_deploy.manifest.reference import main

    assert main([str(tmp_path), "--check"]) == 1
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0
    assert (tmp_path / SCHEMA_PATH).read_text() == published_files()[SCHEMA_PATH]


@pytest.mark.parametrize("manifest", ["examples/iris/deploy.yaml", "tests/data/manifests/minimal.yaml"])
def test_the_published_schema_accepts_real_manifests_and_refuses_typos(manifest):
    schema = json.loads((ROOT / SCHEMA_PATH).read_text())
    document = yaml.safe_load((ROOT / manifest).read_text())
    jsonschema.validate(document, schema)
    document["modle"] = document.pop("model")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_the_published_schema_takes_what_the_loader_takes(tmp_path):
    """Numbers where text is expected (`version: 3`, a variable's value) and synapse's plain-text
    input/output: the loader accepts them, so an editor using the schema must not flag them."""
    from tdsp_deploy.backends.synapse.target import SynapseTarget
    from tdsp_deploy.manifest import load_manifest

    (tmp_path / "model.pkl").write_bytes(b"model")
    (tmp_path / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    document = {
        "name": "churn",
        "model": {"path": "model.pkl", "version": 3, "flavor": "sklearn"},
        "scoring": {"script": "score.py"},
        "environment": {"variables": {"THREADS": 2, "VERBOSE": True}},
        "target": {
            "kind": "synapse",
            "workspace": "contoso-ws",
            "mode": "spark",
            "spark_pool": "pool1",
            "storage": "abfss://jobs@contoso.dfs.core.windows.net/tdsp",
            "input": "abfss://data@contoso.dfs.core.windows.net/rows.parquet",
            "output": "scored_rows",
            "inputs": [{"name": "f0", "type": "float"}],
            "outputs": [{"name": "label", "type": "int"}],
        },
    }
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(document))
    loaded = load_manifest(path, targets=(SynapseTarget,)).manifest
    assert loaded.model.version == "3"
    assert loaded.environment.variables == {"THREADS": "2", "VERBOSE": "true"}
    assert loaded.target.input.path.endswith("rows.parquet")
    assert loaded.target.output.table == "scored_rows"
    jsonschema.validate(document, json.loads((ROOT / SCHEMA_PATH).read_text()))
    document["target"]["input"] = 42  # neither text nor a mapping: refused by both
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json.loads((ROOT / SCHEMA_PATH).read_text()))
