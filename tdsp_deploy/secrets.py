"""Which values are secrets, so that nothing we write for people to read shows them.

A manifest passes secrets through environment variables (`DB_URL: ${TOKEN}`); the process
that needs them gets them, but rendered plans, YAML for review, messages and errors show a
marker instead. Two ways a value is known to be secret:

- it came from the environment: every value a ``${VAR}`` took, and the value of a variable a
  target names as a secret source (``password_env``), whatever the variable is called. The
  manifest loader collects them (``SecretValues``) and they travel with the loaded manifest;
- its name looks secret (``API_KEY: ...`` written in clear), for environment variables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PWD|CREDENTIAL|CONNECTION_STRING|SAS)", re.I)
REDACTED = "<redacted>"
# Fields that name the environment variable holding a secret (the SQL targets' auth).
SECRET_SOURCE_KEYS = frozenset({"password_env"})
# Inside free text (messages, logs) a value is replaced wherever it occurs; one shorter than
# this ("1", "on", "dev") would match everywhere and leave the text unreadable, so such values
# are redacted only where they stand as a whole field (see ``redact_variables``).
MIN_TEXT_LENGTH = 4


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


class SecretValues:
    """Values that must not be shown, and the means to take them out of text and data."""

    def __init__(self, values: Iterable[str] = ()):
        self.values = frozenset(value for value in values if isinstance(value, str) and value)
        forms: set[str] = set()
        for value in self.values:
            if len(value) >= MIN_TEXT_LENGTH:
                # As written, and as JSON and repr() would show it (quotes, backslashes,
                # newlines and non-ASCII escaped), so that a serialized copy is caught too.
                forms |= {value, json.dumps(value)[1:-1], repr(value)[1:-1]}
        longest_first = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, longest_first))) if forms else None

    def __bool__(self) -> bool:
        return bool(self.values)

    def __repr__(self) -> str:  # never the values
        return f"SecretValues({len(self.values)} values)"

    def union(self, other: SecretValues) -> SecretValues:
        return self if not other.values - self.values else SecretValues(self.values | other.values)

    def text(self, text: str) -> str:
        """``text`` with every occurrence of a secret replaced by the marker."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def data(self, document: Any) -> Any:
        """A copy of a JSON-like document with secrets taken out of every string and key."""
        if self._pattern is None:
            return document
        if isinstance(document, str):
            return self.text(document)
        if isinstance(document, Mapping):
            return {self.data(key): self.data(value) for key, value in document.items()}
        if isinstance(document, (list, tuple)):
            return [self.data(item) for item in document]
        return document

    def contains(self, value: str) -> bool:
        """Whether ``value`` holds a secret anywhere (short ones included)."""
        return any(secret in value for secret in self.values)


NO_SECRETS = SecretValues()


def redact_variables(variables: Mapping[str, str], secrets: SecretValues = NO_SECRETS) -> dict[str, str]:
    """The variables with a marker for every value that holds a secret, and for the values of
    secret-looking names."""
    return {
        name: REDACTED if is_secret_name(name) or secrets.contains(str(value)) else value
        for name, value in variables.items()
    }


def redact_files(paths: Iterable[Path], secrets: SecretValues) -> None:
    """Rewrite the text files among ``paths`` with their secrets redacted: the last net under
    ``render``, whose files a backend builds from many manifest values (names, hosts, users)
    that any ``${VAR}`` may have supplied. Binary files are left as they are."""
    if not secrets:
        return
    for path in paths:
        try:
            text = path.read_bytes().decode("utf-8")  # bytes: line endings stay as written
        except (OSError, UnicodeDecodeError):
            continue
        redacted = secrets.text(text)
        if redacted != text:
            path.write_bytes(redacted.encode("utf-8"))
