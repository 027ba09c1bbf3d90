"""Packaging: deterministic archives, the lock, verified extraction, and their failures."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import tdsp_deploy
from tdsp_deploy.backends.base import ProgressEvent
from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import BackendError, DeploymentFailed, ExitCode
from tdsp_deploy.manifest.model import manifest_class
from tdsp_deploy.packaging import (
    LockedFile,
    LockedModel,
    PackageLock,
    PackagingError,
    build_package,
    extract_package,
    package_id,
    read_lock,
    tarstream,
)
from tdsp_deploy.packaging import libraries as libs
from tests.fakes.packaging_project import SCORE, make_project


def load(root: Path, **overrides: Any):
    raw: dict[str, Any] = {
        "name": "iris",
        "model": {"path": "model"},
        "scoring": {"code": "src", "script": "score.py"},
        "environment": {"requirements": "requirements.txt"},
    }
    for key, value in overrides.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return manifest_class((LocalTarget,)).model_validate(raw, context={"base_dir": root})


def members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive, "r:") as tar:
        return tar.getmembers()


def names(archive: Path) -> list[str]:
    return [m.name for m in members(archive)]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


# -- determinism ---------------------------------------------------------------------------


def test_same_project_builds_byte_identical_archives_anywhere_and_anytime(project: Path, tmp_path: Path):
    first = build_package(load(project), tmp_path / "out1")
    second = build_package(load(project), tmp_path / "out2")
    assert first.path.read_bytes() == second.path.read_bytes()

    # Elsewhere, with every file's times changed: still the same bytes and id.
    copy = tmp_path / "elsewhere" / "deeper" / "proj"
    shutil.copytree(project, copy)
    later = time.time() + 86_400
    for path in copy.rglob("*"):
        os.utime(path, (later, later))
    third = build_package(load(copy), tmp_path / "out3")
    assert third.package_id == first.package_id
    assert third.path.name == first.path.name
    assert third.path.read_bytes() == first.path.read_bytes()


def test_headers_carry_nothing_that_varies_between_builds(project: Path, tmp_path: Path):
    (project / "src" / "run.sh").write_text("#!/bin/sh\n")
    (project / "src" / "run.sh").chmod(0o775)
    (project / "src" / "score.py").chmod(0o600)
    built = build_package(load(project), tmp_path / "out")
    for m in members(built.path):
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.pax_headers == {}
        assert m.isdir() or m.isreg()
        expected = 0o755 if m.isdir() or m.name == "code/run.sh" else 0o644
        assert m.mode == expected, m.name
    assert built.path.stat().st_size % (20 * 512) == 0


def test_entries_are_sorted_with_folders_and_the_lock_last(project: Path, tmp_path: Path):
    built = build_package(load(project), tmp_path / "out")
    listed = names(built.path)
    assert listed[-1] == "package.json"
    assert listed[:-1] == sorted(listed[:-1])
    assert listed == [
        "code",
        "code/lib",
        "code/lib/helpers.py",
        "code/score.py",
        "environment",
        "environment/requirements.txt",
        "model",
        "model/model",
        "model/model/sub",
        "model/model/sub/vocab.txt",
        "model/model/weights.bin",
        "package.json",
    ]


# -- layout --------------------------------------------------------------------------------


def test_single_model_file_sits_directly_under_model(tmp_path: Path):
    root = make_project(tmp_path / "proj", single_file=True)
    built = build_package(load(root, model={"path": "iris.onnx"}), tmp_path / "out")
    assert "model/iris.onnx" in names(built.path)
    model_file = (root / "iris.onnx").read_bytes()
    assert built.lock.model.path == "model/iris.onnx"
    # One file: its hash is what sha256sum prints.
    assert built.lock.model.sha256 == hashlib.sha256(model_file).hexdigest()


def test_model_folder_keeps_its_name_as_azure_ml_does(tmp_path: Path):
    root = make_project(tmp_path / "proj")
    (root / "model").rename(root / "iris-model")
    built = build_package(load(root, model={"path": "iris-model"}), tmp_path / "out")
    assert "model/iris-model/weights.bin" in names(built.path)
    dest = tmp_path / "x"
    extract_package(built.path, dest)
    # AZUREML_MODEL_DIR=<dest>/model, the model at $AZUREML_MODEL_DIR/iris-model/...
    assert (dest / "model" / "iris-model" / "sub" / "vocab.txt").read_text() == "a\nb\n"


def test_conda_file_goes_to_environment_conda_yaml(project: Path, tmp_path: Path):
    (project / "env.yml").write_text("dependencies:\n  - numpy\n")
    built = build_package(load(project, environment={"conda_file": "env.yml"}), tmp_path / "out")
    assert "environment/conda.yaml" in names(built.path)
    assert built.lock.environment == {"conda_file": "environment/conda.yaml"}


def test_no_environment_file_means_null(project: Path, tmp_path: Path):
    built = build_package(load(project, environment=None), tmp_path / "out")
    assert built.lock.environment is None
    assert not any(n.startswith("environment") for n in names(built.path))
    assert json.loads(built.lock.to_bytes())["environment"] is None


def test_code_defaults_to_the_scripts_folder(project: Path, tmp_path: Path):
    built = build_package(load(project, scoring={"script": "src/score.py"}), tmp_path / "out")
    assert built.lock.script == "code/score.py"
    assert "code/lib/helpers.py" in names(built.path)


# -- exclusions ----------------------------------------------------------------------------


def test_debris_the_model_and_the_output_folder_stay_out_of_code(tmp_path: Path):
    root = make_project(tmp_path / "proj")
    src = root / "src"
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"x")
    (src / "lib" / "stale.pyc").write_bytes(b"x")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    (src / ".DS_Store").write_bytes(b"x")
    (src / "model.onnx").write_bytes(b"model")
    out_dir = src / "dist"
    manifest = load(root, model={"path": "src/model.onnx"})

    first = build_package(manifest, out_dir)
    listed = names(first.path)
    assert [n for n in listed if n.startswith("code/")] == [
        "code/lib",
        "code/lib/helpers.py",
        "code/score.py",
    ]
    assert "model/model.onnx" in listed
    # The first archive, now inside code/, does not change the second build.
    assert build_package(manifest, out_dir).package_id == first.package_id


def test_empty_folders_are_left_out(project: Path, tmp_path: Path):
    (project / "src" / "empty").mkdir()
    built = build_package(load(project), tmp_path / "out")
    assert "code/empty" not in names(built.path)


# -- symbolic links ------------------------------------------------------------------------


def test_links_inside_the_project_are_archived_as_their_content(project: Path, tmp_path: Path):
    (project / "shared").mkdir()
    (project / "shared" / "common.py").write_text("Y = 2\n")
    (project / "src" / "common").symlink_to(project / "shared")
    (project / "src" / "alias.py").symlink_to("score.py")
    built = build_package(load(project), tmp_path / "out")
    by_name = {m.name: m for m in members(built.path)}
    assert by_name["code/common/common.py"].isreg()
    assert by_name["code/alias.py"].isreg() and by_name["code/alias.py"].size == len(SCORE)
    assert not any(m.issym() or m.islnk() for m in by_name.values())


def test_a_link_leading_out_of_the_project_is_refused(project: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    (project / "src" / "leak.txt").symlink_to(secret)
    with pytest.raises(PackagingError, match="outside the project") as info:
        build_package(load(project), tmp_path / "out")
    assert info.value.hint and "copy the file" in info.value.hint
    assert not any((tmp_path / "out").iterdir())


def test_a_link_loop_is_refused(project: Path, tmp_path: Path):
    (project / "src" / "lib" / "again").symlink_to(project / "src")
    with pytest.raises(PackagingError, match="links back"):
        build_package(load(project), tmp_path / "out")


def test_a_broken_link_is_refused(project: Path, tmp_path: Path):
    (project / "src" / "gone.py").symlink_to(project / "nowhere.py")
    with pytest.raises(PackagingError, match="does not exist"):
        build_package(load(project), tmp_path / "out")


# -- the lock ------------------------------------------------------------------------------


def test_lock_lists_every_file_with_hashlib_hashes(project: Path, tmp_path: Path):
    built = build_package(load(project), tmp_path / "out")
    lock = built.lock
    sources = {
        "code/score.py": project / "src" / "score.py",
        "code/lib/helpers.py": project / "src" / "lib" / "helpers.py",
        "environment/requirements.txt": project / "requirements.txt",
        "model/model/weights.bin": project / "model" / "weights.bin",
        "model/model/sub/vocab.txt": project / "model" / "sub" / "vocab.txt",
    }
    assert [f.path for f in lock.files] == sorted(sources)
    for f in lock.files:
        data = sources[f.path].read_bytes()
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert f.size == len(data)
    assert lock.file("package.json") is None
    assert lock == read_lock(built.path)
    assert built.package_id == lock.package_id


def test_lock_document_has_the_contract_fields(project: Path, tmp_path: Path):
    built = build_package(load(project), tmp_path / "out")
    with tarfile.open(built.path) as tar:
        doc = json.load(tar.extractfile("package.json"))  # type: ignore[arg-type]
    assert " ".join(doc) == "format package_id name model scoring environment files tool python libraries"
    assert doc["format"] == 1
    assert doc["name"] == "iris"
    assert doc["scoring"] == {"script": "code/score.py"}
    assert doc["environment"] == {"requirements": "environment/requirements.txt"}
    assert doc["tool"] == {"name": "tdsp-deploy", "version": tdsp_deploy.__version__}
    assert doc["python"].count(".") == 2
    assert doc["model"]["path"] == "model/model"
    assert set(doc["files"][0]) == {"path", "sha256", "size", "mode"}
    assert PackageLock.from_json(doc) == built.lock


def test_model_version_defaults_to_the_model_hash(project: Path, tmp_path: Path):
    built = build_package(load(project), tmp_path / "out")
    lock = built.lock
    assert lock.model_version == lock.model.sha256[:12]
    assert lock.model.name == "iris"
    # A folder's hash is over its sha256sum-style listing, independent of its name.
    listing = "".join(
        f"{hashlib.sha256((project / 'model' / rel).read_bytes()).hexdigest()}  {rel}\n"
        for rel in ("sub/vocab.txt", "weights.bin")
    )
    assert lock.model.sha256 == hashlib.sha256(listing.encode()).hexdigest()

    named = build_package(
        load(project, model={"path": "model", "name": "iris-model", "version": 3}), tmp_path / "o"
    )
    assert (named.lock.model_version, named.lock.model.name) == ("3", "iris-model")
    assert named.package_id != built.package_id


def test_package_id_follows_content_not_times(project: Path, tmp_path: Path):
    before = build_package(load(project), tmp_path / "out")
    weights = project / "model" / "weights.bin"
    os.utime(weights, (1, 1))
    assert build_package(load(project), tmp_path / "out").package_id == before.package_id

    data = bytearray(weights.read_bytes())
    data[1234] ^= 0x01
    weights.write_bytes(bytes(data))
    changed = build_package(load(project), tmp_path / "out")
    assert changed.package_id != before.package_id
    assert changed.lock.model.sha256 != before.lock.model.sha256
    assert changed.path != before.path and before.path.exists()


def test_package_id_is_computed_from_the_listing(project: Path, tmp_path: Path):
    lock = build_package(load(project), tmp_path / "out").lock
    assert package_id(lock.files, lock.model.name, lock.model_version, lock.script) == lock.package_id


def test_a_lock_that_does_not_match_its_own_listing_is_refused(project: Path, tmp_path: Path):
    doc = build_package(load(project), tmp_path / "out").lock.to_json()
    doc["files"][0]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="package_id"):
        PackageLock.from_json(doc)
    doc["format"] = 2
    with pytest.raises(ValueError, match="format"):
        PackageLock.from_json(doc)


# -- reuse and the output folder -----------------------------------------------------------


def test_rebuilding_the_same_content_reuses_the_archive(project: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = build_package(load(project), out)
    inode = first.path.stat().st_ino
    second = build_package(load(project), out)
    assert (first.reused, second.reused) == (False, True)
    assert second.path == first.path and second.path.stat().st_ino == inode
    assert second.lock == first.lock
    assert [p.name for p in out.iterdir()] == [first.path.name]  # no temporary file left


def test_a_damaged_archive_under_the_same_name_is_replaced(project: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = build_package(load(project), out)
    good = first.path.read_bytes()
    first.path.write_bytes(good[: len(good) // 2])
    again = build_package(load(project), out)
    assert again.reused is False
    assert again.path.read_bytes() == good


def test_progress_reports_bytes(project: Path, tmp_path: Path):
    events: list[ProgressEvent] = []
    build_package(load(project), tmp_path / "out", progress=events.append)
    assert {e.step for e in events} == {"package"}
    total = sum(f.stat().st_size for f in (project / "model").rglob("*") if f.is_file())
    total += sum(f.stat().st_size for f in (project / "src").rglob("*") if f.is_file())
    total += (project / "requirements.txt").stat().st_size
    assert events[0].done == 0 and events[-1].done == events[-1].total == total


# -- errors --------------------------------------------------------------------------------


def test_a_model_that_vanished_is_a_packaging_error(project: Path, tmp_path: Path):
    manifest = load(project)
    shutil.rmtree(project / "model")
    with pytest.raises(PackagingError, match="model.path") as info:
        build_package(manifest, tmp_path / "out")
    assert info.value.exit_code == ExitCode.USAGE
    assert info.value.hint


def test_an_unwritable_output_folder_is_a_backend_error(project: Path, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BackendError) as info:
        build_package(load(project), blocker / "out")
    assert info.value.exit_code == ExitCode.BACKEND
    assert info.value.hint


class _FailingFile:
    """Stands for an open file whose reads fail after ``after`` chunks."""

    def __init__(self, path: Path, exc: BaseException, after: int = 0):
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115
        self._exc = exc
        self._left = after

    def readinto(self, buffer: memoryview) -> int:
        if self._left == 0:
            raise self._exc
        self._left -= 1
        return self._file.readinto(buffer)

    def read(self, n: int) -> bytes:
        return self._file.read(n)

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PermissionError(13, "Permission denied"), PackagingError),
        (OSError(5, "Input/output error"), PackagingError),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
def test_a_failed_read_leaves_nothing_in_the_output_folder(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, expected: type
):
    # Large enough to be hashed on the helper thread, which must be wound down too.
    (project / "model" / "weights.bin").write_bytes(os.urandom(tarstream.PIPELINE_MIN_SIZE + 1))

    def failing_open(path: Any, mode: str = "r", **kwargs: Any) -> Any:
        if Path(path).name == "weights.bin":
            return _FailingFile(Path(path), exc, after=2)
        return open(path, mode, **kwargs)

    monkeypatch.setattr(tarstream, "open", failing_open, raising=False)
    out = tmp_path / "out"
    with pytest.raises(expected):
        build_package(load(project), out)
    assert list(out.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("tdsp-hash")]


def test_a_permission_error_names_the_file_and_the_fix(project: Path, tmp_path: Path, monkeypatch):
    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tarstream, "open", denied, raising=False)
    with pytest.raises(PackagingError, match="permission denied") as info:
        build_package(load(project), tmp_path / "out")
    assert "chmod" in (info.value.hint or "")


def test_a_file_that_grows_while_packaged_is_refused(project: Path, tmp_path: Path, monkeypatch):
    from tdsp_deploy.packaging import build as build_module

    real_plan = build_module.plan

    def plan_then_append(*args: Any, **kwargs: Any) -> Any:
        layout = real_plan(*args, **kwargs)
        with open(project / "model" / "weights.bin", "ab") as f:
            f.write(b"more")
        return layout

    monkeypatch.setattr(build_module, "plan", plan_then_append)
    with pytest.raises(PackagingError, match="changed size"):
        build_package(load(project), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# -- extraction ----------------------------------------------------------------------------


def test_extract_round_trip(project: Path, tmp_path: Path):
    (project / "src" / "run.sh").write_text("#!/bin/sh\n")
    (project / "src" / "run.sh").chmod(0o755)
    built = build_package(load(project), tmp_path / "out")
    dest = tmp_path / "slot" / "package"
    lock = extract_package(built.path, dest)
    assert lock == built.lock
    assert (dest / "code" / "score.py").read_text() == SCORE
    assert (dest / "model" / "model" / "weights.bin").read_bytes() == (
        project / "model" / "weights.bin"
    ).read_bytes()
    assert (dest / "environment" / "requirements.txt").read_text() == "pytest>=8\n"
    assert json.loads((dest / "package.json").read_bytes()) == lock.to_json()
    assert os.access(dest / "code" / "run.sh", os.X_OK)
    assert not os.access(dest / "code" / "score.py", os.X_OK)
    assert lock.scoring_script_name == "score.py"
    assert [p.name for p in dest.parent.iterdir()] == ["package"]  # no staging folder left


def test_extract_into_an_existing_empty_folder(project: Path, tmp_path: Path):
    built = build_package(load(project), tmp_path / "out")
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_package(built.path, dest)
    assert (dest / "code" / "score.py").exists()
    with pytest.raises(BackendError, match="not empty"):
        extract_package(built.path, dest)


def test_long_and_non_ascii_names_survive(project: Path, tmp_path: Path):
    deep = project / "src" / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "modèle-données.txt").write_text("ü")
    built = build_package(load(project), tmp_path / "out")
    dest = tmp_path / "dest"
    extract_package(built.path, dest)
    assert (dest / "code" / ("d" * 60) / ("e" * 60) / "modèle-données.txt").read_text() == "ü"


def test_a_flipped_byte_in_the_model_is_detected(project: Path, tmp_path: Path):
    built = build_package(load(project), tmp_path / "out")
    member = next(m for m in members(built.path) if m.name == "model/model/weights.bin")
    data = bytearray(built.path.read_bytes())
    data[member.offset_data + 100] ^= 0xFF
    built.path.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(DeploymentFailed, match="weights.bin does not match its lock") as info:
        extract_package(built.path, dest)
    assert info.value.exit_code == ExitCode.DEPLOYMENT_FAILED
    assert not dest.exists()
    assert list(tmp_path.glob(".dest*")) == []
    read_lock(built.path)  # the lock itself is intact; only the payload is wrong


def _evil_archive(path: Path, member: tarfile.TarInfo, payload: bytes = b"") -> Path:
    """An archive with one hostile member and a lock that is otherwise valid."""
    files = (
        LockedFile("code/score.py", hashlib.sha256(b"x").hexdigest(), 1),
        LockedFile("model/m", hashlib.sha256(b"m").hexdigest(), 1),
    )
    lock = PackageLock(
        package_id=package_id(files, "m", "1", "code/score.py"),
        name="evil",
        model=LockedModel(name="m", version="1", path="model/m", sha256="0" * 64),
        script="code/score.py",
        environment=None,
        files=files,
        tool={"name": "tdsp-deploy", "version": "0"},
        python="3.11.0",
        libraries={},
    )
    data = lock.to_bytes()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(member, io.BytesIO(payload) if member.isreg() else None)
        info = tarfile.TarInfo("package.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped.txt", size=1),
        _member("code/../../escaped.txt", size=1),
        _member("/tmp/escaped.txt", size=1),
        _member("code/link", tarfile.SYMTYPE, linkname="/etc/passwd"),
        _member("code/hard", tarfile.LNKTYPE, linkname="code/score.py"),
        _member("code/dev", tarfile.CHRTYPE),
        _member("code/fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_extract_refuses_hostile_members(tmp_path: Path, member: tarfile.TarInfo):
    archive = _evil_archive(tmp_path / "evil.tar", member, b"x" if member.isreg() else b"")
    dest = tmp_path / "a" / "dest"
    with pytest.raises(DeploymentFailed):
        extract_package(archive, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "a" / "escaped.txt").exists()
    assert not dest.exists()


def test_extract_refuses_files_the_lock_does_not_list(tmp_path: Path):
    archive = _evil_archive(tmp_path / "evil.tar", _member("code/extra.py", size=1), b"x")
    with pytest.raises(DeploymentFailed, match="not listed in its lock"):
        extract_package(archive, tmp_path / "dest")


def test_extract_refuses_an_archive_missing_listed_files(tmp_path: Path):
    archive = _evil_archive(tmp_path / "evil.tar", _member("code", tarfile.DIRTYPE))
    with pytest.raises(DeploymentFailed, match="missing: code/score.py"):
        extract_package(archive, tmp_path / "dest")


@pytest.mark.parametrize("content", [None, b"", b"not a tar at all" * 100])
def test_read_lock_refuses_what_is_not_a_package(tmp_path: Path, content: bytes | None):
    archive = tmp_path / "x.tar"
    if content is not None:
        archive.write_bytes(content)
    with pytest.raises(DeploymentFailed) as info:
        read_lock(archive)
    assert info.value.hint


def test_read_lock_refuses_a_tar_without_a_lock(tmp_path: Path):
    archive = tmp_path / "plain.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DeploymentFailed, match="last member is not package.json"):
        read_lock(archive)


# -- libraries -----------------------------------------------------------------------------


def test_libraries_from_requirements_with_versions_installed_here(project: Path, tmp_path: Path):
    (project / "requirements.txt").write_text(
        "# the test runner\n"
        "--index-url https://example.invalid/simple\n"
        "-r other.txt\n"
        "PyTest[testing] >= 8 ; python_version >= '3.11'  # comment\n"
        "surely-not-installed-tdsp==1.0\n"
        "https://example.invalid/wheel.whl\n"
    )
    built = build_package(load(project), tmp_path / "out")
    assert built.lock.libraries == {
        "pytest": pytest.__version__,
        "surely-not-installed-tdsp": None,
    }


def test_libraries_from_a_conda_file():
    text = (
        "name: iris\n"
        "channels:\n  - conda-forge\n"
        "dependencies:\n"
        "  - python=3.11\n"
        "  - conda-forge::numpy>=1.24\n"
        "  - pip\n"
        "  - pip:\n"
        "      - onnxruntime==1.17 ; python_version > '3'\n"
        "      - -r more.txt\n"
    )
    assert libs.conda_names(text) == ["numpy", "pip", "onnxruntime"]


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("iris.onnx", {"onnxruntime", "onnx"}),  # onnx only where it is installed (see below)
        ("model.pkl", {"scikit-learn", "joblib"}),
        ("model.joblib", {"scikit-learn", "joblib"}),
        ("MLmodel", {"mlflow"}),
        ("weights.bin", set()),
    ],
)
def test_libraries_implied_by_the_model_format(tmp_path: Path, file_name: str, expected: set[str]):
    root = make_project(tmp_path / "proj")
    (root / "m").mkdir()
    (root / "m" / file_name).write_bytes(b"model")
    built = build_package(load(root, model={"path": "m"}, environment=None), tmp_path / "out")
    if "onnx" in expected and libs.installed_version("onnx") is None:
        expected = expected - {"onnx"}  # the runtime is always named; the onnx package if present
    assert set(built.lock.libraries) == expected
    for name, version in built.lock.libraries.items():
        assert version == libs.installed_version(name)


# -- scale ---------------------------------------------------------------------------------


def test_a_large_model_streams_in_constant_memory(tmp_path: Path):
    root = make_project(tmp_path / "proj", single_file=True)
    big = root / "iris.onnx"
    size = 200 * 1024 * 1024
    with open(big, "r+b") as f:  # sparse: no 200 MB of disk, the same bytes to read
        f.truncate(size)
        f.seek(size // 2)
        f.write(b"middle")
    events: list[ProgressEvent] = []
    tracemalloc.start()
    try:
        built = build_package(
            load(root, model={"path": "iris.onnx"}), tmp_path / "out", progress=events.append
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    locked = built.lock.file("model/iris.onnx")
    assert locked is not None and locked.size == size
    digest = hashlib.sha256()
    with open(big, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert locked.sha256 == digest.hexdigest()
    # Start, every 64 MiB (three times in 200 MB) and the end.
    assert len([e for e in events if e.done and e.done < e.total]) == 3
    assert events[-1].done == events[-1].total


def test_large_files_hashed_on_the_helper_thread_match_hashlib(project: Path, tmp_path: Path):
    # Random bytes over many chunks and an odd tail: a buffer refilled before its hash was
    # done would show up here as a wrong sha256.
    data = os.urandom(9 * tarstream.CHUNK + 12345)
    assert len(data) >= tarstream.PIPELINE_MIN_SIZE
    (project / "model" / "weights.bin").write_bytes(data)
    built = build_package(load(project), tmp_path / "out")
    locked = built.lock.file("model/model/weights.bin")
    assert locked is not None and locked.sha256 == hashlib.sha256(data).hexdigest()
    dest = tmp_path / "dest"
    extract_package(built.path, dest)
    assert (dest / "model" / "model" / "weights.bin").read_bytes() == data


def test_sizes_beyond_the_ustar_limit_get_a_pax_size_record():
    size = 9 * 1024**3  # ustar's 11 octal digits stop at 8 GiB
    data = tarstream.header("model/huge.bin", size=size)
    with tarfile.open(fileobj=io.BytesIO(data + bytes(1024)), mode="r:") as tar:
        member = tar.next()
    assert member is not None and member.size == size
    assert set(member.pax_headers) == {"size"}  # and no time fields


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command here")
def test_system_tar_reads_the_archive(project: Path, tmp_path: Path):
    import subprocess

    built = build_package(load(project), tmp_path / "out")
    dest = tmp_path / "by-tar"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(built.path), "-C", str(dest)], check=True)
    for locked in built.lock.files:
        assert hashlib.sha256((dest / locked.path).read_bytes()).hexdigest() == locked.sha256


def test_a_symlinked_model_keeps_the_name_the_manifest_gives_it(tmp_path: Path):
    root = make_project(tmp_path / "proj")
    runs = root / "runs" / "42" / "v3"
    runs.mkdir(parents=True)
    (runs / "weights.bin").write_bytes(b"w")
    (root / "current").symlink_to(runs, target_is_directory=True)
    built = build_package(load(root, model={"path": "current"}), tmp_path / "out")
    assert "model/current/weights.bin" in names(built.path)
    assert built.lock.model.path == "model/current"
