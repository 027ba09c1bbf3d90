"""Every `tdsp-deploy ...` command line shown in README.md and docs/*.md is a real command with
real options, and the README's short manifest is a manifest `validate` accepts.

Each documented line is run through the installed console script (the `tdsp-deploy` entry
point, in this process) with `--help` put right after its command words: click parses the
whole line first, so an option the command does not have, or a command that does not exist,
fails with exit 2, while `--help` (eager, and first) stops it before anything runs. The command
tree is never read from the CLI's modules, so the test does not depend on how they are laid
out."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests import paths

ROOT = paths.ROOT
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
# A command line ends where the shell takes over again.
SHELL_END = re.compile(r"\s(?:\||&&|;|>|2>|#)\s|\)|`|\s#")
# `pause|resume|abort` or `start/status/analyze` in a command line: one command each
ALTERNATIVES = re.compile(r"^[a-z][a-z-]*(?:[|/][a-z][a-z-]*)+$")


@dataclass(frozen=True)
class Shown:
    where: str  # file:line
    line: str  # as documented, after `tdsp-deploy`


def shown_commands(path: Path) -> list[Shown]:
    """The `tdsp-deploy ...` lines of one Markdown file: in shell code blocks, in inline code,
    and the README's table of commands (whose first column leaves out `tdsp-deploy`)."""
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT).as_posix()
    found: list[Shown] = []
    outside = []  # the text outside code blocks, line numbers kept
    block: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            block = None if block is not None else fence.group(1)
            outside.append("")
            continue
        if block is None:
            outside.append(line)
            continue
        outside.append("")
        if block in SHELL_BLOCKS:
            found += [Shown(f"{name}:{number}", tail) for tail in _after_program(line.rstrip("\\ "))]
    prose = "\n".join(outside)
    for match in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(match.group(1).split())
        number = prose.count("\n", 0, match.start()) + 1
        if span.startswith("tdsp-deploy"):
            found += [Shown(f"{name}:{number}", tail) for tail in _after_program(span)]
    if name == "README.md":  # the table of commands: its first column
        table = prose[prose.index("## Commands") :].split("\n#", 1)[0]
        for number, row in enumerate(table.splitlines(), prose[: prose.index("## Commands")].count("\n") + 1):
            first = re.match(r"^\| `([^`]+)` \|", row)
            if first:
                found.append(Shown(f"{name}:{number}", first.group(1)))
    return found


def _after_program(line: str) -> list[str]:
    """What follows each `tdsp-deploy` in a shell line, up to where the shell takes over."""
    tails = []
    for match in re.finditer(r"(?:^|[\s(])tdsp-deploy(?=\s|$)", line):
        rest = line[match.end() :]
        end = SHELL_END.search(rest)
        tails.append((rest[: end.start()] if end else rest).strip())
    return tails


def argument_lists(shown: str) -> list[list[str]]:
    """The argument lists a documented line stands for: `[optional]` parts included, `...`
    dropped, `a|b` alternatives each on its own."""
    words = shlex.split(shown.replace("[", " ").replace("]", " "))
    words = [w for w in words if w not in ("...", "…")]
    lists: list[list[str]] = [[]]
    for word in words:
        choices = re.split(r"[|/]", word) if ALTERNATIVES.match(word) else [word]
        lists = [done + [choice] for done in lists for choice in choices]
    return lists


def with_help(args: list[str]) -> list[str]:
    """`--help` after the leading command words and arguments, before the first option: click
    parses every option of the line (an unknown one is an error) and then runs `--help` first,
    before any other eager option such as `--install-completion`."""
    first_option = next((i for i, a in enumerate(args) if a.startswith("-") and a != "-"), len(args))
    return [*args[:first_option], "--help", *args[first_option:]]


def run_console_script(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run the installed `tdsp-deploy` console script in this process: its exit code, and what
    it wrote (an error is on stderr, or on stdout as JSON with `--json`)."""
    (script,) = entry_points(group="console_scripts", name="tdsp-deploy")
    monkeypatch.setattr(sys, "argv", ["tdsp-deploy", *args])
    with pytest.raises(SystemExit) as exited:
        script.load()()
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.err + captured.out


ALL_SHOWN = [shown for path in DOCUMENTS for shown in shown_commands(path)]


def test_the_documents_show_commands_to_check():
    """The extraction finds the commands of the quick start, the tables and the docs pages."""
    lines = {shown.line for shown in ALL_SHOWN}
    assert "push examples/iris/deploy.yaml" in lines
    assert "delete MANIFEST [-d SLOT] --yes" in lines  # the table of commands
    assert any(line.startswith("import online/endpoint.yml") for line in lines)  # the walkthrough
    assert any(line.startswith("rollout pause|resume|abort|promote") for line in lines)
    assert len(ALL_SHOWN) > 60


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_each_documented_command_is_a_real_command_with_real_options(document, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing documented may touch the user's files
    wrong = []
    for shown in shown_commands(document):
        for args in argument_lists(shown.line):
            code, said = run_console_script(with_help(args), monkeypatch, capsys)
            if code != 0:
                wrong.append(f"{shown.where}: `tdsp-deploy {' '.join(args)}` (exit {code}):\n{said}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("made_up", "complaint"),
    [
        ("push examples/iris/deploy.yaml --made-up-option", "--made-up-option"),
        ("status deploy.yaml --watch --intervals 10", "--intervals"),
        ("ab start deploy.yaml --control blue --treatmnt green", "--treatmnt"),
        ("rollout pause|unpause deploy.yaml", "unpause"),
        ("deploy examples/iris/deploy.yaml", "deploy"),
    ],
)
def test_a_made_up_command_or_option_fails_the_check(made_up, complaint, monkeypatch, capsys):
    outcomes = [run_console_script(with_help(args), monkeypatch, capsys) for args in argument_lists(made_up)]
    failed = [(code, said) for code, said in outcomes if code != 0]
    assert failed, f"`{made_up}` passed the check"
    assert all(code == 2 and complaint in said for code, said in failed), failed


def test_the_readme_manifest_is_one_validate_accepts(cli, tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The manifest") :]
    manifest = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    project = tmp_path / "iris"
    shutil.copytree(ROOT / "examples" / "iris", project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "deploy.yaml").write_text(manifest)
    result = cli("validate", project / "deploy.yaml")
    assert result.exit_code == 0, result.stderr


def test_ci_runs_the_readmes_test_command():
    """The quick start's second command is the one CI runs, word for word."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shell_lines = [line for block in re.findall(r"```bash\n(.*?)```", readme, re.S) for line in block.splitlines()]
    (test_command,) = [line for line in shell_lines if "[test]" in line and "pytest" in line]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == test_command, "README.md's test command and the last line of .ci/run differ"


def test_every_relative_link_of_the_documents_leads_somewhere():
    """Links between README.md and the docs/ pages (and into the tree) name files that exist,
    and an `#anchor` names one of the target's headings (as GitHub makes their slugs)."""
    broken = []
    for document in DOCUMENTS:
        text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.S)
        text = re.sub(r"`[^`]*`", "", text)  # code, such as a pattern's `(?:...)`, is no link
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            if not linked.exists():
                broken.append(f"{document.name}: {target}")
            elif anchor and anchor not in _slugs(linked):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert not broken, broken


def _slugs(markdown: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", markdown.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
