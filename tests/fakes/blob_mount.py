"""A container in Azurite as a loopback Spark pool sees its ADLS Gen2 account: a local folder
(see livy_server.py for why, and what is substituted)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


class BlobMount:
    """One container in Azurite as the pool sees it: a folder, filled from the container before
    a batch; what the batch wrote goes back after it (Hadoop's .crc side files excepted, which
    ABFS does not write)."""

    def __init__(self, container_client: Any, folder: Path):
        self.client = container_client
        self.folder = folder
        self.lock = threading.Lock()

    def pull(self) -> dict[Path, int]:
        """Copy the container into the folder; the folder's files and their mtimes after it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for blob in self.client.list_blobs():
            target = self.folder / blob.name
            if target.is_file() and target.stat().st_size == blob.size:
                continue  # content-addressed names, or a file this batch left as it was
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.client.download_blob(blob.name).readall())
        return self._files()

    def push(self, before: dict[Path, int]) -> None:
        after = self._files()
        for path, mtime in after.items():
            if before.get(path) != mtime and not path.name.endswith(".crc"):
                with open(path, "rb") as data:
                    self.client.upload_blob(path.relative_to(self.folder).as_posix(), data, overwrite=True)
        for path in before.keys() - after.keys():  # replaced by an overwrite
            if not path.name.endswith(".crc"):
                self.client.delete_blob(path.relative_to(self.folder).as_posix())

    def _files(self) -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in self.folder.rglob("*") if p.is_file()}
