"""Write root_help.bin (root_help.py) from the real command tree: each page is what
`tdsp-deploy --help` prints through typer and rich at that width, plain and for a terminal.

    python -m tdsp_deploy.cli.root_help_build          # rewrite it
    python -m tdsp_deploy.cli.root_help_build --check  # exit 1 if it is stale
"""

from __future__ import annotations

import contextlib
import io
import sys

from tdsp_deploy.cli import root_help

REGENERATE = "python -m tdsp_deploy.cli.root_help_build"


def render(width: int, terminal: bool) -> bytes:
    """The root help as typer prints it at ``width``, to a terminal or not."""
    import typer.rich_utils as rich_utils

    from tdsp_deploy.cli import build
    from tdsp_deploy.cli.commands import app

    # the two settings typer's console is made from: the width and whether it is a terminal
    saved = rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL
    rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL = width, terminal
    out = io.StringIO()
    try:
        command = build.click_command(app, ["--help"], "tdsp-deploy")
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            command.main(args=["--help"], prog_name="tdsp-deploy", standalone_mode=False)
    finally:
        rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL = saved
    return out.getvalue().encode("utf-8")


def pages() -> dict[tuple[int, bool], bytes]:
    return {(w, t): render(w, t) for w in root_help.WIDTHS for t in (False, True)}


def stale(data: bytes, fresh: dict[tuple[int, bool], bytes]) -> list[tuple[int, bool]]:
    """The (width, terminal) pages of ``data`` that differ from ``fresh``."""
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
        if differing:
            print(f"{root_help.PAGES_PATH} is stale ({len(differing)} pages); run {REGENERATE}")
            return 1
        return 0
    # the pages share most of their words: a dictionary of two of them makes each page small
    dictionary = fresh[(80, False)] + fresh[(120, True)]
    with open(root_help.PAGES_PATH, "wb") as file:
        file.write(root_help.pack(fresh, dictionary[-32768:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
