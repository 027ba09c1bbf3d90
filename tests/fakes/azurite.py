"""Azurite, the Azure Storage emulator (npm package `azurite`), started on loopback for a test.

Found in the project-local install that .ci/run makes (``.ci/node/node_modules/.bin``) or on
PATH. Its data lives in a temporary folder; it is stopped (by pid) when the context ends.
The account is Azurite's well-known development account (documented, not a secret).

``oauth=True`` starts it as Azure is reached with a token: HTTPS (a self-signed certificate
for 127.0.0.1 made here; ``ca_file`` is what a client must trust) and Azurite's basic OAuth
check, which accepts a bearer token only if it is a JWT for the storage audience
(https://storage.azure.com), from an Entra issuer, and not expired.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests import paths

ROOT = paths.ROOT
ACCOUNT = "devstoreaccount1"
# The development account's key, published in Azurite's README for every installation.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_blob() -> str | None:
    """The azurite-blob command, or None when it (or node) is not installed."""
    if shutil.which("node") is None:
        return None
    local = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


def self_signed(folder: Path, host: str = "127.0.0.1", stem: str = "") -> tuple[Path, Path]:
    """A certificate and key for ``host`` (an IP address or a DNS name), valid for a day:
    (``<stem>cert.pem``, ``<stem>key.pem``) in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alternative = x509.DNSName(host)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / f"{stem}cert.pem", folder / f"{stem}key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


class Azurite:
    def __init__(self, folder: Path, *, oauth: bool = False):
        self.folder = folder
        self.oauth = oauth
        self.ca_file: Path | None = None
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None

    @property
    def blob_endpoint(self) -> str:
        scheme = "https" if self.oauth else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def service(self, **options: Any) -> Any:
        from azure.storage.blob import BlobServiceClient

        if self.ca_file is not None:
            options.setdefault("connection_verify", str(self.ca_file))
        return BlobServiceClient.from_connection_string(self.connection_string, **options)

    def __enter__(self) -> Azurite:
        command = azurite_blob()
        if command is None:
            raise RuntimeError("azurite-blob is not installed")
        tls: list[str] = []
        if self.oauth:
            self.ca_file, key_file = self_signed(self.folder)
            tls = ["--oauth", "basic", "--cert", str(self.ca_file), "--key", str(key_file)]
        self.process = subprocess.Popen(
            [
                command,
                *tls,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--location",
                str(self.folder),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--loose",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        assert self.process.stdout is not None
        seen = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"listens on https?://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                return self
        self.__exit__()
        raise RuntimeError("Azurite did not start: " + "".join(seen)[-2000:])

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
