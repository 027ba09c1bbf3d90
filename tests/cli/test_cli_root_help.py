"""`tdsp-deploy --help` printed from root_help.bin: byte for byte what typer prints, at every
stored width, to a pipe and to a terminal; without typer, click or rich; and left to typer
whenever anything could make typer print something else."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tdsp_deploy.cli import root_help, root_help_build

SCRIPT = Path(sys.executable).parent / "tdsp-deploy"  # the console script, as installed
TYPER_ONLY = ["-c", "import sys; from tdsp_deploy.cli.console import run; run()"]  # no root_help


def _clean_environ(**extra: str) -> dict[str, str]:
    environ = {
        name: value
        for name, value in os.environ.items()
        if name not in root_help.DECLINE_VARIABLES
        and not name.startswith(root_help.DECLINE_PREFIXES)
        and name not in ("COLUMNS", "LINES", "TERM")
    }
    return {**environ, "TERM": "xterm-256color", **extra}


def _stored() -> bytes:
    with open(root_help.PAGES_PATH, "rb") as file:
        return file.read()


# The pages serve only the typer and rich that printed them; with others installed, typer answers
# (and the tests below check that instead of the pages).
SERVED = root_help.recorded_printers(_stored()) == root_help.printers_line()


def test_the_stored_pages_are_what_typer_prints_at_every_width() -> None:
    fresh = root_help_build.pages()
    assert len(fresh) == len(root_help.MODES) * len(root_help.WIDTHS)
    if not SERVED:  # printed by another typer or rich: never served here
        assert root_help.page(["--help"], {"TERM": "xterm"}, sys.__stdout__) is None
        return
    assert root_help_build.stale(_stored(), fresh) == [], f"run {root_help_build.REGENERATE}"
    plain, styled, no_color = (fresh[(80, mode)] for mode in root_help.MODES)
    assert b"\x1b[" not in plain and b"\x1b[1;36m" in styled  # bold cyan: the option names
    assert b"\x1b[1m" in no_color and b"36m" not in no_color  # bold kept, the colour dropped


def test_a_changed_command_help_makes_the_pages_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from tdsp_deploy.cli.commands import app

    validate = next(info for info in app.registered_commands if info.name == "validate")
    monkeypatch.setattr(validate, "help", "Check a manifest, differently.")
    keys = [(80, root_help.PLAIN), (80, root_help.TERMINAL), (133, root_help.TERMINAL_NO_COLOR)]
    fresh = {key: root_help_build.render(*key) for key in keys}
    assert b"differently" in fresh[(80, root_help.PLAIN)]
    assert root_help_build.stale(_stored(), fresh) == keys
    assert root_help_build.stale(b"not the pages", fresh) == keys


def _run(arguments: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(arguments, capture_output=True, env=environ, stdin=subprocess.DEVNULL, timeout=120)


@pytest.mark.parametrize("width", [None, 40, 41, 57, 80, 99, 120, 163, 200])
@pytest.mark.parametrize(
    ("flags", "no_color"), [(["--help"], False), (["-h"], False), (["--help"], True), ([], False), ([], True)]
)
def test_the_console_script_prints_what_typer_prints_to_a_pipe(
    width: int | None, flags: list[str], no_color: bool
) -> None:
    environ = _clean_environ(
        **({} if width is None else {"COLUMNS": str(width)}), **({"NO_COLOR": "1"} if no_color else {})
    )
    fast = _run([sys.executable, "-X", "importtime", str(SCRIPT), *flags], environ)
    typer = _run([sys.executable, *TYPER_ONLY, *flags], environ)
    assert (fast.returncode, fast.stdout) == (typer.returncode, typer.stdout) == (0, typer.stdout)
    imported = set(re.findall(rb"\|\s+([\w.]+)\s*$", fast.stderr, re.MULTILINE))
    printers = {name for name in imported if name.split(b".")[0] in (b"typer", b"click", b"rich")}
    if not SERVED:
        assert b"typer" in printers
        return
    assert fast.stdout == root_help.unpack(_stored(), width or 80, root_help.PLAIN)
    assert b"tdsp_deploy.cli.root_help" in imported
    assert not printers


def _in_terminal(arguments: list[str], environ: dict[str, str], width: int) -> tuple[int, bytes]:
    """Run with stdin, stdout and stderr on a new pseudo-terminal ``width`` columns wide."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, width, 0, 0))
    process = subprocess.Popen(arguments, stdin=terminal, stdout=terminal, stderr=terminal, env=environ)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal's last user has gone
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=120), output


