"""What a SQL deployment writes besides its T-SQL: the batches as ``Statement``s, the deployment
document kept with each model row, the values of the statements' parameters, and the files
``render`` writes for review."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging.lock import PackageLock


@dataclasses.dataclass(frozen=True)
class Statement:
    """One batch to execute, with the names of its ``?`` parameters in order."""

    name: str
    sql: str
    parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Only statements with parameters are checked: a script literal may hold a '?'.
        if self.parameters and self.sql.count("?") != len(self.parameters):
            raise AssertionError(f"{self.name}: {self.sql.count('?')} markers, {len(self.parameters)} names")


def table_statements(
    target: Any, model: Callable[[Any], str], traffic: Callable[[Any], str], request_log: Callable[[Any], str]
) -> list[Statement]:
    """A deployment's CREATE TABLE batches: the model and traffic tables, and the request log's
    when the target keeps one."""
    made = [("create_model_table", model), ("create_traffic_table", traffic)]
    if target.request_log:
        made.append(("create_request_log_table", request_log))
    return [Statement(name, make(target)) for name, make in made]


def deployment_document(target: Any, manifest: ManifestBase, lock: PackageLock, **extra: Any) -> str:
    """The JSON kept in the model row's ``manifest`` column: what was deployed, from what (the
    outputs too, so that an older version's procedure can be rebuilt), plus ``extra``."""
    doc = {
        "endpoint": manifest.name,
        "package_id": lock.package_id,
        "model": lock.model.to_json(),
        "flavor": manifest.model.flavor,
        "procedure": target.procedure_name(manifest.name),
        "inputs": [c.model_dump() for c in target.inputs],
        "outputs": [c.model_dump() for c in target.outputs],
        "ab_key": target.ab_key,
        "request_log": target.request_log,
        **extra,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def row_values(
    manifest: ManifestBase, lock: PackageLock, payload: bytes, *, flavor: str, document: str, slot: str
) -> dict[str, Any]:
    """The values of a deployment's named parameters; ``sha256`` is the payload's own hash, so
    the server can check it (``HASHBYTES('SHA2_256', payload)``)."""
    return {
        "name": manifest.model_name,
        "version": lock.model.version,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "flavor": flavor,
        "payload": payload,
        "manifest": document,
        "slot": slot,
    }


def with_slot(document: str, slot: str) -> str:
    """The deployment document plus the slot it was pushed as (read back by status and logs)."""
    return json.dumps({**json.loads(document), "slot": slot}, sort_keys=True, separators=(",", ":"))


def document_id(document: str) -> str:
    """The config_id of a deployment document (without the slot it was pushed as)."""
    try:
        doc = json.loads(document)
    except ValueError:
        return ""
    if isinstance(doc, dict):
        doc.pop("slot", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_statements(
    out: Path, statements: Sequence[Statement], values: dict[str, Any], payload_file: str
) -> tuple[list[Path], dict[str, list[dict[str, Any]]]]:
    """``NN-<statement>.sql`` in execution order, and each statement's parameters in order (the
    payload named by the file it is written to)."""
    written: list[Path] = []
    listing: dict[str, list[dict[str, Any]]] = {}
    for number, statement in enumerate(statements, start=1):
        path = out / f"{number:02d}-{statement.name}.sql"
        path.write_text(statement.sql, encoding="utf-8", newline="\n")
        written.append(path)
        listing[path.name] = [
            {"name": p, "value": payload_file if p == "payload" else values[p]} for p in statement.parameters
        ]
    return written, listing
