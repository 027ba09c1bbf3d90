"""Which values are secrets, so that nothing we write for people to read shows them.

A manifest passes secrets through environment variables (`API_TOKEN: ${TOKEN}`); the
process that needs them gets them, but rendered plans and YAML for review show a marker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PWD|CREDENTIAL|CONNECTION_STRING|SAS)", re.I)
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def redact_variables(variables: Mapping[str, str]) -> dict[str, str]:
    """The variables with the values of secret-looking names replaced by a marker."""
    return {name: REDACTED if is_secret_name(name) else value for name, value in variables.items()}