@pytest.mark.parametrize(
    ("width", "mode"),
    [(40, root_help.TERMINAL), (80, root_help.TERMINAL), (133, root_help.TERMINAL), (200, root_help.TERMINAL),
     (61, root_help.TERMINAL_NO_COLOR), (80, root_help.TERMINAL_NO_COLOR)],
)  # fmt: skip
def test_the_console_script_prints_what_typer_prints_to_a_terminal(width: int, mode: int) -> None:
    environ = _clean_environ(**({"NO_COLOR": "yes"} if mode == root_help.TERMINAL_NO_COLOR else {}))
    fast = _in_terminal([str(SCRIPT), "--help"], environ, width)
    typer = _in_terminal([sys.executable, *TYPER_ONLY, "--help"], environ, width)
    assert fast == typer and fast[0] == 0
    bare = (
        _in_terminal([str(SCRIPT)], environ, width),
        _in_terminal([sys.executable, *TYPER_ONLY], environ, width),
    )
    assert bare[0] == bare[1] == fast  # bare `tdsp-deploy` prints the same help
    if not SERVED:
        return
    stored = root_help.unpack(_stored(), width, mode)
    assert stored is not None and b"\x1b[" in stored
    assert fast[1] == stored.replace(b"\n", b"\r\n")  # the terminal turns each newline into CR LF
    # a terminal's width in COLUMNS wins over its size, as rich has it
    assert _in_terminal([str(SCRIPT), "--help"], {**environ, "COLUMNS": "99"}, width)[1] == (
        root_help.unpack(_stored(), 99, mode).replace(b"\n", b"\r\n")  # type: ignore[union-attr]
    )


class _Stdout:
    def __init__(self, encoding: str = "utf-8", terminal: bool = False) -> None:
        self.encoding, self.terminal = encoding, terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.fixture
def stdout(monkeypatch: pytest.MonkeyPatch) -> _Stdout:
    """The process's own stdout, a pipe in UTF-8, as root_help sees it."""
    fake = _Stdout()
    monkeypatch.setattr(sys, "__stdout__", fake)
    # the choice of page, whichever typer and rich are installed: as if they printed the pages
    recorded = root_help.recorded_printers(_stored())
    monkeypatch.setattr(root_help, "printers_line", lambda: recorded)
    return fake


CLEAN = {"TERM": "xterm-256color", "PATH": "/usr/bin", "HOME": "/home/user", "LANG": "C.UTF-8"}


def test_a_plain_start_is_served(stdout: _Stdout) -> None:
    stored = _stored()
    assert root_help.page(["--help"], CLEAN, stdout) == root_help.unpack(stored, 80, root_help.PLAIN)
    wide = {**CLEAN, "COLUMNS": "150", "NO_COLOR": "1"}  # no colours to drop from a plain page
    assert root_help.page(["-h"], wide, stdout) == root_help.unpack(stored, 150, root_help.PLAIN)
    stdout.terminal = True
    for environ, mode in [
        ({"COLUMNS": "70"}, root_help.TERMINAL),
        ({"COLUMNS": "70", "NO_COLOR": ""}, root_help.TERMINAL),  # rich: empty is not set
        ({"COLUMNS": "70", "NO_COLOR": "0"}, root_help.TERMINAL_NO_COLOR),
    ]:
        assert root_help.page(["-h"], {**CLEAN, **environ}, stdout) == root_help.unpack(stored, 70, mode)


UNUSUAL_VARIABLES = [
    *sorted(root_help.DECLINE_VARIABLES),
    "_TDSP_DEPLOY_COMPLETE",
    "_TYPER_COMPLETE_ARGS",
    "_TYPER_FORCE_DISABLE_TERMINAL",
    "TYPER_USE_RICH",
]


@pytest.mark.parametrize("name", UNUSUAL_VARIABLES)
def test_a_variable_rich_typer_or_completion_reads_is_left_to_typer(stdout: _Stdout, name: str) -> None:
    assert root_help.page(["--help"], {**CLEAN, name: "1"}, stdout) is None
    assert root_help.page(["--help"], {**CLEAN, name: ""}, stdout) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"TERM": "dumb"},
        {"TERM": "unknown"},
        {"COLUMNS": "wide"},
        {"COLUMNS": " 80"},
        {"COLUMNS": "\u0668\u0660"},  # digits to str.isdigit, not plain ASCII ones
        {"COLUMNS": "0"},
        {"COLUMNS": "39"},
        {"COLUMNS": "201"},
        {"LINES": "tall"},
    ],
    ids=repr,
)
def test_an_unusual_terminal_or_width_is_left_to_typer(stdout: _Stdout, environ: dict[str, str]) -> None:
    assert root_help.page(["--help"], {**CLEAN, **environ}, stdout) is None


