"""A managed identity's token service on loopback: the App Service contract that azure-identity's
DefaultAzureCredential (ManagedIdentityCredential) reads from IDENTITY_ENDPOINT and
IDENTITY_HEADER, so that the CLI, run as a user would run it, gets its tokens with no secret in
its environment.

It answers for each resource what ``tokens`` says (a fixed string, or a function of the
resource: Azurite's OAuth mode needs a JWT whose audience is the resource), records the
resources asked for, and refuses a request without the identity header, as the platform does.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

STORAGE_RESOURCE = "https://storage.azure.com"


def unsigned_jwt(audience: str, *, tenant: str = "72f988bf-86f1-41af-91ab-2d7cd011db47") -> str:
    """A JWT with the claims Azurite checks in its basic OAuth mode (issuer, audience, times);
    Azurite does not check the signature, so it carries none that means anything."""

    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant}/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "oid": "00000000-0000-0000-0000-00000000a11c",
        "tid": tenant,
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class ManagedIdentityEndpoint:
    """``environ`` is what a process needs to find it; ``resources`` what it was asked for."""

    def __init__(self, token: str | Callable[[str], str]):
        self.token = token
        self.secret = os.urandom(8).hex()
        self.resources: list[str] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def environ(self) -> dict[str, str]:
        return {
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{self._http.server_address[1]}/MSI/token",
            "IDENTITY_HEADER": self.secret,
        }

    def token_for(self, resource: str) -> str:
        return self.token(resource) if callable(self.token) else self.token

    def __enter__(self) -> ManagedIdentityEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                query = parse_qs(urlparse(self.path).query)
                if self.headers.get("X-IDENTITY-HEADER") != endpoint.secret or "resource" not in query:
                    status, doc = 400, {"error": "invalid_request"}
                else:
                    resource = query["resource"][0]
                    endpoint.resources.append(resource)
                    status, doc = (
                        200,
                        {
                            "access_token": endpoint.token_for(resource),
                            "expires_on": str(int(time.time()) + 3600),
                            "resource": resource,
                            "token_type": "Bearer",
                        },
                    )
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
