"""Write root_help.bin (root_help.py) from the real command tree: each page is what
`tdsp-deploy --help` prints through typer and rich at that width, in each of root_help.MODES.

    python -m tdsp_deploy.cli.root_help_build          # rewrite it
    python -m tdsp_deploy.cli.root_help_build --check  # exit 1 if it is stale
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

from tdsp_deploy.cli import root_help

REGENERATE = "python -m tdsp_deploy.cli.root_help_build"


def render(width: int, mode: int) -> bytes:
    """The root help as typer prints it at ``width`` in ``mode`` (root_help.MODES)."""
    page = _render(width, mode != root_help.PLAIN, mode == root_help.TERMINAL_NO_COLOR)
    if mode == root_help.PLAIN and _render(width, False, True) != page:
        raise RuntimeError("NO_COLOR changes the plain page: root_help.page must tell them apart")
    return page


def _render(width: int, terminal: bool, no_color: bool) -> bytes:
    import typer.rich_utils as rich_utils

    from tdsp_deploy.cli import build
    from tdsp_deploy.cli.commands import app

    # the two settings typer's console is made from: the width and whether it is a terminal
    saved = rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, os.environ.get("NO_COLOR")
    rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL = width, terminal
    os.environ.pop("NO_COLOR", None)
    if no_color:
        os.environ["NO_COLOR"] = "1"  # read by rich's console when typer makes it
    out = io.StringIO()
    try:
        command = build.click_command(app, ["--help"], "tdsp-deploy")
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            command.main(args=["--help"], prog_name="tdsp-deploy", standalone_mode=False)
    finally:
        rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL = saved[:2]
        os.environ.pop("NO_COLOR", None)
        if saved[2] is not None:
            os.environ["NO_COLOR"] = saved[2]
    return out.getvalue().encode("utf-8")


def pages() -> dict[tuple[int, int], bytes]:
    return {(width, mode): render(width, mode) for width in root_help.WIDTHS for mode in root_help.MODES}


def stale(data: bytes, fresh: dict[tuple[int, int], bytes]) -> list[tuple[int, int]]:
    """The (width, mode) pages of ``data`` that differ from ``fresh``."""
    return [key for key, page in fresh.items() if root_help.unpack(data, *key) != page]


def main(argv: list[str]) -> int:
    fresh = pages()
    if "--check" in argv:
        try:
            with open(root_help.PAGES_PATH, "rb") as file:
                data = file.read()
        except OSError:
            data = b""
        differing = stale(data, fresh)
        if root_help.recorded_printers(data) != root_help.printers_line():
            print(f"{root_help.PAGES_PATH} was printed by another typer or rich; run {REGENERATE}")
            return 1
        if differing:
            print(f"{root_help.PAGES_PATH} is stale ({len(differing)} pages); run {REGENERATE}")
            return 1
        return 0
    # the pages share most of their words: a dictionary of two of them makes each page small
    dictionary = fresh[(80, root_help.PLAIN)] + fresh[(120, root_help.TERMINAL)]
    printers = root_help.printers_line()
    if printers is None:
        print("cannot tell which typer and rich are installed (no single dist-info beside each)")
        return 1
    with open(root_help.PAGES_PATH, "wb") as file:
        file.write(root_help.pack(fresh, dictionary[-32768:], printers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
