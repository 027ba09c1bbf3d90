"""Unchanged content is not packaged again: the hash cache, and a re-push that reads nothing.

The proof is what the process read and wrote (Linux's /proc/self/io counts every byte that
went through read() and write()), never how long it took.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy.backends.local.target import LocalTarget
from tdsp_deploy.manifest.model import manifest_class
from tdsp_deploy.packaging import build_package
from tdsp_deploy.packaging.hash_cache import CACHE_NAME, HashCache

pytestmark = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")

MB = 1 << 20
MODEL_MB = 8
SCORE = "def init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n"


def age(root: Path, seconds: float = 3600) -> None:
    """Date every file back, as a model trained an hour ago would be: a file written in the
    same moment as it is hashed is read again next time (see hash_cache), and this test is
    not about that."""
    past = time.time() - seconds
    for path in [root, *root.rglob("*")]:
        os.utime(path, (past, past))


def make_project(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.bin").write_bytes(os.urandom(MODEL_MB * MB))
    (root / "model" / "config.json").write_text('{"layers": 3}\n')
    (root / "src").mkdir()
    (root / "src" / "score.py").write_text(SCORE)
    (root / "requirements.txt").write_text("numpy\n")
    age(root)
    return root


def load(root: Path) -> Any:
    raw = {
        "name": "reuse",
        "model": {"path": "model"},
        "scoring": {"code": "src", "script": "score.py"},
        "environment": {"requirements": "requirements.txt"},
    }
    return manifest_class((LocalTarget,)).model_validate(raw, context={"base_dir": root})


def io_counters() -> dict[str, int]:
    lines = Path("/proc/self/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


@contextmanager
def counted() -> Iterator[dict[str, int]]:
    """Bytes this process read and wrote inside the block (``read``, ``written``)."""
    found: dict[str, int] = {}
    before = io_counters()
    yield found
    after = io_counters()
    found["read"] = after["rchar"] - before["rchar"]
    found["written"] = after["wchar"] - before["wchar"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def test_an_unchanged_rebuild_reads_no_file_and_leaves_the_archive_untouched(project: Path, tmp_path: Path):
    out = tmp_path / "out"
    with counted() as first_io:
        first = build_package(load(project), out)
    assert first_io["read"] >= MODEL_MB * MB  # the measure sees a build's reading
    archive = first.path.stat()
    with counted() as again_io:
        again = build_package(load(project), out)
    assert again.reused and again.package_id == first.package_id and again.lock == first.lock
    assert again_io["read"] < MB and again_io["written"] < MB  # not the 8 MB model, nor its archive
    after = first.path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        archive.st_ino,
        archive.st_mtime_ns,
        archive.st_size,
    )
    assert sorted(p.name for p in out.iterdir()) == [first.path.name]  # the cache lives elsewhere


def test_a_changed_file_is_read_again_even_when_size_and_mtime_were_put_back(project: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = build_package(load(project), out)
    weights = project / "model" / "weights.bin"
    before = weights.stat()
    with open(weights, "r+b") as handle:  # same size, same inode, one byte different
        handle.write(b"\x00" if handle.read(1) != b"\x00" else b"\x01")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or a restore would
    age(project / "src")
    with counted() as io:
        changed = build_package(load(project), out)
    assert changed.package_id != first.package_id and not changed.reused
    assert io["read"] >= MODEL_MB * MB


def test_a_touched_file_is_hashed_again_and_the_same_package_is_kept(project: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = build_package(load(project), out)
    age(project, seconds=600)  # mtime moved, content the same
    with counted() as io:
        again = build_package(load(project), out)
    assert io["read"] >= MODEL_MB * MB  # the cache could not vouch for it
    assert again.reused and again.package_id == first.package_id
    with counted() as io:
        third = build_package(load(project), out)  # now it can
    assert io["read"] < MB and third.reused


def test_a_file_changed_in_the_moment_it_was_hashed_is_not_trusted_next_time(project: Path, tmp_path: Path):
    # Its mtime is not clearly before the hashing began (set ahead here, so that no machine is
    # slow enough to make it look settled): a write in the same clock tick as the hashing could
    # have left every stat field as it was.
    weights = project / "model" / "weights.bin"
    ahead = time.time_ns() + 60 * 10**9
    os.utime(weights, ns=(ahead, ahead))
    out = tmp_path / "out"
    build_package(load(project), out)
    with counted() as io:
        again = build_package(load(project), out)
    assert io["read"] >= MODEL_MB * MB and again.reused


def test_a_deleted_archive_is_built_again_from_cached_hashes_as_well(project: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = build_package(load(project), out)
    first.path.unlink()
    again = build_package(load(project), out)
    assert not again.reused and again.path.is_file() and again.package_id == first.package_id


def test_a_corrupt_or_foreign_cache_is_an_empty_one(project: Path, tmp_path: Path, state_home: Path):
    out = tmp_path / "out"
    first = build_package(load(project), out)
    cache_file = state_home / CACHE_NAME
    entries = json.loads(cache_file.read_text())["files"]
    assert str((project / "model" / "weights.bin").resolve()) in entries
    for text in ("{not json", json.dumps({"format": 99, "files": entries}), json.dumps([1, 2])):
        cache_file.write_text(text)
        with counted() as io:
            again = build_package(load(project), out)
        assert again.package_id == first.package_id and io["read"] >= MODEL_MB * MB
    # A cached hash of the wrong shape is not believed either.
    weights = str((project / "model" / "weights.bin").resolve())
    doc = json.loads(cache_file.read_text())
    doc["files"][weights]["sha256"] = "not a hash"
    cache_file.write_text(json.dumps(doc))
    assert HashCache(state_home).lookup(Path(weights), MODEL_MB * MB) is None


def test_an_unchanged_re_push_does_no_packaging_work(cli, iris):  # type: ignore[no-untyped-def]
    (iris.parent / "model" / "weights.bin").write_bytes(os.urandom(MODEL_MB * MB))
    age(iris.parent)
    try:
        first = cli("push", iris, "--json")
        assert first.exit_code == 0, first.stderr
        with counted() as io:
            again = cli("push", iris, "--json")
        assert again.exit_code == 0, again.stderr
        assert again.json()["unchanged"] and again.json()["package_id"] == first.json()["package_id"]
        assert "unchanged since it was last built (no file read)" in again.stderr
        assert io["read"] < 2 * MB  # the manifest, state and status answers, not the 8 MB model
    finally:
        cli("delete", iris, "--yes")
