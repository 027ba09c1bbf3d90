"""A Blob service on loopback for what Azurite cannot show: an ADLS Gen2 account.

Azurite has no hierarchical namespace and no role-based access, so two answers of a real ADLS
Gen2 account are answered here instead, to the real azure-storage-blob client:

- ``hns=True``: List Blobs returns, beside each blob, every directory above it as a
  zero-length blob whose metadata is ``hdi_isfolder=true`` (how a hierarchical-namespace
  account lists its directories through the Blob API; the directories of a Spark output, a
  slot folder, ... all appear so);
- ``deny=True``: every request is refused as an identity without a data role is refused:
  403 with ``x-ms-error-code: AuthorizationPermissionMismatch`` and the error body the service
  sends ("This request is not authorized to perform this operation using this permission.").

Besides those, it keeps blobs in memory and answers the calls BlobStore makes: create
container, Put Blob (with If-None-Match / If-Match), Get Blob (ranged, 416 on an empty blob as
the service answers), Get Blob Properties, List Blobs, Delete Blob. Authentication is not
checked (the client signs with Shared Key; the token path is tested against Azurite's OAuth).
"""

from __future__ import annotations

import hashlib
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

ACCOUNT = "devstoreaccount1"
# The development account's key, published for every Azurite installation (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DENIED = "This request is not authorized to perform this operation using this permission."


class Blob:
    def __init__(self, data: bytes, metadata: dict[str, str]):
        self.data = data
        self.metadata = metadata
        self.etag = (
            '"0x8D' + hashlib.sha256(data + str(time.time_ns()).encode()).hexdigest()[:13].upper() + '"'
        )
        self.modified = formatdate(usegmt=True)


