"""Building only the command an invocation names (or stand-ins, for the root's help) changes
nothing the user sees: each invocation below answers exactly as with the whole CLI built."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from tdsp_deploy.cli import app
from tdsp_deploy.cli import build as cli_build

INVOCATIONS = [
    ["--help"],
    ["-h"],
    [],
    ["--version"],
    ["--help", "validate"],
    ["--nosuchoption"],
    ["nosuchcommand"],
    ["valdate", "x.yaml"],
    ["ab"],
    ["ab", "--help"],
    ["ab", "status", "--help"],
    ["validate"],
    ["validate", "--help"],
    ["validate", "MANIFEST"],
    ["validate", "MANIFEST", "--json"],
    ["validate", "missing.yaml", "--json"],
    ["validate", "MANIFEST", "--nosuchoption"],
    ["schema", "--help"],
    ["run", "--help"],
    ["push", "--help"],
    ["import", "--help"],
    ["status", "--all", "--json"],
    ["status"],
    ["traffic", "MANIFEST", "blue=x"],
]


def _args(invocation: list[str], manifest: Path) -> list[str]:
    return [str(manifest) if a == "MANIFEST" else a for a in invocation]


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=[" ".join(i) or "(none)" for i in INVOCATIONS])
def test_an_invocation_answers_as_with_the_whole_cli_built(cli, iris: Path, monkeypatch, invocation) -> None:
    args = _args(invocation, iris)
    narrowed = cli(*args)
    monkeypatch.setattr(cli_build, "click_command", lambda app_, args_, prog: typer.main.get_command(app_))
    whole = cli(*args)
    assert (narrowed.exit_code, narrowed.stdout, narrowed.stderr) == (
        whole.exit_code,
        whole.stdout,
        whole.stderr,
    )


def test_only_the_named_command_is_built() -> None:
    command = cli_build.click_command(app, ["validate", "x.yaml"], "tdsp-deploy")
    assert list(command.commands) == ["validate"]
    assert [p.name for p in command.commands["validate"].params] == ["manifest", "json_out", "debug"]
    listing = cli_build.click_command(app, ["--help"], "tdsp-deploy")
    assert "validate" in listing.commands and "ab" in listing.commands
    assert listing.commands["validate"].params == []  # a stand-in: name and help only
    assert cli_build.click_command(app, ["--help"], "tdsp-deploy").commands.keys() == (
        typer.main.get_command(app).commands.keys()
    )


def test_shell_completion_gets_the_whole_cli(monkeypatch) -> None:
    monkeypatch.setenv("_TDSP_DEPLOY_COMPLETE", "bash_complete")
    command = cli_build.click_command(app, ["validate"], "tdsp-deploy")
    assert command.commands["push"].params  # built in full


HELP_PROBE = """
import sys
if sys.argv[1] == "real":
    import rich.markdown, rich.traceback  # present already: no stand-ins are used
from tdsp_deploy.cli import main
code = main(sys.argv[2:])
from typer import rich_utils
heavy = sorted({m.split(".")[0] for m in sys.modules if m.startswith(("markdown_it", "attr", "pygments"))})
print("HEAVY", heavy, rich_utils.Markdown("*x*").__class__.__module__, code, file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["ab"], ["validate", "--help"]])
def test_help_is_printed_the_same_without_the_renderers_it_never_uses(args: list[str]) -> None:
    import subprocess
    import sys

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": "/usr/bin:/bin", "COLUMNS": "100", "TDSP_DEPLOY_HOME": "/nonexistent-home"}
        return subprocess.run(
            [sys.executable, "-c", HELP_PROBE, mode, *args],
            capture_output=True,
            text=True,
            env=environ,
            timeout=120,
        )

    lean, real = run("lean"), run("real")
    assert lean.stdout == real.stdout and "Usage: tdsp-deploy" in lean.stdout
    assert "HEAVY [] rich.markdown 0" in lean.stderr, lean.stderr  # and the stand-in became the real class
    assert "HEAVY ['attr', 'markdown_it', 'pygments']" in real.stderr, real.stderr
