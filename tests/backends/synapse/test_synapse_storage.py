"""Uploads to the workspace storage through the Blob API, against Azurite (a real emulator).

- unchanged content is not uploaded again (content-addressed names, sha256 in metadata);
- a blob whose stored sha256 or size does not match is uploaded again;
- an upload that fails part-way leaves nothing a job could pick up: its staged blocks are
  not a blob, and no slot record points at it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from tdsp_deploy import paths
from tdsp_deploy.backends.synapse import make_backend
from tdsp_deploy.backends.synapse.storage import SHA256_METADATA, BlobStore, file_sha256
from tdsp_deploy.errors import BackendError
from tdsp_deploy.packaging import build_package
from tests.fakes.azurite import Azurite, azurite_blob
from tests.fakes.synapse_spark_project import STORAGE, load, make_project

pytestmark = pytest.mark.skipif(
    azurite_blob() is None, reason="Azurite needs node and the npm package azurite (.ci/run installs both)"
)
CONTAINER = "tdsp"
PREFIX = "deploy"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with Azurite(tmp_path_factory.mktemp("azurite")) as emulator:
        yield emulator


@pytest.fixture
def store(azurite: Azurite, request: pytest.FixtureRequest) -> BlobStore:
    # one container per test, so that tests never see each other's blobs
    container = "t" + str(abs(hash(request.node.name)))[:12]
    root = STORAGE.replace("tdsp@", f"{container}@")
    # small blocks, so that a 640 KiB upload is staged block by block as a large package is
    service = azurite.service(max_block_size=64 * 1024, max_single_put_size=64 * 1024)
    return BlobStore(root, service.get_container_client(container))


def blob_properties(store: BlobStore, name: str) -> Any:
    return store.client.get_blob_client(f"{PREFIX}/{name}").get_blob_properties()


def test_unchanged_content_is_not_uploaded_again(tmp_path: Path, store: BlobStore) -> None:
    project = make_project(tmp_path / "p")
    manifest = load(project).manifest
    package = build_package(manifest, paths.package_store())
    events: list[str] = []
    backend = make_backend(manifest, store=store, progress=lambda e: events.append(e.message))

    backend.deploy_slot("blue", package)
    name = f"packages/{package.package_id}.tar"
    first = blob_properties(store, name)
    assert (
        first.metadata[SHA256_METADATA] == file_sha256(package.path)
        and first.size == package.path.stat().st_size
    )
    assert any(m.startswith("uploaded ") and name in m for m in events)

    events.clear()
    backend.deploy_slot("green", package)
    second = blob_properties(store, name)
    assert second.etag == first.etag  # the blob was not written again
    assert sum(m.startswith("unchanged, not uploaded") for m in events) == 2  # package and job
    # the stored package is byte for byte the built one
    assert store.get_bytes(name) == package.path.read_bytes()
    assert backend.wait_healthy("green").state == "healthy"


def test_a_blob_with_another_hash_is_uploaded_again(tmp_path: Path, store: BlobStore) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(200_000))
    sha = file_sha256(source)
    # something else wrote that name: same size, other bytes, other hash
    store.put_bytes("packages/x.tar", os.urandom(200_000))
    assert store.put_file("packages/x.tar", source, sha) is True
    assert store.get_bytes("packages/x.tar") == source.read_bytes()
    assert store.put_file("packages/x.tar", source, sha) is False


class BreaksAfter(io.RawIOBase):
    """A stream of ``data`` whose reads fail after ``limit`` bytes (a dropped network, a disk error)."""

    def __init__(self, data: bytes, limit: int):
        self.data, self.limit, self.position = data, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.limit:
            raise OSError("connection reset while reading the package")
        count = min(len(buffer), self.limit - self.position, len(self.data) - self.position)
        buffer[:count] = self.data[self.position : self.position + count]
        self.position += count
        return count


def test_a_failed_upload_leaves_no_half_written_package(tmp_path: Path, store: BlobStore) -> None:
    data = os.urandom(640 * 1024)  # ten blocks of 64 KiB
    name = "packages/half.tar"
    stream = io.BufferedReader(BreaksAfter(data, limit=300 * 1024))
    with pytest.raises(BackendError, match="could not upload"):
        store.put_stream(name, stream, len(data), "0" * 64)
    blob = store.client.get_blob_client(f"{PREFIX}/{name}")
    # blocks were staged, so the upload did get part-way...
    committed, uncommitted = blob.get_block_list("all")
    assert not committed and len(uncommitted) >= 1
    # ...and still there is no blob to read or list
    assert store.get_bytes(name) is None
    assert name not in store.list("packages/")

    # an old complete version stays whole when a new upload of it fails
    store.put_stream(name, io.BytesIO(data), len(data), "1" * 64)
    with pytest.raises(BackendError):
        store.put_stream(
            name, io.BufferedReader(BreaksAfter(data[::-1], limit=200 * 1024)), len(data), "2" * 64
        )
    assert store.get_bytes(name) == data


def test_a_deploy_whose_upload_fails_writes_no_slot_record(tmp_path: Path, store: BlobStore) -> None:
    project = make_project(tmp_path / "p")
    manifest = load(project).manifest
    package = build_package(manifest, paths.package_store())

    class FailingJobUpload(BlobStore):
        def put_file(self, name: str, path: Path, sha256: str) -> bool:
            if name.startswith("jobs/"):
                with open(path, "rb") as data:
                    self.put_stream(
                        name,
                        io.BufferedReader(BreaksAfter(data.read(), limit=10)),
                        path.stat().st_size,
                        sha256,
                    )
            return super().put_file(name, path, sha256)

    failing = FailingJobUpload(store.root, store.client)
    backend = make_backend(manifest, store=failing)
    with pytest.raises(BackendError):
        backend.deploy_slot("blue", package)
    assert not backend.status().exists  # no record: nothing a job could be started from
    assert failing.list("endpoints/") == []


def test_connect_uses_the_connection_string_from_the_environment(azurite: Azurite) -> None:
    store = BlobStore.connect(STORAGE, environ={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    store.put_bytes("hello.txt", b"hi")
    assert store.get_bytes("hello.txt") == b"hi"
    assert store.list("hello") == ["hello.txt"]
    store.delete("hello.txt")
    assert store.get_bytes("hello.txt") is None
