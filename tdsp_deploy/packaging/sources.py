"""Which files go into a package, and under which names.

The archive mirrors Azure ML's layout: ``model/<basename>`` is what ``AZUREML_MODEL_DIR``
points into, ``code/`` is the scoring folder, ``environment/`` the dependency file. Symbolic
links are followed and archived as their content, so the archive never holds a link; a link
that leads out of the project is refused rather than shipping, say, ``~/.ssh`` by accident.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tdsp_deploy.packaging.errors import PackagingError, read_error

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase

# Build and editor debris: never part of what a model or a scoring script needs.
JUNK_NAMES = frozenset({"__pycache__", ".git", ".DS_Store"})
JUNK_SUFFIXES = (".pyc",)
GENERATED_SCRIPT = "score.py"  # code/score.py, when the package generates the entry script


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One regular file to archive: where it is read from and its name in the archive."""

    arcname: str
    path: Path  # the real file (links resolved); for generated content, what it stands for
    size: int
    mode: int  # 0o644 or 0o755
    data: bytes | None = None  # generated content (the entry script of an MLflow model)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Everything a package holds, before any byte is read."""

    files: list[SourceFile]  # sorted by arcname
    model_path: str  # "model/<basename>"
    script: str  # "code/<script_name>"
    environment: dict[str, str] | None

    @property
    def folders(self) -> list[str]:
        """Every folder that holds a file, parents first (empty folders are left out, as git does)."""
        found: set[str] = set()
        for f in self.files:
            parts = f.arcname.split("/")[:-1]
            found.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return sorted(found)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def plan(
    manifest: ManifestBase, out_dir: Path, archive_pattern: str, project_dir: Path | None = None
) -> Layout:
    """List the files of the package for ``manifest``; nothing is read yet.

    ``archive_pattern`` matches the names of archives and their temporary files, which are
    never packaged when ``out_dir`` sits in the project.
    """
    model = _real(manifest.model.path, "model.path")
    scoring = manifest.scoring
    code = _real(scoring.code, "scoring.code") if scoring is not None else None  # type: ignore[arg-type]
    env = manifest.environment
    project = (project_dir or _common_root(model, code, env.requirements, env.conda_file)).resolve()
    # The name as the manifest gives it, not where a symlink leads: Azure ML does the same.
    model_name = manifest.model.path.name or model.name
    if not model_name:
        raise PackagingError(
            f"model.path {model} has no name to keep", hint="point model.path at a file or folder"
        )
    model_arc = f"model/{model_name}"
    walker = _Walker(project=project, out_dir=out_dir.resolve(), archive_name=re.compile(archive_pattern))

    files = list(walker.walk_any(model, model_arc))
    if not files:
        raise PackagingError(
            f"model folder {model} holds no files", hint="point model.path at the trained model"
        )
    if code is not None:
        # The model is under model/ already: a copy in code/ would ship it twice.
        files += walker.walk_any(code, "code", model=model)
    else:
        files.append(_generated_entry_script(model, model_name))
    environment = None
    for field, source, arcname in (
        ("requirements", env.requirements, "environment/requirements.txt"),
        ("conda_file", env.conda_file, "environment/conda.yaml"),
    ):
        if source is not None:
            files.append(walker.file(_real(source, f"environment.{field}"), arcname))
            environment = {field: arcname}
    files.sort(key=lambda f: f.arcname)
    script = f"code/{scoring.script_name if scoring is not None else GENERATED_SCRIPT}"
    if not any(f.arcname == script for f in files):
        raise PackagingError(
            f"the scoring script {scoring.script if scoring else script} would be left out of the package",
            hint="do not name it like build debris (*.pyc) or put it inside the model or output folder",
        )
    return Layout(files=files, model_path=model_arc, script=script, environment=environment)


def _generated_entry_script(model: Path, model_name: str) -> SourceFile:
    """An MLflow model without a scoring script: the entry script that serves it (mlflow_model)."""
    from tdsp_deploy.mlflow_model import MLmodelError, entry_script, read_mlmodel

    try:
        read_mlmodel(model)
    except MLmodelError as exc:
        raise PackagingError(str(exc), hint="point model.path at the folder MLflow saved") from None
    data = entry_script(model_name)
    return SourceFile(f"code/{GENERATED_SCRIPT}", model / "MLmodel", len(data), 0o644, data)


