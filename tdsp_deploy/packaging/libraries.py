"""Which library versions the package was built against.

The names come from the environment file (pip requirements, or a conda file's plain and pip
dependencies) and from the model's own format (an ``.onnx`` file needs onnxruntime, a pickle
needs scikit-learn and joblib, an ``MLmodel`` file needs mlflow). The versions are those
installed where the package is built: what the smoke test ran against, so a drift between
this machine and the target can be spotted. The files are parsed by hand, loosely: this is
a record, not a resolver, and it must not pull in a YAML or packaging dependency.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable
from pathlib import Path

# A requirement starts with a distribution name; what may follow it (extras, a version,
# a marker, "@ url") starts with one of these. Anything else (a path, a URL) has no name.
_REQUIREMENT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:$|[\[(;@<>=!~,\s])")
# conda specs: "numpy=1.26", "conda-forge::numpy>=1", "numpy 1.26.* py311_0"
_CONDA_SPEC = re.compile(r"^(?:[\w.-]+::)?([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_NOT_A_DISTRIBUTION = frozenset({"python"})

_BY_SUFFIX = {
    ".onnx": (("onnxruntime", True), ("onnx", False)),
    ".pkl": (("scikit-learn", True), ("joblib", True)),
    ".pickle": (("scikit-learn", True), ("joblib", True)),
    ".joblib": (("scikit-learn", True), ("joblib", True)),
    ".skops": (("scikit-learn", True), ("skops", True)),  # loads without running the file's code
}
_BY_NAME = {"MLmodel": (("mlflow", True),)}


def canonical(name: str) -> str:
    """PEP 503 name: 'Scikit_Learn' and 'scikit-learn' are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirement_names(text: str) -> list[str]:
    """Distribution names in a pip requirements file (options, -r lines and URLs skipped)."""
    names = []
    for line in _logical_lines(text):
        if line.startswith("-"):
            continue  # -r other.txt, -e ./pkg, --index-url ...: not a name we can look up
        match = _REQUIREMENT.match(line)
        if match:
            names.append(match.group(1))
    return names


def conda_names(text: str) -> list[str]:
    """Distribution names in a conda environment file: its plain dependencies and pip's."""
    names = []
    in_dependencies = False
    top_indent: int | None = None  # where the conda list's dashes are; deeper ones are pip's
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace() and not line.startswith("-"):
            in_dependencies = line.split(":", 1)[0].strip() == "dependencies"
            top_indent = None
            continue
        item = line.lstrip()
        if not in_dependencies or not item.startswith("-"):
            continue
        indent = len(line) - len(item)
        top_indent = indent if top_indent is None else top_indent
        item = item[1:].strip().strip("\"'")
        if item.endswith(":"):
            continue  # "- pip:" opens pip's own list
        match = (_REQUIREMENT if indent > top_indent else _CONDA_SPEC).match(item)
        if match and canonical(match.group(1)) not in _NOT_A_DISTRIBUTION:
            names.append(match.group(1))
    return names


def model_names(model_files: Iterable[str]) -> list[str]:
    """Libraries the model's format implies; optional ones only when installed."""
    names = []
    for path in model_files:
        name = path.rsplit("/", 1)[-1]
        for library, required in _BY_NAME.get(name, ()) + _BY_SUFFIX.get(Path(name).suffix.lower(), ()):
            if required or installed_version(library) is not None:
                names.append(library)
    return names


def libraries(
    *, requirements: str | None, conda_file: str | None, model_files: Iterable[str]
) -> dict[str, str | None]:
    """Distribution -> installed version (None when not installed), sorted by name.

    ``requirements`` and ``conda_file`` are the files' text; ``model_files`` their paths.
    """
    names: list[str] = []
    if requirements is not None:
        names += requirement_names(requirements)
    if conda_file is not None:
        names += conda_names(conda_file)
    names += model_names(model_files)
    return {name: installed_version(name) for name in sorted({canonical(n) for n in names})}


def _logical_lines(text: str) -> Iterable[str]:
    # pip joins lines ending in a backslash, then drops " #" comments.
    joined = re.sub(r"\\\r?\n", "", text)
    for raw in joined.splitlines():
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if line:
            yield line
