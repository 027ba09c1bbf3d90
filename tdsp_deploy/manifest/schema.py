"""The manifest's JSON Schema, for editors (yaml-language-server) and reviewers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tdsp_deploy.manifest.model import manifest_class


def manifest_json_schema(targets: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    schema = manifest_class(targets).model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tdsp-deploy manifest (v1)",
        **{key: value for key, value in schema.items() if key != "title"},
    }
