"""The layering of DESIGN.md, as the import-linter contracts in pyproject.toml state it.

The first test checks the package as it is; the others plant one forbidden import in a copy
of the package and check that the matching contract breaks, so the check is known to be able
to fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import paths

ROOT = paths.ROOT


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the package found under ``root``, with the contracts of ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy, ahead of the installed package
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports;"
            " sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        (
            "backends/azureml/__init__.py",
            "import tdsp_deploy.backends.sqlserver.target",
            "no backend imports another backend",
        ),
        (  # the lock the Azure ML backend and the SQL pool once took from the local backend
            "backends/synapse/sql_pool.py",
            "import tdsp_deploy.backends.local.state",
            "no backend imports another backend",
        ),
        (
            "packaging/lock.py",
            "import tdsp_deploy.backends.base",
            "cli -> pipeline -> backends -> core",
        ),
        (
            "pipeline.py",
            "import tdsp_deploy.backends.local",
            "outside the backends, a concrete backend is reached only through the registry",
        ),
        (  # once an accepted debt: the loader asked the registry for the target schemas
            "manifest/loader.py",
            "import tdsp_deploy.backends.registry",
            "cli -> pipeline -> backends -> core",
        ),
        (  # once an accepted debt: `run` parsed --input/--output with the Synapse target's model
            "cli/batch.py",
            "import tdsp_deploy.backends.synapse.target",
            "outside the backends, a concrete backend is reached only through the registry",
        ),
        ("smoke.py", "import pyspark", "platform SDKs only inside their backend"),
        ("cli/traffic.py", "import tdsp_deploy.cli.ab", "cli: no command group imports another"),
    ],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    shutil.copytree(
        ROOT / "tdsp_deploy", tmp_path / "tdsp_deploy", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "tdsp_deploy" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert "1 broken" in result.stdout, result.stdout
    importer = "tdsp_deploy." + module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    imported = planted.removeprefix("import ")
    assert f"{importer} -> {imported}" in result.stdout, result.stdout
