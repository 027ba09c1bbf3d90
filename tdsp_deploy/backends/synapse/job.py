"""The Spark batch-scoring job: its script (``templates/synapse/tdsp_score_job.py``) and its spec.

The script is the same file everywhere (Synapse pool, local Spark, tests); everything that
differs between runs is in the spec, one JSON document given as the job's only argument:
where to read and write, the columns, and the model variants with their share of the rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tdsp_deploy.backends.synapse.target import DataLocation, SynapseTarget
    from tdsp_deploy.manifest.model import ManifestBase
    from tdsp_deploy.packaging import PackageLock

JOB_FILE = "tdsp_score_job.py"
RESULT_FILE = "result.json"

# SQL types (as the target's columns are written) to Spark SQL types.
_SPARK_TYPES = {
    "float": "double",
    "real": "float",
    "int": "int",
    "bigint": "bigint",
    "smallint": "smallint",
    "tinyint": "smallint",  # SQL tinyint is 0..255; Spark's is signed
    "bit": "boolean",
    "datetime2": "timestamp",
    "date": "date",
}


def spark_type(sql_type: str) -> str:
    """The Spark SQL type for a column declared with ``sql_type`` (normalized by the target)."""
    if sql_type in _SPARK_TYPES:
        return _SPARK_TYPES[sql_type]
    if sql_type.startswith(("decimal(", "numeric(")):
        return "decimal" + sql_type[sql_type.index("(") :]
    if re.match(r"^n?varchar\(", sql_type):
        return "string"
    raise ValueError(f"no Spark type for SQL type {sql_type!r}")


def templates_dir() -> Path:
    """templates/ in a source tree, tdsp_deploy/_templates in an installed wheel."""
    package = Path(__file__).resolve().parents[2]
    packaged = package / "_templates"
    return packaged if packaged.is_dir() else package.parent / "templates"


def job_script_path() -> Path:
    return templates_dir() / "synapse" / JOB_FILE


def job_script() -> str:
    """The job's source text (what is uploaded, rendered and run)."""
    return job_script_path().read_text(encoding="utf-8")


def job_script_sha256() -> str:
    return hashlib.sha256(job_script().encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Variant:
    """One model version that scores a share of the rows."""

    name: str  # the slot it was deployed as (blue, green, ...)
    model_version: str
    package: str  # the package archive: abfss:// URI, or a local path for a local Spark
    share: int  # percent of the rows
    flavor: str | None
    model_path: str  # inside the package: model/<name>
    script: str  # inside the package: code/<script>

    @classmethod
    def of(cls, name: str, lock: PackageLock, package: str, share: int, flavor: str | None) -> Variant:
        return cls(name, lock.model_version, package, share, flavor, lock.model.path, lock.script)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def job_spec(
    target: SynapseTarget,
    manifest: ManifestBase,
    variants: list[Variant],
    source: DataLocation,
    sink: DataLocation,
    *,
    salt: str = "",
    request_log: str | None = None,
    result: str | None = None,
) -> dict[str, Any]:
    """The job's argument. Raises ValueError when the variants cannot make a split.
    ``request_log``: where a split run writes which variant scored which key (for `ab`);
    ``result``: where the job writes its summary, or its error (result.json)."""
    live = [v for v in variants if v.share > 0]
    if not live:
        raise ValueError("no model version takes a share of the rows")
    if sum(v.share for v in live) != 100:
        raise ValueError(f"the shares add up to {sum(v.share for v in live)}, not 100")
    if len(live) > 1 and not target.key_column:
        raise ValueError(
            "an A/B split of the rows needs target.key_column (the column whose hash assigns a row)"
        )
    return {
        "endpoint": manifest.name,
        "input": source.job_json(),
        "output": sink.job_json(),
        "inputs": [{"name": c.name, "type": spark_type(c.type)} for c in target.inputs],
        "outputs": [{"name": c.name, "type": spark_type(c.type)} for c in target.outputs],
        "key_column": target.key_column,
        "salt": salt,
        "variants": [v.to_json() for v in live],
        **({"request_log": {"path": request_log}} if request_log and len(live) > 1 else {}),
        **({"result": {"path": result}} if result else {}),
    }


def spec_text(spec: dict[str, Any]) -> str:
    """The spec as the job's argument: compact, stable key order."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def read_result(data: bytes | None) -> dict[str, Any] | None:
    """The job's result.json (its summary, or its error); None when absent or not one."""
    if not data:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("state") in ("success", "failed") else None


def failure_text(result: dict[str, Any] | None) -> str:
    """A failed job's own words: its traceback (the driver's), else its error line."""
    if not result or result.get("state") != "failed":
        return ""
    return str(result.get("traceback") or result.get("error") or "")


def driver_log_url(batch: dict[str, Any]) -> str | None:
    """Where the pool keeps the driver's output (appInfo.driverLogUrl), once it runs."""
    info = batch.get("appInfo")
    url = info.get("driverLogUrl") if isinstance(info, dict) else None
    return str(url) if url else None


def driver_log_hint(batch: dict[str, Any]) -> str:
    """Where to read the whole driver log."""
    url = driver_log_url(batch)
    where = f"the driver log ({url})" if url else "the driver log"
    return f"read {where} in Synapse Studio: Monitor > Apache Spark applications"


def job_log(batch_id: Any, batch: dict[str, Any], result: dict[str, Any] | None, result_uri: str) -> str:
    """What `logs` shows of a slot's last job: the job's own messages and error (from its
    result.json), where the driver's full log is, and the launcher's last lines."""
    from tdsp_deploy.backends.synapse.livy import log_tail

    lines = [f"Spark batch {batch_id}: {batch.get('state')}", f"result: {result_uri}"]
    if url := driver_log_url(batch) or batch.get("driver_log_url"):
        lines.append(f"driver log: {url}")
    if result:
        lines += [f"tdsp-job: {m}" for m in result.get("messages") or []]
        if result.get("traceback"):
            lines += ["", str(result["traceback"])]
    else:
        lines.append("(the job wrote no result.json)")
    launcher = batch.get("log_tail") if "log_tail" in batch else log_tail(batch)
    if launcher:
        lines += ["", "launcher log (last lines):", str(launcher)]
    return "\n".join(lines)
