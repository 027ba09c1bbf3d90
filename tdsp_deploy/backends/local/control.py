"""The CLI's calls to its router's control routes (``/-/state``, ``/-/drain``, ``/-/resume``).

They carry the admin key from admin.json, which only the CLI and the router read (see
admission.py). A router started by an older tdsp-deploy knows no admin key and takes the
scoring key on these routes; it answers the admin key with a 401, and the call is made once
more with the scoring key, so that an upgrade never strands a running endpoint.
"""

from __future__ import annotations

import http.client

from tdsp_deploy.backends.local.state import EndpointFiles


def control_request(
    files: EndpointFiles,
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    timeout: float,
) -> tuple[int, bytes] | None:
    """(status, body) of one control request; None when the router cannot be reached."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    answer = _request(host, port, method, path, body, {**headers, **files.admin_headers()}, timeout)
    if answer is not None and answer[0] == 401:  # a router from before the admin key
        scoring = {"Authorization": f"Bearer {files.keys()['primary_key']}"}
        answer = _request(host, port, method, path, body, {**headers, **scoring}, timeout)
    return answer


def _request(
    host: str, port: int, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, bytes] | None:
    try:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()
    except (OSError, http.client.HTTPException):
        return None
