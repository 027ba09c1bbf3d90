"""Each deployment runs in an environment built (uv) from exactly what the manifest declares,
not from what is installed beside the CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from tdsp_deploy.backends.local import venvs
from tdsp_deploy.errors import ExitCode

# pyyaml is installed beside the CLI (it is one of its dependencies) and is no dependency of
# the inference server: a script that imports it passes only where it is declared.
SCRIPT = """\
import yaml

def init():
    pass

def run(raw_data):
    return {"yaml": yaml.__version__}
"""


def _manifest(root: Path, requirements: str, **environment: str) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.txt").write_text("1")
    (root / "score.py").write_text(SCRIPT)
    (root / "requirements.txt").write_text(requirements)
    (root / "request.json").write_text("{}")
    manifest = root / "deploy.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": "isolated",
                "model": {"path": "model/"},
                "scoring": {"script": "score.py"},
                "environment": {"requirements": "requirements.txt", **environment},
                "smoke_test": {"request": "request.json", "latency": {"requests": 2, "concurrency": 1, "warmup": 0}},
            }
        )
    )
    return manifest


def test_a_package_the_requirements_lack_fails_at_health_and_passes_once_declared(cli, tmp_path):
    assert importlib.util.find_spec("yaml") is not None  # installed here: isolation is what fails it
    manifest = _manifest(tmp_path / "app", "# nothing yet\n")
    try:
        failed = cli("push", manifest, "--json")
        assert failed.exit_code == ExitCode.DEPLOYMENT_FAILED, failed.stdout
        hint = failed.json()["hint"]
        assert "'yaml'" in hint and "'pyyaml'" in hint and str(tmp_path / "app" / "requirements.txt") in hint

        (tmp_path / "app" / "requirements.txt").write_text("pyyaml\n")
        pushed = cli("push", manifest, "--json")
        assert pushed.exit_code == 0, pushed.stdout + pushed.stderr
        status = cli("status", manifest, "--json").json()
        environment = status["slots"][0]["details"]["environment"]
        assert len(environment["hash"]) == 16 and environment["python"].startswith("3.")
    finally:
        cli("delete", manifest, "--yes")


def test_shared_isolation_keeps_the_clis_environment_and_validate_builds_nothing(cli, tmp_path, monkeypatch):
    cache = tmp_path / "envs"
    monkeypatch.setenv(venvs.CACHE_VARIABLE, str(cache))
    manifest = _manifest(tmp_path / "app", "# nothing\n")
    assert cli("validate", manifest).exit_code == 0
    assert not cache.exists()  # validate resolves and builds nothing
    doc = yaml.safe_load(manifest.read_text())
    doc["environment"]["isolation"] = "shared"
    manifest.write_text(yaml.safe_dump(doc))
    try:
        pushed = cli("push", manifest)
        assert pushed.exit_code == 0, pushed.stderr  # yaml comes from the CLI's environment
        status = cli("status", manifest, "--json").json()
        assert status["slots"][0]["details"]["environment"]["hash"] == "shared"
        assert not cache.exists()
    finally:
        cli("delete", manifest, "--yes")


def test_pip_configuration_becomes_uvs_options():
    listed = (
        ":env:.find-links='/opt/wheels'\n"
        "global.cert='/etc/ssl/certs/ca-certificates.crt'\n"
        "global.constraint='/etc/xdg/pip/constraints.txt'\n"
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'\n"
        "global.find-links='/opt/wheels'\n"
        "global.index-url='https://mirror.example/simple'\n"
    )
    assert venvs.uv_options_from_pip_config(listed) == [
        "--find-links", "/opt/wheels",
        "--constraint", "/etc/xdg/pip/constraints.txt",
        "--extra-index-url", "file:///opt/pypi/simple",
        "--extra-index-url", "file:///opt/pypi-more/simple",
        "--index-url", "https://mirror.example/simple",
    ]  # fmt: skip


def test_the_conda_files_python_pin_and_the_hash_of_the_inputs(tmp_path):
    conda = tmp_path / "conda.yaml"
    conda.write_text("dependencies:\n  - python=3.11\n  - numpy=2.3.1\n  - pip:\n    - joblib\n")
    assert venvs.conda_python(conda) == "3.11"
    from tdsp_deploy.manifest.model import EnvironmentSection

    environment = EnvironmentSection.model_validate({"conda_file": str(conda)}, context={"base_dir": tmp_path})
    first = venvs.plan(environment, "granian")
    assert first is not None and "numpy==2.3.1" in first.requirement_lines and "joblib" in first.requirement_lines
    assert venvs.plan(environment, "granian").key == first.key  # same inputs, same environment
    assert venvs.plan(environment, "gunicorn").key != first.key
    warned: list[str] = []
    missing = EnvironmentSection.model_validate({"conda_file": str(conda), "python": "3.99"}, context={"base_dir": tmp_path})
    assert venvs.plan(missing, "granian", warn=warned.append).python_version.startswith("3.")
    assert any("3.99" in w for w in warned)


def test_the_slot_runtime_holds_every_module_of_ours_that_the_slot_imports():
    # The slot's environment gets only the modules in SLOT_MODULES: one of them importing another
    # module of tdsp_deploy that is not copied would crash-loop every isolated slot.
    import ast

    from tdsp_deploy.backends.local import venvs

    here = Path(venvs.__file__).parent
    copied = {f"tdsp_deploy.backends.local.{name[:-3]}" for name in venvs.SLOT_MODULES}
    imported: set[str] = set()
    for name in venvs.SLOT_MODULES:
        for node in ast.walk(ast.parse((here / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tdsp_deploy"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("tdsp_deploy")}
    assert imported, "the slot modules import each other: the walk must see that"
    assert imported <= copied, f"not in SLOT_MODULES: {sorted(imported - copied)}"
