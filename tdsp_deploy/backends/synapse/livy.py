"""The Synapse Livy batch API: the one door to a Spark pool.

REST reference: learn.microsoft.com/rest/api/synapse/data-plane/spark-batch ("Create Spark Batch
Job", "Get Spark Batch Job", "Cancel Spark Batch Job"):

    POST   {endpoint}/livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches?detailed=true
    GET    {endpoint}/livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches/{id}?detailed=true
    DELETE {endpoint}/livyApi/versions/2019-11-01-preview/sparkPools/{pool}/batches/{id}

The request body requires ``name`` and ``file``; a batch (``SparkBatchJob`` in the REST
specification's sparkJob.json) has ``id``, ``state`` (Livy's: not_started, starting, running,
busy, idle, shutting_down, recovering, then success, dead, killed or error), ``log`` (null on
create, then at most the last 10 lines of the spark-submit launcher: never the driver's output,
which stays in the pool behind ``appInfo.driverLogUrl``) and ``errorInfo``. Calls carry a
bearer token for ``https://dev.azuresynapse.net/.default``.

Synapse limits the rate of requests per workspace (documented: 2 batch creations and 200 GETs
a second) and answers 429 past it, and like any service it can answer 5xx for a moment. So a
refused or failed request is tried again after ``Retry-After`` when the answer gives one, else
after a growing pause; a create only on 429 (a 5xx may have created the batch). Polling that
still fails after its retries cancels the batch (DELETE) before it gives up, so that no job is
left running that nobody watches. HTTP and connection errors become BackendError here; a job
that ends badly is DeploymentFailed, one that outlives its time is cancelled and raises
DeploymentTimeout.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Callable
from typing import Any

from tdsp_deploy.backends.base import Progress, ProgressEvent, no_progress
from tdsp_deploy.errors import BackendError, DeploymentFailed, DeploymentTimeout

API_VERSION = "2019-11-01-preview"
TOKEN_SCOPE = "https://dev.azuresynapse.net/.default"
FINAL_STATES = frozenset({"success", "dead", "killed", "error"})
LOG_TAIL_LINES = 40
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Tries of one request (the first and the retries) before it is given up.
MAX_TRIES = 6
#: The longest pause between two tries that the client accepts, Retry-After included.
MAX_RETRY_PAUSE = 60.0
#: Synapse's documented limit on a request body.
MAX_BODY_BYTES = 100 * 1024

TokenProvider = Callable[[], str]


def azure_token_provider(credential: Any = None) -> TokenProvider:
    """Tokens for the Synapse development endpoint from DefaultAzureCredential (or ``credential``)."""

    def token() -> str:
        nonlocal credential
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        try:
            return credential.get_token(TOKEN_SCOPE).token
        except Exception as exc:  # azure-identity raises its own tree; say what to do instead
            raise BackendError(
                f"could not get a token for Synapse ({type(exc).__name__})",
                hint="sign in with `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET",
            ) from None

    return token


class LivyClient:
    """Batches on one Spark pool of one workspace."""

    def __init__(
        self,
        endpoint: str,
        pool: str,
        token: TokenProvider,
        *,
        session: Any = None,
        request_timeout: float = 60.0,
        poll_interval: float = 2.0,
        max_poll_interval: float = 20.0,
        retry_pause: float = 1.0,
        max_tries: int = MAX_TRIES,
        sleep: Callable[[float], None] = time.sleep,
    ):
        import requests

        self.base = f"{endpoint.rstrip('/')}/livyApi/versions/{API_VERSION}/sparkPools/{pool}/batches"
        self.pool = pool
        self.token = token
        self.session = session or requests.Session()
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.retry_pause = retry_pause
        self.max_tries = max_tries
        self.sleep = sleep

    # -- the three calls -------------------------------------------------------------------------
    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the batch; its description (``id``, ``state``)."""
        import json

        size = len(json.dumps(body).encode())
        if size > MAX_BODY_BYTES:
            raise BackendError(
                f"the Spark batch request is {size} bytes; Synapse takes at most {MAX_BODY_BYTES}",
                hint="fewer target.conf settings or columns; the job's spec travels in the request",
            )
        return self._call(
            "POST", self.base, doing="submit the Spark batch", retried=frozenset({429}), json=body
        )

    def get(self, batch_id: int) -> dict[str, Any]:
        return self._call("GET", f"{self.base}/{batch_id}", doing=f"read batch {batch_id}")

    def cancel(self, batch_id: int) -> None:
        self._call("DELETE", f"{self.base}/{batch_id}", doing=f"cancel batch {batch_id}", detailed=False)

    # -- a batch to its end ----------------------------------------------------------------------
    def wait(self, batch_id: int, *, timeout: float, progress: Progress = no_progress) -> dict[str, Any]:
        """Poll with backoff until the batch ends. Success: its description. dead / killed /
        error: DeploymentFailed with the log tail. Past ``timeout``: cancel, DeploymentTimeout."""
        started = time.monotonic()
        interval = self.poll_interval
        last_state = None
        while True:
            try:
                batch = self.get(batch_id)
            except BackendError as lost:
                # the batch would run on, unwatched, its result never read: stop it
                cancelled = self._cancel_quietly(batch_id)
                lost.message += (
                    f"; batch {batch_id} was cancelled"
                    if cancelled
                    else f"; batch {batch_id} may still be running: cancel it in Synapse Studio"
                )
                raise
            except KeyboardInterrupt:
                self._cancel_quietly(batch_id)
                raise
            state = str(batch.get("state"))
            elapsed = time.monotonic() - started
            if state != last_state:
                progress(
                    ProgressEvent(
                        step="run", message=f"batch {batch_id}: {state}", elapsed=elapsed, timeout=timeout
                    )
                )
                last_state = state
            if state == "success":
                return batch
            if state in FINAL_STATES:
                tail = log_tail(batch)
                url = (batch.get("appInfo") or {}).get("driverLogUrl")
                raise DeploymentFailed(
                    f"Spark batch {batch_id} on pool {self.pool} ended {state}"
                    + (f":\n{tail}" if tail else ""),
                    hint=f"read the driver log{f' ({url})' if url else ''} in Synapse Studio "
                    "(Monitor > Apache Spark applications)",
                    details={"batch_id": batch_id, "state": state, "log_tail": tail, "driver_log_url": url},
                )
            if elapsed >= timeout:
                self._cancel_quietly(batch_id)
                raise DeploymentTimeout(
                    f"Spark batch {batch_id} did not finish within {timeout:g} s ({state}); it was cancelled",
                    hint="raise target.job_timeout, add executors, or score a smaller input",
                    details={"batch_id": batch_id, "state": state, "log_tail": log_tail(batch)},
                )
            time.sleep(min(interval, max(0.0, timeout - elapsed) + 0.05))
            interval = min(interval * 1.5, self.max_poll_interval)

    def _cancel_quietly(self, batch_id: int) -> bool:
        """True when the batch was cancelled; the error that led here is what the user needs
        to hear about, not this one's."""
        with contextlib.suppress(BackendError):
            self.cancel(batch_id)
            return True
        return False

    def _call(
        self,
        method: str,
        url: str,
        *,
        doing: str,
        detailed: bool = True,
        retried: frozenset[int] = RETRIED_STATUSES,
        **kwargs: Any,
    ) -> Any:
        """One request, tried again on the statuses in ``retried`` (and, but for a create, on
        a failed connection) after Retry-After or a doubling pause, up to ``max_tries``."""
        import requests

        params = {"detailed": "true"} if detailed else None
        pause = self.retry_pause
        for attempt in range(1, self.max_tries + 1):
            last = attempt == self.max_tries
            headers = {"Authorization": f"Bearer {self.token()}"}
            try:
                response = self.session.request(
                    method, url, headers=headers, params=params, timeout=self.request_timeout, **kwargs
                )
            except requests.RequestException as exc:
                if method == "POST" or last:
                    raise BackendError(
                        f"could not reach the Synapse workspace to {doing}: {type(exc).__name__}",
                        hint=f"check the workspace name and network access to {url.split('/livyApi')[0]}",
                    ) from None
                self.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE)
                continue
            if response.status_code in retried and not last:
                wait = retry_after(response.headers.get("Retry-After"))
                self.sleep(min(wait if wait is not None else pause, MAX_RETRY_PAUSE))
                pause = min(pause * 2, MAX_RETRY_PAUSE)
                continue
            return self._answer(response, doing, attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the last try returns or raises

    def _answer(self, response: Any, doing: str, tries: int) -> Any:
        if response.status_code == 429:
            raise BackendError(
                f"Synapse refused to {doing}: too many requests (HTTP 429, {tries} tries)",
                hint="a workspace allows 2 batch submissions and 200 status reads a second; wait, or "
                "run fewer jobs at once",
            )
        if response.status_code in (401, 403):
            raise BackendError(
                f"Synapse refused to {doing} (HTTP {response.status_code})",
                hint="the identity needs the Synapse Compute Operator role on the workspace",
            )
        if response.status_code == 404:
            raise BackendError(
                f"Synapse could not {doing}: not found (HTTP 404)",
                hint=f"check that Spark pool '{self.pool}' exists in the workspace",
            )
        if response.status_code >= 400:
            after = f" after {tries} tries" if tries > 1 else ""
            raise BackendError(
                f"Synapse could not {doing}: HTTP {response.status_code}{after} {_short(response.text)}"
            )
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"Synapse answered {doing} with something that is not JSON") from None


def log_tail(batch: dict[str, Any], lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a batch's log (``log``), plus Synapse's ``errorInfo`` messages."""
    log = batch.get("log") or []
    text = [str(line) for line in (log if isinstance(log, list) else str(log).splitlines())][-lines:]
    for error in batch.get("errorInfo") or []:
        if isinstance(error, dict) and error.get("message"):
            text.append(f"{error.get('errorCode', 'error')}: {error['message']}")
    return "\n".join(text)


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
