"""What Synapse's Spark-batch answers are allowed to look like, to check the loopback server by.

``SPARK_BATCH_JOB`` restates the SparkBatchJob definition (and the definitions it refers to) of
the Synapse data-plane REST specification, sparkJob.json, api-version 2019-11-01-preview
(Azure/azure-rest-api-specs, specification/synapse/data-plane/Microsoft.Synapse/preview/
2019-11-01-preview/sparkJob.json): property names, types, enums, which may be null
(``x-nullable``), and that ``id`` is required. ``validate`` checks a document against it and
lists what does not fit; properties the definition does not name are reported too, except the
ones the recorded live traffic shows Synapse sending beyond it (``computeName``, and
``queuedAt`` in schedulerInfo, in the Azure SDK for .NET's SessionRecords of
SparkBatchClientLiveTests).
"""

from __future__ import annotations

from typing import Any

STRING = {"type": "string"}
NULLABLE_TIME = {"type": "string", "nullable": True}
TIME = {"type": "string", "nullable": True}  # date-time; null where the recording shows null

SPARK_REQUEST = {
    "type": "object",
    "properties": {
        "name": STRING,
        "file": STRING,
        "className": STRING,
        "args": {"type": "array", "items": STRING},
        "jars": {"type": "array", "items": STRING},
        "pyFiles": {"type": "array", "items": STRING},
        "files": {"type": "array", "items": STRING},
        "archives": {"type": "array", "items": STRING},
        "conf": {"type": "object", "additionalProperties": STRING},
        "driverMemory": STRING,
        "driverCores": {"type": "integer"},
        "executorMemory": STRING,
        "executorCores": {"type": "integer"},
        "numExecutors": {"type": "integer"},
    },
}

SPARK_BATCH_JOB: dict[str, Any] = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "livyInfo": {
            "type": "object",
            "properties": {
                **{
                    f"{state}At": NULLABLE_TIME
                    for state in (
                        "notStarted",
                        "starting",
                        "running",
                        "dead",
                        "success",
                        "killed",
                        "recovering",
                    )
                },
                "currentState": STRING,
                "jobCreationRequest": SPARK_REQUEST,
            },
        },
        "name": STRING,
        "workspaceName": STRING,
        "sparkPoolName": STRING,
        "computeName": STRING,  # recorded, not in the definition
        "submitterName": STRING,
        "submitterId": STRING,
        "artifactId": STRING,
        "jobType": {"type": "string", "enum": ["SparkBatch", "SparkSession"]},
        "result": {"type": "string", "enum": ["Uncertain", "Succeeded", "Failed", "Cancelled"]},
        "schedulerInfo": {
            "type": "object",
            "properties": {
                "submittedAt": NULLABLE_TIME,
                "queuedAt": NULLABLE_TIME,  # recorded, not in the definition
                "scheduledAt": NULLABLE_TIME,
                "endedAt": NULLABLE_TIME,
                "cancellationRequestedAt": TIME,
                "currentState": {"type": "string", "enum": ["Queued", "Scheduled", "Ended"]},
            },
        },
        "pluginInfo": {
            "type": "object",
            "properties": {
                "preparationStartedAt": NULLABLE_TIME,
                "resourceAcquisitionStartedAt": NULLABLE_TIME,
                "submissionStartedAt": NULLABLE_TIME,
                "monitoringStartedAt": NULLABLE_TIME,
                "cleanupStartedAt": NULLABLE_TIME,
                "currentState": {
                    "type": "string",
                    "enum": [
                        "Preparation",
                        "ResourceAcquisition",
                        "Queued",
                        "Submission",
                        "Monitoring",
                        "Cleanup",
                        "Ended",
                    ],
                },
            },
        },
        "errorInfo": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "message": STRING,
                    "errorCode": STRING,
                    "source": {"type": "string", "enum": ["System", "User", "Unknown", "Dependency"]},
                },
            },
        },
        "tags": {"type": "object", "additionalProperties": STRING},
        "id": {"type": "integer"},
        "appId": {"type": "string", "nullable": True},
        # additionalProperties: string; the recording shows null values in it (isSessionTimedOut)
        "appInfo": {
            "type": "object",
            "nullable": True,
            "additionalProperties": {"type": "string", "nullable": True},
        },
        "state": STRING,
        "log": {"type": "array", "nullable": True, "items": STRING},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "integer": int}


def validate(doc: Any, schema: dict[str, Any] = SPARK_BATCH_JOB, where: str = "$") -> list[str]:
    """What in ``doc`` does not fit ``schema`` (empty when it fits)."""
    if doc is None:
        return [] if schema.get("nullable") else [f"{where}: null where the definition allows none"]
    kind = _TYPES[schema["type"]]
    if not isinstance(doc, kind) or (kind is int and isinstance(doc, bool)):
        return [f"{where}: {type(doc).__name__}, not {schema['type']}"]
    problems: list[str] = []
    if "enum" in schema and doc not in schema["enum"]:
        problems.append(f"{where}: {doc!r} is not one of {schema['enum']}")
    if kind is dict:
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in doc:
                problems.append(f"{where}.{name}: required")
        for name, value in doc.items():
            if name in properties:
                problems += validate(value, properties[name], f"{where}.{name}")
            elif "additionalProperties" in schema:
                problems += validate(value, schema["additionalProperties"], f"{where}.{name}")
            else:
                problems.append(f"{where}.{name}: not in the definition")
    if kind is list and "items" in schema:
        for index, item in enumerate(doc):
            problems += validate(item, schema["items"], f"{where}[{index}]")
    return problems
