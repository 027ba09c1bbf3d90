"""Each deployment runs in an environment built (uv) from exactly what the manifest declares,
not from what is installed beside the CLI."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from tdsp_deploy.backends.local import interpreters, venvs
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
                "smoke_test": {
                    "request": "request.json",
                    "latency": {"requests": 2, "concurrency": 1, "warmup": 0},
                },
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
        "--find-links",
        "/opt/wheels",
        "--constraint",
        "/etc/xdg/pip/constraints.txt",
        "--extra-index-url",
        "file:///opt/pypi/simple",
        "--extra-index-url",
        "file:///opt/pypi-more/simple",
        "--index-url",
        "https://mirror.example/simple",
    ]


def test_the_conda_files_python_pin_and_the_hash_of_the_inputs(tmp_path):
    conda = tmp_path / "conda.yaml"
    conda.write_text("dependencies:\n  - python=3.11\n  - numpy=2.3.1\n  - pip:\n    - joblib\n")
    assert interpreters.conda_python(conda) == "3.11"
    from tdsp_deploy.manifest.model import EnvironmentSection

    environment = EnvironmentSection.model_validate(
        {"conda_file": str(conda)}, context={"base_dir": tmp_path}
    )
    first = venvs.plan(environment, "granian")
    assert (
        first is not None
        and "numpy==2.3.1" in first.requirement_lines
        and "joblib" in first.requirement_lines
    )
    assert venvs.plan(environment, "granian").key == first.key  # same inputs, same environment
    assert venvs.plan(environment, "gunicorn").key != first.key
    warned: list[str] = []
    missing = EnvironmentSection.model_validate(
        {"conda_file": str(conda), "python": "3.99"}, context={"base_dir": tmp_path}
    )
    assert venvs.plan(missing, "granian", warn=warned.append).python_version.startswith("3.")
    assert any("3.99" in w and "nearest" in w for w in warned)


def test_the_declared_python_or_else_the_nearest_installed_one_is_chosen():
    installed = [
        ("3.11.7", "/a/3.11.7"),
        ("3.11.2", "/b/3.11.2"),
        ("3.9.18", "/c/3.9"),
        ("3.13.0", "/d/3.13"),
    ]
    assert interpreters.nearest_python("3.11", installed) == ("3.11.7", "/a/3.11.7")  # the newest of that minor
    assert interpreters.nearest_python("3.11.2", installed) == ("3.11.2", "/b/3.11.2")  # the same patch first
    assert interpreters.nearest_python("3.12", installed) == ("3.13.0", "/d/3.13")  # one minor off: newer wins
    assert interpreters.nearest_python("3.10", installed) == ("3.11.7", "/a/3.11.7")
    assert interpreters.nearest_python("3.7", installed) == ("3.9.18", "/c/3.9")
    assert interpreters.nearest_python("3.99", installed) == ("3.13.0", "/d/3.13")


def test_an_installed_interpreter_of_the_declared_version_is_the_one_used():
    here = sys.version_info[:2]
    others = [(v, p) for v, p in interpreters.installed_pythons() if tuple(map(int, v.split(".")[:2])) != here]
    if not others:
        pytest.skip("no Python of another minor version is installed here")
    version, path = others[0]
    minor = ".".join(version.split(".")[:2])
    warned: list[str] = []
    chosen_path, chosen_version = interpreters.choose_python(minor, warned.append)
    assert chosen_version.startswith(minor + ".") and not warned
    assert Path(chosen_path).is_file()
    # the interpreter chosen is the version it says it is
    import subprocess

    said = subprocess.run(
        [chosen_path, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert said == str(tuple(map(int, minor.split("."))))


def test_a_conda_pin_built_before_numpy_2_keeps_numpy_1_as_conda_would(tmp_path):
    from tdsp_deploy.environment import conda_requirement_lines

    old = tmp_path / "old.yml"
    old.write_text(
        "dependencies:\n  - python=3.10\n  - scikit-learn=1.2.2\n  - numpy\n  - pip:\n    - joblib\n"
    )
    assert conda_requirement_lines(old) == ["scikit-learn==1.2.2", "numpy", "joblib", "numpy<2"]
    recent = tmp_path / "recent.yml"
    recent.write_text("dependencies:\n  - scikit-learn=1.7.0\n  - numpy\n")
    assert "numpy<2" not in conda_requirement_lines(recent)
    pinned = tmp_path / "pinned.yml"
    pinned.write_text("dependencies:\n  - scipy=1.10\n  - numpy=1.24.4\n")
    assert conda_requirement_lines(pinned) == ["scipy==1.10", "numpy==1.24.4"]  # numpy pinned: its own choice
    ranges = tmp_path / "ranges.yml"  # as MLflow writes them: a range on pip, a build string
    ranges.write_text(
        "dependencies:\n  - pip<=23.2.1\n  - conda-forge::pandas=2.1.4=py311h\n  - numpy>=1.2,<2\n"
    )
    assert conda_requirement_lines(ranges) == ["pandas==2.1.4", "numpy>=1.2,<2"]


def test_the_build_reports_its_progress_in_plain_lines_and_an_unused_environment_is_collected(
    cli, tmp_path, monkeypatch, state_home
):
    # this home's own cache (as a user has), which `collect` tends; the session's shared one it leaves
    monkeypatch.delenv(venvs.CACHE_VARIABLE)
    manifest = _manifest(tmp_path / "app", "pyyaml\n")
    try:
        pushed = cli("push", manifest)
        assert pushed.exit_code == 0, pushed.stderr
        lines = [line.strip() for line in pushed.stderr.splitlines() if "environment:" in line]
        assert any(line.startswith("environment: building environment") for line in lines), lines
        assert any(line.startswith("environment: resolving 1 declared packages") for line in lines), lines
        assert any(line.startswith("environment: resolved ") and " packages" in line for line in lines), lines
        assert any(line.startswith("environment: installed ") for line in lines), lines
        assert any(line.startswith("environment: built environment") for line in lines), lines
        assert "\x1b[" not in pushed.stderr  # no spinner or colour off a terminal
        status = cli("status", manifest, "--json").json()
        environment = status["slots"][0]["details"]["environment"]
        assert environment["declared_in"] == str(tmp_path / "app" / "requirements.txt")
        folder = state_home / "envs" / environment["hash"]
        assert (folder / venvs.READY).is_file()
        again = cli("push", manifest)  # unchanged: nothing built, nothing collected
        assert again.exit_code == 0 and folder.is_dir()
    finally:
        # an hour unused: the grace for a folder whose push has not recorded it yet is over
        hour_ago = time.time() - 3600
        if (state_home / "envs").is_dir():
            for ready in (state_home / "envs").glob("*/" + venvs.READY):
                os.utime(ready, (hour_ago, hour_ago))
        cli("delete", manifest, "--yes")
    assert not folder.exists()  # no deployment of this home uses it any more


def test_collect_keeps_what_is_used_or_new_and_removes_the_rest(tmp_path, monkeypatch):
    monkeypatch.delenv(venvs.CACHE_VARIABLE)
    root = tmp_path / "envs"
    hour_ago = time.time() - 3600
    for name, age in (("used", hour_ago), ("unused", hour_ago), ("new", None)):
        (root / name).mkdir(parents=True)
        (root / name / venvs.READY).write_text("{}")
        (root / f"{name}.lock").write_text("")
        if age:
            os.utime(root / name / venvs.READY, (age, age))
    assert venvs.collect(tmp_path, {"used"}) == ["unused"]
    assert sorted(p.name for p in root.iterdir()) == ["new", "new.lock", "used", "used.lock"]
    monkeypatch.setenv(venvs.CACHE_VARIABLE, str(root))  # a shared cache: other homes may use any
    os.utime(root / "new" / venvs.READY, (hour_ago, hour_ago))
    assert venvs.collect(tmp_path, set()) == [] and (root / "new").is_dir()


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