@pytest.mark.parametrize(
    "args",
    [[""], ["--help", "--help"], ["-h", "validate"], ["validate", "--help"], ["--version"], ["--HELP"]],
)
def test_other_arguments_are_left_to_typer(stdout: _Stdout, args: list[str]) -> None:
    assert root_help.page(args, CLEAN, stdout) is None


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "utf-16", ""])
def test_a_stdout_not_in_utf8_is_left_to_typer(stdout: _Stdout, encoding: str) -> None:
    stdout.encoding = encoding
    assert root_help.page(["--help"], CLEAN, stdout) is None


def test_a_replaced_stdout_or_another_platform_is_left_to_typer(
    stdout: _Stdout, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert root_help.page(["--help"], CLEAN, _Stdout()) is None  # not the process's own stdout
    monkeypatch.setattr(root_help.os, "name", "nt")
    assert root_help.page(["--help"], CLEAN, stdout) is None


def test_missing_or_damaged_pages_are_left_to_typer(
    stdout: _Stdout, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stored = _stored()
    absent, cut, damaged = tmp_path / "absent.bin", tmp_path / "cut.bin", tmp_path / "damaged.bin"
    cut.write_bytes(stored[:-40])  # the last page, (200, terminal without colours), loses its end
    # a byte in the middle of that page: its index entry follows the magic line and dictionary
    start = len(root_help.MAGIC) + len(root_help.recorded_printers(stored) or b"")
    head = start + 4 + int.from_bytes(stored[start : start + 4], "big")
    entry = head + 8 * (len(root_help.MODES) * len(root_help.WIDTHS) - 1)
    offset, length = (int.from_bytes(stored[i : i + 4], "big") for i in (entry, entry + 4))
    assert offset + length == len(stored)
    position = offset + length // 2
    damaged.write_bytes(stored[:position] + bytes([stored[position] ^ 0xFF]) + stored[position + 1 :])
    environ = {**CLEAN, "COLUMNS": "200", "NO_COLOR": "1"}
    stdout.terminal = True
    last = root_help.unpack(stored, 200, root_help.TERMINAL_NO_COLOR)
    assert last is not None and root_help.page(["--help"], environ, stdout) == last
    for path in (absent, cut, damaged):
        monkeypatch.setattr(root_help, "PAGES_PATH", str(path))
        assert root_help.page(["--help"], environ, stdout) is None, path.name
    assert root_help.unpack(b"tdsp-deploy root help 0\n" + stored[len(root_help.MAGIC) :], 80, 0) is None


@pytest.mark.parametrize(
    "environ", [{"FORCE_COLOR": "1"}, {"COLUMNS": "300"}, {"TERMINAL_WIDTH": "90"}], ids=repr
)
def test_a_declined_help_is_typer_s_own(environ: dict[str, str]) -> None:
    """The real console script, declining: typer is imported and prints its help."""
    environ = _clean_environ(**environ)
    fast = _run([sys.executable, "-X", "importtime", str(SCRIPT), "--help"], environ)
    typer = _run([sys.executable, *TYPER_ONLY, "--help"], environ)
    assert (fast.returncode, fast.stdout) == (typer.returncode, typer.stdout) and fast.returncode == 0
    assert re.search(rb"\|\s+typer\s*$", fast.stderr, re.MULTILINE)


def test_pages_printed_by_another_typer_or_rich_are_left_to_typer(
    stdout: _Stdout, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = root_help.recorded_printers(_stored())
    assert recorded is not None and recorded.startswith(b"typer==") and b" rich==" in recorded
    assert root_help.page(["--help"], CLEAN, stdout) is not None
    for other in (b"typer==0.0.1 rich==15.0.0\n", recorded.replace(b"rich==", b"rich==1"), None):
        monkeypatch.setattr(root_help, "printers_line", lambda other=other: other)
        assert root_help.page(["--help"], CLEAN, stdout) is None, other


def test_the_installed_versions_are_read_beside_the_packages() -> None:
    import importlib.metadata

    line = root_help.printers_line()
    assert line == (
        f"typer=={importlib.metadata.version('typer')} rich=={importlib.metadata.version('rich')}\n".encode()
    )
