"""`tdsp-deploy --help` (and `-h`, and bare `tdsp-deploy`) answered without typer, click or rich.

The root help is the one page of the CLI that depends on nothing but the terminal's width and
whether stdout is a terminal, and importing the parser and its renderer costs far more than
printing it. root_help.bin holds that page exactly as typer and rich print it, for each width
in WIDTHS, in each of MODES (plain; styled with ANSI; styled without colours, as rich styles it
under NO_COLOR), written by ``python -m tdsp_deploy.cli.root_help_build`` from the real command
tree (a test fails when it is stale). The pages are only as right as the typer and rich that
printed them: the file names their versions, and with any other version installed typer answers.

``page`` picks the stored page the way rich's console would pick its width and mode, and
declines (None) whenever anything could make rich or typer print something else: other
arguments, a variable either of them (or shell completion) reads (NO_COLOR aside), a width outside WIDTHS,
stdout not UTF-8 or not the process's own, a terminal rich would not style (TERM=dumb), a
platform other than POSIX. A declined help goes to typer, as before.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Mapping, Sequence

# os.path, not pathlib: pathlib's imports would cost a good share of this page's start-up
PAGES_PATH = os.path.join(os.path.dirname(__file__), "root_help.bin")
MAGIC = b"tdsp-deploy root help 3\n"
# the distributions whose output the pages are: their versions follow MAGIC, one line
PRINTERS = ("typer", "rich")
FIRST_WIDTH, LAST_WIDTH = 40, 200
WIDTHS = range(FIRST_WIDTH, LAST_WIDTH + 1)
# bare `tdsp-deploy` prints the same help (no_args_is_help); the tests compare it with typer's
ARGUMENTS = (["--help"], ["-h"], [])
# How rich prints: to a pipe or file (NO_COLOR changes nothing there), to a terminal, to a
# terminal with NO_COLOR set (bold and dim kept, colours dropped).
PLAIN, TERMINAL, TERMINAL_NO_COLOR = MODES = (0, 1, 2)

# Read by rich's console or typer's help formatter, or by click/typer shell completion: with any
# of them set the page may differ, so typer answers.
DECLINE_VARIABLES = frozenset(
    {
        "FORCE_COLOR",
        "PY_COLORS",
        "GITHUB_ACTIONS",
        "TTY_COMPATIBLE",
        "TTY_INTERACTIVE",
        "TERMINAL_WIDTH",
        "JUPYTER_COLUMNS",
        "JUPYTER_LINES",
        "DATABRICKS_RUNTIME_VERSION",
        "COMP_WORDS",
        "COMP_CWORD",
    }
)
DECLINE_PREFIXES = ("_TDSP_DEPLOY_", "_TYPER", "TYPER_")
DUMB_TERMINALS = ("dumb", "unknown")


def page(args: Sequence[str], environ: Mapping[str, str], stdout: object) -> bytes | None:
    """The bytes typer would print for ``args`` on ``stdout``; None when not sure."""
    if list(args) not in ARGUMENTS or os.name != "posix" or stdout is not sys.__stdout__:
        return None
    if any(name in DECLINE_VARIABLES or name.startswith(DECLINE_PREFIXES) for name in environ):
        return None
    if environ.get("TERM", "").strip().lower() in DUMB_TERMINALS:
        return None
    if (getattr(stdout, "encoding", None) or "").lower().replace("_", "-") != "utf-8":
        return None
    for name in ("COLUMNS", "LINES"):  # rich ignores a value that is not digits; typer's answer then
        value = environ.get(name)
        if value is not None and not (value.isascii() and value.isdigit()):
            return None
    try:
        terminal = stdout.isatty()  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return None
    width = _width(environ)
    if width not in WIDTHS:
        return None
    if not terminal:
        return _stored(width, PLAIN)
    # rich's rule: NO_COLOR set to anything but the empty text
    return _stored(width, TERMINAL_NO_COLOR if environ.get("NO_COLOR", "") != "" else TERMINAL)


def _width(environ: Mapping[str, str]) -> int:
    """rich's width: COLUMNS, else the first of stdin, stdout, stderr that is a terminal, else 80."""
    columns = environ.get("COLUMNS")
    if columns is not None:
        return int(columns)
    width = 0
    for descriptor in (0, 1, 2):
        try:
            width = os.get_terminal_size(descriptor).columns
        except (AttributeError, ValueError, OSError):
            continue
        break
    return width or 80


