"""Is the Python environment that will run the model the one the manifest asks for?

The local target runs slots in the current environment, so a requirements or conda file
that names a missing package, or another version than the installed one, earns a warning
(not an error: the user may know better, and the smoke test will tell).
"""

from __future__ import annotations

import re
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
    """Pip-style specifiers from a conda file: its pip section as is, conda pins translated,
    and numpy held below 2 where conda would hold it (``NUMPY_2_SINCE``)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    lines: list[str] = []
    conda_pins: dict[str, str] = {}
    for dependency in doc.get("dependencies", []) or []:
        if isinstance(dependency, dict):
            lines += [str(d) for d in dependency.get("pip", []) or [] if not str(d).startswith("-")]
        else:
            # conda's match specs: name, name=1.2 (1.2.*), name==1.2.3, name=1.2.3=build, name>=1.2
            found = _CONDA_SPEC.match(str(dependency).split("::")[-1].strip())
            if found is None or found.group(1).lower() in NOT_DISTRIBUTIONS:
                continue
            name, rest = found.group(1), found.group(2).strip()
            if rest[:1] in ("<", ">", "!", "~"):
                lines.append(name + rest.replace(" ", ""))
                if name.lower() == "numpy":
                    conda_pins["numpy"] = rest  # a range of the user's own: no cap added
                continue
            version = rest.lstrip("=").split("=")[0].strip()
            pinned = bool(version) and "*" not in version
            lines.append(f"{name}=={version}" if pinned else name)
            conda_pins[name.lower()] = version if pinned else ""
    if _needs_numpy_1(conda_pins):
        lines.append("numpy<2")
    return lines


_CONDA_SPEC = re.compile(r"^([A-Za-z0-9_.\-]+)(.*)$")

# conda-forge marked every build made before numpy 2 as needing numpy<2 (it patched its
# package index), so a conda file pinning, say, scikit-learn=1.2.2 gets numpy 1.26 on Azure ML.
# PyPI's wheels of those releases say nothing of the kind: a resolver takes numpy 2 and the
# import fails ("numpy.dtype size changed"). The first release of each built for numpy 2:
NUMPY_2_SINCE = {
    "scikit-learn": (1, 4, 2),
    "scipy": (1, 13, 0),
    "pandas": (2, 2, 2),
    "matplotlib": (3, 8, 4),
    "pyarrow": (16, 0, 0),
    "statsmodels": (0, 14, 2),
    "numba": (0, 60, 0),
    "h5py": (3, 11, 0),
}


def _needs_numpy_1(conda_pins: dict[str, str]) -> bool:
    """A conda pin older than its numpy-2 release, and numpy itself not pinned."""
    if conda_pins.get("numpy"):
        return False
    for name, version in conda_pins.items():
        since = NUMPY_2_SINCE.get(name)
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
        if since and parts and parts < since[: len(parts)]:
            return True
    return False


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
