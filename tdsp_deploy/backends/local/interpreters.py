"""Which Python a deployment's environment is built on: the version the manifest or its conda
file declares, found among this machine's interpreters (pyenv's versions, then uv's), else the
nearest installed minor version with a warning."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def uv_binary() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def conda_python(conda_file: Path) -> str | None:
    import yaml

    doc = yaml.safe_load(conda_file.read_text(encoding="utf-8")) or {}
    for dependency in doc.get("dependencies", []) or []:
        match = re.fullmatch(r"python\s*=+\s*([0-9.]+)\S*", str(dependency).strip())
        if match:
            return match.group(1)
    return None


def choose_python(declared: str | None, warn: Callable[[str], None]) -> tuple[str, str]:
    """The interpreter of the declared version when one is installed here (this one, one
    pyenv installed, or one uv finds), else the nearest installed version, with a warning.
    The cheap places are asked first: asking uv probes every interpreter on the PATH."""
    here = ".".join(map(str, sys.version_info[:3]))
    if not declared or _release(here)[:2] == _release(declared)[:2]:
        return sys.executable, here
    pyenv = [(here, sys.executable), *_pyenv_pythons()]
    version, path = nearest_python(declared, pyenv)
    if _release(version)[:2] == _release(declared)[:2]:
        return path, version
    found = _uv_python_find(declared)
    if found is not None:
        return found
    version, path = nearest_python(declared, [*pyenv, *_uv_pythons()])
    warn(
        f"Python {declared} is declared but not installed here; the deployment runs on Python {version}, "
        "the nearest installed"
    )
    return path, version


def nearest_python(declared: str, candidates: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """The (version, path) of ``candidates`` nearest to ``declared``: the same minor version
    (the same patch first, else the newest), else the closest minor, newer on a tie."""
    wanted = _release(declared)

    def distance(candidate: tuple[str, str]) -> tuple[int, int, int, tuple[int, ...]]:
        have = _release(candidate[0])
        minor_gap = abs(have[1] - wanted[1]) if have[0] == wanted[0] else 1000
        newer_first = 0 if have[:2] >= wanted[:2] else 1
        patch_miss = 0 if len(wanted) < 3 or have[:3] == wanted[:3] else 1
        return (minor_gap, newer_first, patch_miss, tuple(-p for p in have))

    return min(candidates, key=distance)


def installed_pythons() -> list[tuple[str, str]]:
    """(version, path) of the CPython 3 interpreters on this machine: what uv finds (PATH,
    uv's own) and pyenv's versions, whose shims uv cannot run unless selected."""
    return [*_uv_pythons(), *_pyenv_pythons()]


def _uv_pythons() -> list[tuple[str, str]]:
    try:
        listed = subprocess.run(
            [uv_binary(), "python", "list", "--only-installed", "--no-python-downloads", "--output-format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        items = json.loads(listed or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    return [
        (str(item["version"]), str(item["path"]))
        for item in items
        if item.get("implementation") == "cpython" and item.get("path") and "/shims/" not in item["path"]
    ]


def _pyenv_pythons() -> list[tuple[str, str]]:
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = []
    for folder in sorted(root.glob("3.*")) if root.is_dir() else []:
        python = folder / "bin" / "python3"
        if re.fullmatch(r"3\.\d+\.\d+", folder.name) and python.is_file():
            found.append((folder.name, str(python)))
    return found


def _uv_python_find(declared: str) -> tuple[str, str] | None:
    try:
        found = subprocess.run(
            [uv_binary(), "python", "find", declared, "--no-python-downloads"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        path = found.stdout.strip()
        if found.returncode != 0 or not path:
            return None
        version = subprocess.run(
            [path, "-c", "import sys; print('.'.join(map(str, sys.version_info[:3])))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path, version or declared


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3]) or (0,)