def _stored(width: int, mode: int) -> bytes | None:
    try:
        with open(PAGES_PATH, "rb") as file:
            data = file.read()
    except OSError:
        return None
    if recorded_printers(data) != printers_line():  # another typer or rich may print otherwise
        return None
    return unpack(data, width, mode)


def installed_version(name: str) -> str | None:
    """The version of the distribution ``name`` that ``import name`` would load: the
    ``name-VERSION.dist-info`` beside the first sys.path entry holding the package
    (importlib.metadata would cost more than the whole page)."""
    for entry in sys.path:
        folder = entry or os.getcwd()
        if not os.path.isdir(os.path.join(folder, name)):
            continue
        try:
            names = os.listdir(folder)
        except OSError:
            return None
        prefix, suffix = f"{name}-", ".dist-info"
        found = [n[len(prefix) : -len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)]
        return found[0] if len(found) == 1 else None
    return None


def printers_line() -> bytes | None:
    """The line naming the installed typer and rich, as root_help.bin records them."""
    versions = [installed_version(name) for name in PRINTERS]
    if None in versions:
        return None
    return (
        " ".join(f"{name}=={version}" for name, version in zip(PRINTERS, versions, strict=True)).encode()
        + b"\n"
    )


def recorded_printers(data: bytes) -> bytes | None:
    """The versions line of ``data`` (root_help.bin), None if it has none."""
    if not data.startswith(MAGIC):
        return None
    end = data.find(b"\n", len(MAGIC))
    return data[len(MAGIC) : end + 1] if end >= 0 else None


def unpack(data: bytes, width: int, mode: int) -> bytes | None:
    """One page of root_help.bin: the magic line, the versions line, the zlib dictionary's
    length and the dictionary, then an offset and a length per (width, mode), then the
    compressed pages."""
    printers = recorded_printers(data)
    if printers is None:
        return None
    position = len(MAGIC) + len(printers)
    dictionary_length = int.from_bytes(data[position : position + 4], "big")
    position += 4
    dictionary = data[position : position + dictionary_length]
    position += dictionary_length
    entry = position + 8 * (len(MODES) * (width - FIRST_WIDTH) + mode)
    offset = int.from_bytes(data[entry : entry + 4], "big")
    length = int.from_bytes(data[entry + 4 : entry + 8], "big")
    if entry + 8 > len(data) or offset + length > len(data):
        return None
    try:
        decompressor = zlib.decompressobj(zdict=dictionary)
        page = decompressor.decompress(data[offset : offset + length]) + decompressor.flush()
    except zlib.error:
        return None
    # a cut stream decompresses without an error, to part of the page
    return page if decompressor.eof and not decompressor.unused_data else None


def pack(pages: Mapping[tuple[int, int], bytes], dictionary: bytes, printers: bytes) -> bytes:
    """root_help.bin for ``pages`` (every width of WIDTHS in every one of MODES), as printed
    by the typer and rich that ``printers`` names."""
    head = MAGIC + printers + len(dictionary).to_bytes(4, "big") + dictionary
    keys = [(width, mode) for width in WIDTHS for mode in MODES]
    compressed = []
    for key in keys:
        compressor = zlib.compressobj(9, zdict=dictionary)
        compressed.append(compressor.compress(pages[key]) + compressor.flush())
    offset = len(head) + 8 * len(keys)
    index = b""
    for blob in compressed:
        index += offset.to_bytes(4, "big") + len(blob).to_bytes(4, "big")
        offset += len(blob)
    return head + index + b"".join(compressed)


def serve(args: Sequence[str]) -> bool:
    """Print the root help if ``page`` vouches for it; False, having printed nothing, if not."""
    text = page(args, os.environ, sys.stdout)
    if text is None:
        return False
    sys.stdout.flush()
    sys.stdout.buffer.write(text)
    sys.stdout.flush()
    return True