def _real(path: Path, field: str) -> Path:
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        raise PackagingError(
            f"{field} {path} does not exist any more",
            hint="it was there when the manifest was validated; check it was not moved or deleted",
        ) from None
    except OSError as exc:
        raise read_error(path, exc) from None


def _common_root(*paths: Path | None) -> Path:
    """The folder that holds every input: the default bound for where links may lead."""
    folders = [str(p if p.is_dir() else p.parent) for p in paths if p is not None]
    return Path(os.path.commonpath(folders))


def _is_junk(name: str) -> bool:
    return name in JUNK_NAMES or name.endswith(JUNK_SUFFIXES)


def _mode(st: os.stat_result) -> int:
    return 0o755 if st.st_mode & 0o111 else 0o644


@dataclasses.dataclass
class _Walker:
    project: Path
    out_dir: Path
    archive_name: re.Pattern[str]

    def walk_any(self, root: Path, arcname: str, *, model: Path | None = None) -> Iterator[SourceFile]:
        if root.is_dir():
            # A folder is left out only when it sits inside `root`; leaving out an ancestor
            # of `root` would leave out everything.
            excluded = tuple(x for x in (model, self.out_dir) if x is not None and not root.is_relative_to(x))
            yield from self._walk(root, arcname, excluded)
        else:
            yield self.file(root, arcname)

    def file(self, path: Path, arcname: str) -> SourceFile:
        st = self._stat(path)
        return SourceFile(arcname=arcname, path=path, size=st.st_size, mode=_mode(st))

    def _walk(self, root: Path, arcname: str, excluded: tuple[Path, ...]) -> Iterator[SourceFile]:
        # Depth-first over real folders; `ancestors` catches a link that loops back up.
        stack: list[tuple[Path, str, frozenset[Path]]] = [(root, arcname, frozenset({root}))]
        while stack:
            folder, arc, ancestors = stack.pop()
            for name in self._list(folder):
                if _is_junk(name):
                    continue
                path = self._follow(folder / name)
                if any(path.is_relative_to(x) for x in excluded) or self._is_archive(path):
                    continue
                _check_name(folder / name)
                st = self._stat(path)
                if stat.S_ISDIR(st.st_mode):
                    if path in ancestors:
                        raise PackagingError(
                            f"{folder / name} links back to its own parent folder {path}",
                            hint="remove the link; it would make the package endless",
                        )
                    stack.append((path, f"{arc}/{name}", ancestors | {path}))
                elif stat.S_ISREG(st.st_mode):
                    yield SourceFile(arcname=f"{arc}/{name}", path=path, size=st.st_size, mode=_mode(st))
                # Sockets, fifos and devices are skipped: they hold no content to ship (git does the same).

    def _is_archive(self, path: Path) -> bool:
        return path.parent == self.out_dir and bool(self.archive_name.fullmatch(path.name))

    def _list(self, folder: Path) -> list[str]:
        try:
            return sorted(os.listdir(folder))
        except OSError as exc:
            raise read_error(folder, exc) from None

    def _follow(self, path: Path) -> Path:
        if not path.is_symlink():
            return path  # its folder is real, so the path is too
        try:
            real = path.resolve(strict=True)
        except FileNotFoundError:
            raise PackagingError(
                f"{path} is a link to {os.readlink(path)}, which does not exist",
                hint="fix or remove the broken link",
            ) from None
        except (OSError, RuntimeError) as exc:
            raise PackagingError(
                f"{path} is a link that cannot be followed: {exc}", hint="fix or remove it"
            ) from None
        if not real.is_relative_to(self.project):
            raise PackagingError(
                f"{path} links to {real}, outside the project {self.project}",
                hint="copy the file into the project; a package never takes files from outside it",
            )
        return real

    def _stat(self, path: Path) -> os.stat_result:
        try:
            return path.stat()
        except OSError as exc:
            raise read_error(path, exc) from None


def _check_name(path: Path) -> None:
    # Archive names are POSIX paths; a backslash would become a folder on Windows.
    if "\\" in path.name:
        raise PackagingError(f"{path}: file names with '\\' cannot be packaged", hint="rename the file")
