"""A package says what it is unambiguously: the model's content hash tells apart trees whose
file names hold newlines, and a lock may name as its scoring script (and model, and
environment file) only files it lists, that extraction verifies."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.errors import DeploymentFailed
from tdsp_deploy.manifest.model import manifest_class
from tdsp_deploy.packaging import (
    LockedFile,
    LockedModel,
    PackageLock,
    build_package,
    extract_package,
    package_id,
    read_lock,
)
from tdsp_deploy.packaging.extract import verify_extracted
from tdsp_deploy.packaging.lock import model_sha256

SCORE = b"def init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _project(root: Path, model_files: dict[str, bytes]) -> Path:
    for name, data in model_files.items():
        path = root / "model" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "src").mkdir(parents=True)
    (root / "src" / "score.py").write_bytes(SCORE)
    return root


def _build(root: Path, out: Path) -> PackageLock:
    manifest = manifest_class((LocalTarget,)).model_validate(
        {"name": "iris", "model": {"path": "model"}, "scoring": {"code": "src", "script": "score.py"}},
        context={"base_dir": root},
    )
    return build_package(manifest, out).lock


def test_two_model_trees_that_collided_before_hash_apart(tmp_path: Path) -> None:
    # Tree A: files `a` and `b`. Tree B: one file whose name is A's listing after `a`; with
    # the listing unescaped, both trees hashed to sha256("<sha a>  a\n<sha b>  b\n").
    a, b = b"weights of a", b"weights of b"
    one = _project(tmp_path / "one", {"a": a, "b": b})
    two = _project(tmp_path / "two", {f"a\n{_sha(b)}  b": a})
    naive = _sha(f"{_sha(a)}  a\n{_sha(b)}  b\n".encode())
    lock_one, lock_two = _build(one, tmp_path / "out1"), _build(two, tmp_path / "out2")
    assert lock_one.model.sha256 == naive  # ordinary names hash as they always did
    assert lock_two.model.sha256 != lock_one.model.sha256
    assert lock_two.model_version != lock_one.model_version  # the version derives from it


def test_the_listing_is_escaped_as_gnu_sha256sum_escapes_names() -> None:
    files = [
        LockedFile("model/m/x\ny", _sha(b"1"), 1),
        LockedFile("model/m/plain", _sha(b"2"), 1),
    ]
    listing = f"{_sha(b'2')}  plain\n\\{_sha(b'1')}  x\\ny\n"
    assert model_sha256(files, "model/m") == _sha(listing.encode())


def _crafted(path: Path, *, script: str, members: dict[str, bytes], model_path: str = "model/m") -> Path:
    """An archive whose lock is self-consistent (its id matches its listing) but names a
    scoring script of the crafter's choosing."""
    files = tuple(
        sorted(
            (LockedFile(name, _sha(data), len(data)) for name, data in members.items()), key=lambda f: f.path
        )
    )
    lock = PackageLock(
        package_id=package_id(files, "m", "1", script),
        name="crafted",
        model=LockedModel(name="m", version="1", path=model_path, sha256=_sha(members.get(model_path, b""))),
        script=script,
        environment=None,
        files=files,
        tool={"name": "tdsp-deploy", "version": "0"},
        python="3.11.0",
        libraries={},
    )
    data = lock.to_bytes()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        info = tarfile.TarInfo("package.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


MEMBERS = {"code/score.py": SCORE, "model/m": b"model bytes"}


@pytest.mark.parametrize(
    "script",
    [
        "code/other.py",  # not in the package: the server would load whatever is there
        "code/../../../tmp/evil.py",  # outside the package
        "/tmp/evil.py",
        "model/m",  # a listed file, but not scoring code
        "code",
    ],
)
def test_a_crafted_script_is_refused_when_read_and_when_extracted(tmp_path: Path, script: str) -> None:
    archive = _crafted(tmp_path / "crafted.tar", script=script, members=MEMBERS)
    with pytest.raises(DeploymentFailed, match="scoring script"):
        read_lock(archive)
    with pytest.raises(DeploymentFailed, match="scoring script"):
        extract_package(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_a_crafted_model_path_is_refused(tmp_path: Path) -> None:
    archive = _crafted(
        tmp_path / "crafted.tar", script="code/score.py", members=MEMBERS, model_path="model/gone"
    )
    with pytest.raises(DeploymentFailed, match="model path"):
        extract_package(archive, tmp_path / "dest")


def test_the_honest_twin_extracts(tmp_path: Path) -> None:
    archive = _crafted(tmp_path / "honest.tar", script="code/score.py", members=MEMBERS)
    lock = extract_package(archive, tmp_path / "dest")
    assert lock.scoring_script_name == "score.py"
    assert verify_extracted(tmp_path / "dest", lock.package_id).script == "code/score.py"


def test_an_extracted_lock_edited_to_name_another_script_is_refused_at_restart(tmp_path: Path) -> None:
    archive = _crafted(tmp_path / "honest.tar", script="code/score.py", members=MEMBERS)
    lock = extract_package(archive, tmp_path / "dest")
    (tmp_path / "dest" / "code" / "evil.py").write_text("def init(): pass\ndef run(r): return 'owned'\n")
    doc = lock.to_json()
    doc["scoring"]["script"] = "code/evil.py"
    doc["package_id"] = package_id(lock.files, "m", "1", "code/evil.py")
    (tmp_path / "dest" / "package.json").write_text(json.dumps(doc))
    with pytest.raises(DeploymentFailed, match="scoring script"):
        verify_extracted(tmp_path / "dest", doc["package_id"])
