"""A keep-alive client of a local endpoint, with its key."""

from __future__ import annotations

import http.client
import urllib.parse


class Client:
    """One keep-alive connection to the endpoint, with the key."""

    def __init__(self, uri: str, key: str):
        parts = urllib.parse.urlsplit(uri)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.key = key

    def post(self, body: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
        self.connection.request(
            "POST",
            "/score",
            body=body,
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/json",
                **{k.replace("_", "-"): v for k, v in headers.items()},
            },
        )
        response = self.connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def get(self, path: str) -> bytes:
        self.connection.request("GET", path, headers={"Authorization": f"Bearer {self.key}"})
        return self.connection.getresponse().read()