class BlobService:
    def __init__(self, *, hns: bool = False, deny: bool = False):
        self.hns = hns
        self.deny = deny
        self.containers: dict[str, dict[str, Blob]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def __enter__(self) -> BlobService:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.shutdown()
        self._http.server_close()

    def listing(self, container: str, prefix: str) -> list[tuple[str, Blob | None]]:
        """(name, blob) in name order; a directory of a hierarchical namespace has no blob."""
        blobs = self.containers.get(container, {})
        entries: dict[str, Blob | None] = dict(blobs)
        if self.hns:
            for name in blobs:
                parts = name.split("/")
                for depth in range(1, len(parts)):
                    entries.setdefault("/".join(parts[:depth]), None)
        return sorted((n, b) for n, b in entries.items() if n.startswith(prefix))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("x-ms-version", "2021-08-06")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str) -> None:
                body = (
                    '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
                    f"{code}</Code><Message>{escape(message)}\nRequestId:0\nTime:{formatdate(usegmt=True)}"
                    "</Message></Error>"
                ).encode()
                self._reply(status, body, {"x-ms-error-code": code, "Content-Type": "application/xml"})

            def _parse(self) -> tuple[str, str, dict[str, list[str]]]:
                url = urlparse(self.path)
                parts = unquote(url.path).lstrip("/").split("/", 2)
                assert parts[0] == ACCOUNT, parts
                container = parts[1] if len(parts) > 1 else ""
                blob = parts[2] if len(parts) > 2 else ""
                return container, blob, parse_qs(url.query)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                data = self._body()
                service.requests.append((self.command, self.path))
                if service.deny:
                    return self._error(403, "AuthorizationPermissionMismatch", DENIED)
                container, name, query = self._parse()
                with service.lock:
                    if query.get("restype") == ["container"] and not name:
                        return self._container(container, query)
                    blobs = service.containers.get(container)
                    if blobs is None:
                        return self._error(
                            404, "ContainerNotFound", "The specified container does not exist."
                        )
                    return self._blob(blobs, name, data)

            def _container(self, container: str, query: dict[str, list[str]]) -> None:
                if self.command == "PUT":
                    if container in service.containers:
                        return self._error(
                            409, "ContainerAlreadyExists", "The specified container already exists."
                        )
                    service.containers[container] = {}
                    return self._reply(
                        201, headers={"ETag": '"0x1"', "Last-Modified": formatdate(usegmt=True)}
                    )
                if self.command == "GET" and query.get("comp") == ["list"]:
                    if container not in service.containers:
                        return self._error(
                            404, "ContainerNotFound", "The specified container does not exist."
                        )
                    prefix = query.get("prefix", [""])[0]
                    metadata = "metadata" in ",".join(query.get("include", []))
                    items = []
                    for name, blob in service.listing(container, prefix):
                        size = 0 if blob is None else len(blob.data)
                        meta = {"hdi_isfolder": "true"} if blob is None else blob.metadata
                        items.append(
                            f"<Blob><Name>{escape(name)}</Name><Properties>"
                            f"<Last-Modified>{formatdate(usegmt=True)}</Last-Modified>"
                            f"<Etag>{'0x1' if blob is None else blob.etag.strip(chr(34))}</Etag>"
                            f"<Content-Length>{size}</Content-Length>"
                            "<Content-Type>application/octet-stream</Content-Type>"
                            "<BlobType>BlockBlob</BlobType></Properties>"
                            + (
                                "<Metadata>"
                                + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in meta.items())
                                + "</Metadata>"
                                if metadata
                                else ""
                            )
                            + "</Blob>"
                        )
                    body = (
                        '<?xml version="1.0" encoding="utf-8"?>'
                        f'<EnumerationResults ServiceEndpoint="{service.blob_endpoint}/" '
                        f'ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix>'
                        f"<Blobs>{''.join(items)}</Blobs><NextMarker /></EnumerationResults>"
                    ).encode()
                    return self._reply(200, body, {"Content-Type": "application/xml"})
                return self._error(400, "UnsupportedHttpVerb", "not answered by this service")

            def _blob(self, blobs: dict[str, Blob], name: str, data: bytes) -> None:
                blob = blobs.get(name)
                if self.command == "PUT":
                    if self.headers.get("If-None-Match") == "*" and blob is not None:
                        return self._error(409, "BlobAlreadyExists", "The specified blob already exists.")
                    match = self.headers.get("If-Match")
                    if match is not None and (blob is None or blob.etag != match):
                        return self._error(412, "ConditionNotMet", "The condition specified was not met.")
                    metadata = {
                        k[len("x-ms-meta-") :]: v
                        for k, v in self.headers.items()
                        if k.lower().startswith("x-ms-meta-")
                    }
                    blobs[name] = Blob(data, metadata)
                    return self._reply(
                        201, headers={"ETag": blobs[name].etag, "Last-Modified": blobs[name].modified}
                    )
                if blob is None:
                    return self._error(404, "BlobNotFound", "The specified blob does not exist.")
                headers = {
                    "ETag": blob.etag,
                    "Last-Modified": blob.modified,
                    "x-ms-blob-type": "BlockBlob",
                    "Content-Type": "application/octet-stream",
                    **{f"x-ms-meta-{k}": v for k, v in blob.metadata.items()},
                }
                if self.command == "HEAD":
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(blob.data)))
                    self.end_headers()
                    return None
                if self.command == "GET":
                    ranged = self.headers.get("x-ms-range") or self.headers.get("Range")
                    if ranged:
                        start, end = (int(x) for x in ranged.split("=", 1)[1].split("-"))
                        if start >= len(blob.data):
                            return self._error(
                                416,
                                "InvalidRange",
                                "The range specified is invalid for the current size of the resource.",
                            )
                        end = min(end, len(blob.data) - 1)
                        headers["Content-Range"] = f"bytes {start}-{end}/{len(blob.data)}"
                        return self._reply(206, blob.data[start : end + 1], headers)
                    return self._reply(200, blob.data, headers)
                if self.command == "DELETE":
                    del blobs[name]
                    return self._reply(202)
                return self._error(400, "UnsupportedHttpVerb", "not answered by this service")

            do_GET = do_PUT = do_HEAD = do_DELETE = _handle  # noqa: N815

        return Handler
