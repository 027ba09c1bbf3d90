"""The workspace's ADLS Gen2 storage, through the Blob API (which ADLS Gen2 accounts serve too).

What is kept under the target's ``storage`` root::

    packages/<package_id>.tar          content-addressed: written once, never changed
    jobs/<sha256>/tdsp_score_job.py    content-addressed
    endpoints/<name>/slots/<slot>.json what a slot runs; written LAST, so it only ever points at
                                       blobs that are complete
    endpoints/<name>/traffic.json      the split of rows between slots
    endpoints/<name>/runs/<id>/...     smoke-test inputs and outputs
    endpoints/<name>/requests/<id>/... a split run's request log (for `ab`), run.json last
    endpoints/<name>/lock.json         held while a command changes the endpoint (blob_lease.py)

Why a failed upload leaves nothing a job could pick up: a block blob's staged blocks are not
part of it until Put Block List commits them (Azure docs, "Understanding block blobs"), and a
small blob is one Put Blob; either way a reader sees the whole new content or none of it. The
slot record, which is what a job is started from, is written only after every blob it names.
Content-addressed blobs carry their sha256 in metadata; one is skipped only when the stored
blob's sha256 and size both match. The lock needs writes that succeed only if nothing changed
underneath: create-if-absent and replace/delete-if-ETag-matches, the Blob API's conditional
headers (``If-None-Match: *``, ``If-Match``).

``BlobStore`` wraps azure-storage-blob's ContainerClient (the one seam to the SDK; its errors
are mapped to BackendError here). Two things of a real ADLS Gen2 account it must know: with a
hierarchical namespace, List Blobs also returns each directory, as a zero-length blob whose
metadata says ``hdi_isfolder=true`` (skipped: the store holds files); and an identity that may
manage the account but has no data role gets 403 ``AuthorizationPermissionMismatch``, which
the SDK raises as a plain HttpResponseError: it is told as such, with the role to grant.
``FolderStore`` keeps the same layout in a local folder that stands for the container (a
mounted filesystem, or a test's Spark that cannot reach Azure).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from tdsp_deploy.backends.synapse.target import parse_abfss
from tdsp_deploy.errors import BackendError

SHA256_METADATA = "tdsp_sha256"
FOLDER_METADATA = "hdi_isfolder"  # an ADLS Gen2 directory, as List Blobs shows it
DATA_ROLE = "Storage Blob Data Contributor"
BLOB_ENDPOINT_ENV = "TDSP_SYNAPSE_BLOB_ENDPOINT"  # e.g. an emulator's http://127.0.0.1:10000/<account>
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
CHUNK = 4 * 1024 * 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class Store(Protocol):
    """The storage root, as the Spark backend uses it. Names are relative to the root."""

    root: str  # abfss://container@account.dfs.core.windows.net/path

    def uri(self, name: str) -> str: ...
    def put_file(self, name: str, path: Path, sha256: str) -> bool: ...
    def put_bytes(self, name: str, data: bytes) -> None: ...
    def get_bytes(self, name: str) -> bytes | None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, name: str) -> None: ...

    # conditional writes (the endpoint lock): each says whether it won
    def create_new(self, name: str, data: bytes) -> str | None: ...
    def read_versioned(self, name: str) -> tuple[bytes, str] | None: ...
    def replace_if(self, name: str, data: bytes, etag: str) -> str | None: ...
    def delete_if(self, name: str, etag: str) -> bool: ...


def put_json(store: Store, name: str, doc: Any) -> None:
    store.put_bytes(name, json.dumps(doc, sort_keys=True, indent=2).encode())


def get_json(store: Store, name: str) -> Any:
    data = store.get_bytes(name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise BackendError(f"{store.uri(name)} is not JSON; was it written by tdsp-deploy?") from None


def _join(root_path: str, name: str) -> str:
    return str(PurePosixPath(root_path, name)) if root_path else name


class BlobStore:
    """The storage root in a real (or emulated) storage account, through azure-storage-blob."""

    def __init__(self, root: str, container_client: Any):
        self.root = root.rstrip("/")
        self.container, self.account, self.prefix = parse_abfss(self.root)
        self.client = container_client  # its service's max_block_size decides when blocks are staged

    @classmethod
    def connect(
        cls, root: str, *, credential: Any = None, environ: dict[str, str] | None = None
    ) -> BlobStore:
        """A store for ``root``: with the connection string in $AZURE_STORAGE_CONNECTION_STRING when
        set, else the account's blob endpoint ($TDSP_SYNAPSE_BLOB_ENDPOINT overrides) and
        ``credential`` (default: DefaultAzureCredential)."""
        env = os.environ if environ is None else environ
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            from tdsp_deploy.errors import PluginError

            raise PluginError(
                "the synapse target needs azure-storage-blob", hint="pip install 'tdsp-deploy[synapse]'"
            ) from None
        container, account, _ = parse_abfss(root)
        if env.get(CONNECTION_STRING_ENV):
            service = BlobServiceClient.from_connection_string(env[CONNECTION_STRING_ENV])
        else:
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            url = env.get(BLOB_ENDPOINT_ENV) or f"https://{account}.blob.core.windows.net"
            service = BlobServiceClient(account_url=url, credential=credential)
        return cls(root, service.get_container_client(container))

    def uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _errors(self, doing: str) -> _mapped_errors:
        return _mapped_errors(doing, self.account)

    def _blob(self, name: str) -> str:
        return _join(self.prefix, name)

    def put_file(self, name: str, path: Path, sha256: str) -> bool:
        """Upload ``path`` as ``name`` unless a blob with this sha256 and size is there.
        True when it was uploaded."""
        blob = self.client.get_blob_client(self._blob(name))
        size = path.stat().st_size
        with self._errors(f"check {self.uri(name)}"):
            from azure.core.exceptions import ResourceNotFoundError

            try:
                properties = blob.get_blob_properties()
                if (properties.metadata or {}).get(SHA256_METADATA) == sha256 and properties.size == size:
                    return False
            except ResourceNotFoundError:
                pass
        with open(path, "rb") as data:
            self.put_stream(name, data, size, sha256)
        return True

    def put_stream(self, name: str, stream: Any, size: int, sha256: str) -> None:
        """Upload ``size`` bytes from ``stream``: staged blocks, then one commit (or one Put
        Blob when small). Until the commit, readers see the old blob or none."""
        options: dict[str, Any] = {"overwrite": True, "metadata": {SHA256_METADATA: sha256}, "length": size}
        self._ensure_container()
        with self._errors(f"upload {self.uri(name)}"):
            self.client.get_blob_client(self._blob(name)).upload_blob(stream, **options)

    def put_bytes(self, name: str, data: bytes) -> None:
        self._ensure_container()
        with self._errors(f"write {self.uri(name)}"):
            self.client.get_blob_client(self._blob(name)).upload_blob(data, overwrite=True)

    def get_bytes(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors(f"read {self.uri(name)}"):
            try:
                return self.client.get_blob_client(self._blob(name)).download_blob().readall()
            except ResourceNotFoundError:
                return None

    def list(self, prefix: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        start = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(f"list {self.uri(prefix)}"):
            try:
                return sorted(
                    b.name[start:]
                    for b in self.client.list_blobs(name_starts_with=self._blob(prefix), include=["metadata"])
                    if not _is_folder(b)
                )
            except ResourceNotFoundError:  # no container yet
                return []

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors(f"delete {self.uri(name)}"), contextlib.suppress(ResourceNotFoundError):
            self.client.delete_blob(self._blob(name))

    # -- conditional writes: If-None-Match: * to create, If-Match: <etag> to replace or delete --
    def create_new(self, name: str, data: bytes) -> str | None:
        """Write ``name`` only if no blob has that name; its ETag, or None when one is there."""
        from azure.core.exceptions import ResourceExistsError

        self._ensure_container()
        with self._errors(f"create {self.uri(name)}"):
            try:
                written = self.client.get_blob_client(self._blob(name)).upload_blob(data, overwrite=False)
            except ResourceExistsError:
                return None
        return str(written["etag"])

    def read_versioned(self, name: str) -> tuple[bytes, str] | None:
        """The blob's content and ETag; None when there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors(f"read {self.uri(name)}"):
            try:
                download = self.client.get_blob_client(self._blob(name)).download_blob()
                return download.readall(), str(download.properties.etag)
            except ResourceNotFoundError:
                return None

    def replace_if(self, name: str, data: bytes, etag: str) -> str | None:
        """Overwrite ``name`` only if it still has ``etag``; the new ETag, or None."""
        from azure.core import MatchConditions

        with self._errors(f"replace {self.uri(name)}"), _condition_failed() as failed:
            written = self.client.get_blob_client(self._blob(name)).upload_blob(
                data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        return None if failed else str(written["etag"])

    def delete_if(self, name: str, etag: str) -> bool:
        """Delete ``name`` only if it still has ``etag``."""
        from azure.core import MatchConditions

        with self._errors(f"delete {self.uri(name)}"), _condition_failed() as failed:
            self.client.delete_blob(
                self._blob(name), etag=etag, match_condition=MatchConditions.IfNotModified
            )
        return not failed

    def _ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self._errors(f"create container {self.container}"), contextlib.suppress(ResourceExistsError):
            self.client.create_container()


def _is_folder(blob: Any) -> bool:
    """A hierarchical-namespace directory entry (zero-length, hdi_isfolder=true)."""
    metadata = {str(k).lower(): str(v).lower() for k, v in (blob.metadata or {}).items()}
    return metadata.get(FOLDER_METADATA) == "true"


class _condition_failed:
    """Swallows "the condition was not met" (412, or 404 when the blob is gone) and says so: a
    lost race is an answer, not an error."""

    def __enter__(self) -> list[bool]:
        self.failed: list[bool] = []
        return self.failed

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError

        if isinstance(exc, ResourceModifiedError | ResourceNotFoundError) or (
            isinstance(exc, HttpResponseError) and exc.status_code in (404, 409, 412)
        ):
            self.failed.append(True)
            return True
        return False


class _mapped_errors:
    """Azure SDK errors become BackendError, saying what we were doing."""

    def __init__(self, doing: str, account: str = ""):
        self.doing = doing
        self.account = account

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        try:
            from azure.core.exceptions import AzureError, ClientAuthenticationError
        except ImportError:  # pragma: no cover - the SDK raised, so it is there
            return False
        if isinstance(exc, ClientAuthenticationError):  # 401, or 403 AuthenticationFailed: the token itself
            raise BackendError(
                f"storage refused the credential while trying to {self.doing}",
                hint="sign in (az login) or grant Storage Blob Data Contributor on the account",
            ) from None
        if getattr(exc, "status_code", None) == 403:
            code = getattr(exc, "error_code", None) or "AuthorizationFailure"
            code = getattr(code, "value", code)
            account = f"storage account {self.account}" if self.account else "the storage account"
            raise BackendError(
                f"storage refused to {self.doing} (HTTP 403 {code}): the identity may not "
                "read or write blobs there",
                hint=f"grant the {DATA_ROLE} role on {account} to the identity that runs tdsp-deploy "
                "(Owner or Contributor alone give no access to data): az role assignment create "
                f'--role "{DATA_ROLE}" --assignee <user or app id> --scope <the account\'s resource id>',
            ) from None
        if isinstance(exc, AzureError):
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BackendError(f"storage: could not {self.doing}: {message}") from None
        if isinstance(exc, OSError):
            raise BackendError(f"storage: could not {self.doing}: {exc}") from None
        return False


class FolderStore:
    """The same layout in a local folder standing for the container root. Writes go to a temp
    file renamed into place, so a reader never sees half a file either."""

    def __init__(self, root: str, folder: Path):
        self.root = root.rstrip("/")
        parse_abfss(self.root)
        self.folder = Path(folder)

    def uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _path(self, name: str) -> Path:
        return self.folder / name

    def put_file(self, name: str, path: Path, sha256: str) -> bool:
        target = self._path(name)
        if (
            target.is_file()
            and target.stat().st_size == path.stat().st_size
            and file_sha256(target) == sha256
        ):
            return False
        self._write(target, path.read_bytes())
        return True

    def put_bytes(self, name: str, data: bytes) -> None:
        self._write(self._path(name), data)

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        start = base if base.is_dir() else base.parent
        if not start.is_dir():
            return []
        found = (p.relative_to(self.folder).as_posix() for p in start.rglob("*") if p.is_file())
        return sorted(n for n in found if n.startswith(prefix))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    # -- conditional writes: the ETag is the content's sha256; a flock makes check-and-write one step
    def create_new(self, name: str, data: bytes) -> str | None:
        with self._exclusive():
            if self._path(name).exists():
                return None
            self._write(self._path(name), data)
        return hashlib.sha256(data).hexdigest()

    def read_versioned(self, name: str) -> tuple[bytes, str] | None:
        data = self.get_bytes(name)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def replace_if(self, name: str, data: bytes, etag: str) -> str | None:
        with self._exclusive():
            current = self.read_versioned(name)
            if current is None or current[1] != etag:
                return None
            self._write(self._path(name), data)
        return hashlib.sha256(data).hexdigest()

    def delete_if(self, name: str, etag: str) -> bool:
        with self._exclusive():
            current = self.read_versioned(name)
            if current is None or current[1] != etag:
                return False
            self.delete(name)
        return True

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".conditional-writes", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def _write(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(scratch, target)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise
