"""The lock: ``package.json``, the last member of every package.

It lists every file with its sha256, size and mode, names the model with its content hash,
and records the library versions of the environment that built it. ``package_id`` is derived
from content only (paths, hashes, modes, model name and version, script), so one project gives
one id wherever it lives and however often its files are touched. The lock is written last
because it can only be known once every byte has been hashed, in the same single pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

FORMAT = 1
LOCK_NAME = "package.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class LockedFile:
    """One file of the package, by its path inside the archive."""

    path: str
    sha256: str
    size: int
    mode: int = 0o644  # 0o644 or 0o755: the only modes a package holds

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o111)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "mode": f"{self.mode:04o}"}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LockedFile:
        path, sha256, size = doc["path"], doc["sha256"], doc["size"]
        mode = int(doc.get("mode", "0644"), 8)
        if not isinstance(path, str) or not is_safe_path(path):
            raise ValueError(f"unsafe file path {path!r}")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"{path}: sha256 is not 64 hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{path}: size must be a non-negative integer")
        if mode not in (0o644, 0o755):
            raise ValueError(f"{path}: mode must be 0644 or 0755")
        return cls(path=path, sha256=sha256, size=size, mode=mode)


@dataclasses.dataclass(frozen=True)
class LockedModel:
    name: str
    version: str
    path: str  # "model/<basename>": the model's place under AZUREML_MODEL_DIR
    sha256: str  # see model_sha256()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LockedModel:
        model = cls(
            name=str(doc["name"]), version=str(doc["version"]), path=str(doc["path"]), sha256=doc["sha256"]
        )
        if not _SHA256.fullmatch(str(model.sha256)):
            raise ValueError("model.sha256 is not 64 hex digits")
        return model


@dataclasses.dataclass(frozen=True)
class PackageLock:
    """What ``package.json`` says, field for field."""

    package_id: str
    name: str
    model: LockedModel
    script: str  # "code/<script_name>"
    environment: dict[str, str] | None  # {"requirements": path} or {"conda_file": path}
    files: tuple[LockedFile, ...]  # sorted by path; package.json itself is not listed
    tool: dict[str, str]
    python: str
    libraries: dict[str, str | None]  # distribution -> installed version (None: not installed)
    format: int = FORMAT

    @property
    def model_version(self) -> str:
        return self.model.version

    @property
    def scoring_script_name(self) -> str:
        """The script's path inside ``code/``, as the inference server is given it."""
        return self.script.removeprefix("code/")

    @property
    def size(self) -> int:
        """Bytes of content (all files, without tar overhead)."""
        return sum(f.size for f in self.files)

    def file(self, path: str) -> LockedFile | None:
        return next((f for f in self.files if f.path == path), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "package_id": self.package_id,
            "name": self.name,
            "model": self.model.to_json(),
            "scoring": {"script": self.script},
            "environment": self.environment,
            "files": [f.to_json() for f in self.files],
            "tool": self.tool,
            "python": self.python,
            "libraries": self.libraries,
        }

    def to_bytes(self) -> bytes:
        """The exact bytes of package.json (stable: same lock, same bytes)."""
        return (json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PackageLock:
        """Parse and check a lock; ValueError says what is wrong.

        A lock whose ``package_id`` does not match its own listing has been edited by hand or
        corrupted, and is refused here so no caller trusts it.
        """
        try:
            if doc.get("format") != FORMAT:
                raise ValueError(
                    f"format {doc.get('format')!r} is not {FORMAT} (made by another tdsp-deploy?)"
                )
            files = tuple(LockedFile.from_json(f) for f in doc["files"])
            environment = doc["environment"]
            lock = cls(
                package_id=str(doc["package_id"]),
                name=str(doc["name"]),
                model=LockedModel.from_json(doc["model"]),
                script=str(doc["scoring"]["script"]),
                environment=dict(environment) if environment is not None else None,
                files=files,
                tool=dict(doc["tool"]),
                python=str(doc["python"]),
                libraries=dict(doc["libraries"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"missing or malformed field: {exc}") from None
        if [f.path for f in files] != sorted({f.path for f in files}):
            raise ValueError("files are not sorted by path, or a path is listed twice")
        expected = package_id(files, lock.model.name, lock.model.version, lock.script)
        if lock.package_id != expected:
            raise ValueError(f"package_id {lock.package_id} does not match the files listed ({expected})")
        _check_references(lock)
        return lock


def _check_references(lock: PackageLock) -> None:
    """The script, the model and the environment file the lock names are files it lists (and
    so files that extraction verified): a crafted lock could otherwise point the server at a
    script outside ``code/``, or at one that no hash covers."""
    listed = {f.path for f in lock.files}
    script = lock.script
    if not (script.startswith("code/") and is_safe_path(script) and script in listed):
        raise ValueError(f"scoring script {script!r} is not a file under code/ that the lock lists")
    model = lock.model.path
    if not (
        model.startswith("model/")
        and is_safe_path(model)
        and (model in listed or any(path.startswith(model + "/") for path in listed))
    ):
        raise ValueError(f"model path {model!r} is not a file or folder under model/ that the lock lists")
    for kind, path in (lock.environment or {}).items():
        if not (isinstance(path, str) and path.startswith("environment/") and path in listed):
            raise ValueError(f"environment {kind} {path!r} is not a file the lock lists")


def package_id(files: Iterable[LockedFile], model_name: str, model_version: str, script: str) -> str:
    """sha256 over the sorted ``path, sha256, mode`` lines plus the model and the script.

    Modes are in because the archive holds them: two packages with one id must be
    byte-identical. Sizes are implied by the hashes.
    """
    digest = hashlib.sha256(b"tdsp-deploy package 1\n")
    for f in sorted(files, key=lambda f: f.path):
        digest.update(f"file\0{f.path}\0{f.sha256}\0{f.mode:04o}\n".encode())
    digest.update(f"model\0{model_name}\0{model_version}\nscript\0{script}\n".encode())
    return digest.hexdigest()


def model_sha256(model_files: list[LockedFile], model_path: str) -> str:
    """The model's content hash.

    A single file: its own sha256 (what ``sha256sum`` prints). A folder: the sha256 of the
    ``sha256sum``-style listing ``<sha256>  <path inside the folder>\\n``, sorted by path, so
    it does not depend on the folder's name. Names are escaped as GNU ``sha256sum`` does (a
    name with a newline or a backslash: the line starts with a backslash, and those are written
    ``\\n`` and ``\\\\``), so one listing cannot be read as another: without it a file named
    ``"a\\n<sha256>  b"`` gave the same listing as two files ``a`` and ``b``, and Azure ML
    reuses a model registration whose hash matches. Ordinary names hash as they always did.
    """
    if len(model_files) == 1 and model_files[0].path == model_path:
        return model_files[0].sha256
    prefix = model_path + "/"
    lines = sorted((f.path.removeprefix(prefix), f.sha256) for f in model_files)
    return hashlib.sha256("".join(_listing_line(sha, path) for path, sha in lines).encode()).hexdigest()


def _listing_line(sha256: str, name: str) -> str:
    if "\\" not in name and "\n" not in name:
        return f"{sha256}  {name}\n"
    escaped = name.replace("\\", "\\\\").replace("\n", "\\n")
    return f"\\{sha256}  {escaped}\n"


def is_safe_path(name: str) -> bool:
    """A relative POSIX path that stays where it is put: no '..', no absolute, no empty part."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    parts = PurePosixPath(name).parts
    return all(p not in ("", ".", "..") for p in parts) and "/".join(parts) == name
