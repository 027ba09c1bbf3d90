"""What the wire tests of both SQL targets share: the test passwords the TDS responder accepts
(read by the target from the environment variable named beside each), and a manifest aimed at
the responder."""

from __future__ import annotations

from pathlib import Path

import yaml

SQL_PASSWORD = "Xq7;{Pz55}kv"
SQL_PASSWORD_ENV = "TDSP_TEST_SQL_PASSWORD"
POOL_PASSWORD = "Pq9;{Zz}vv-pool"
POOL_PASSWORD_ENV = "TDSP_TEST_POOL_PASSWORD"


def on_the_wire(manifest: Path, port: int) -> Path:
    """The manifest aimed at the responder (no TLS: it answers ENCRYPT_NOT_SUP)."""
    document = yaml.safe_load(manifest.read_text())
    document["target"].update(server="127.0.0.1", port=port, encrypt=False)
    manifest.write_text(yaml.safe_dump(document))
    return manifest
