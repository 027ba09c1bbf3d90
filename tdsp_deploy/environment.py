"""Is the Python environment that will run the model the one the manifest asks for?

The local target runs slots in the current environment, so a requirements or conda file
that names a missing package, or another version than the installed one, earns a warning
(not an error: the user may know better, and the smoke test will tell).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:  # packaging and importlib.metadata load when a file is checked, not on import:
    # `validate` imports this module through the local backend and rarely checks one
    from packaging.requirements import Requirement

    from tdsp_deploy.manifest.model import EnvironmentSection

# conda packages that are not Python distributions (or are the interpreter itself)
NOT_DISTRIBUTIONS = frozenset({"python", "pip", "setuptools", "wheel"})


def requirement_lines(path: Path) -> list[str]:
    """Requirement specifiers of a pip requirements file, without options, comments and includes."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-", "--")) or "://" in line:
            continue
        lines.append(line)
    return lines


def conda_requirement_lines(path: Path) -> list[str]:
    """Pip-style specifiers from a conda file: its pip section as is, conda pins translated."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    lines: list[str] = []
    for dependency in doc.get("dependencies", []) or []:
        if isinstance(dependency, dict):
            lines += [str(d) for d in dependency.get("pip", []) or [] if not str(d).startswith("-")]
        else:
            spec = str(dependency).split("::")[-1]
            name, _, version = spec.partition("=")
            version = version.lstrip("=").split("=")[0]
            if name.strip().lower() in NOT_DISTRIBUTIONS:
                continue
            lines.append(f"{name.strip()}=={version}" if version and "*" not in version else name.strip())
    return lines


def declared_requirements(environment: EnvironmentSection) -> list[Requirement]:
    if environment.requirements:
        lines = requirement_lines(environment.requirements)
    elif environment.conda_file:
        lines = conda_requirement_lines(environment.conda_file)
    else:
        return []
    return list(_parse(lines))


def _parse(lines: Iterable[str]) -> Iterable[Requirement]:
    from packaging.requirements import InvalidRequirement, Requirement

    for line in lines:
        try:
            yield Requirement(line)
        except InvalidRequirement:
            continue


def check_environment(environment: EnvironmentSection) -> list[str]:
    """Warnings for each declared requirement the current environment does not satisfy."""
    import importlib.metadata

    warnings = []
    for requirement in declared_requirements(environment):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            warnings.append(
                f"'{requirement.name}' is required by the environment file but not installed here; "
                f"install it (pip install '{requirement}') or the model may fail to load"
            )
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            warnings.append(
                f"'{requirement.name}' {installed} is installed but the environment file asks for "
                f"'{requirement}'; the local target runs with what is installed"
            )
    return warnings
