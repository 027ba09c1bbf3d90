"""What SQL Server, a dedicated SQL pool and their driver say no with, as ``tdsp_deploy.errors``:
the one place. The engine's own words (its permission hint, a refusal only it makes) come from
its ``Dialect``; the numbers the generated T-SQL THROWs are one table (``THROWS``) for both.

How an error is identified, as mssql-python reports it: its exception's class and text are
``Driver Error: <the SQLSTATE's words>; DDBC Error: [Microsoft][SQL Server]<message>``. The
SQLSTATE itself is not kept, only its words (read back here through the driver's own table),
and only the first diagnostic record reaches the exception, without its native error number.
So:

- the connection's own failures are told apart by SQLSTATE (08001, 08S01, HYT00: the server
  was not reached; 28000: the login was refused);
- the procedures and batches the targets generate put a stable code at the start of every
  message they THROW (``tdsp-50003: ...``), which survives any driver;
- SQL Server's own refusals are recognized by their message text (the number only where a
  driver shows it, as pyodbc does: ``... (39004)``);
- a model failing inside ``sp_execute_external_script`` would only say "HRESULT 0x80004004"
  (the traceback is in a later record the driver drops), so the generated script catches its
  own exception and the procedure THROWs it as ``tdsp-50010`` with the traceback.

Secrets are scrubbed from every message that leaves this module, pieces of them included.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tdsp_deploy.backends.sql.dialect import SQL_SERVER
from tdsp_deploy.errors import BackendError, DeploymentFailed, TdspError

if TYPE_CHECKING:
    from tdsp_deploy.backends.sql.dialect import Dialect

PERMISSION_HINT = SQL_SERVER.permission_hint

#: the exception class names DB-API 2.0 (PEP 249) prescribes; every driver (and the fake) has them
DBAPI_ERRORS = frozenset(
    {
        "Error",
        "Warning",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    }
)
ENABLE_HINT = (
    "ask the DBA to run: EXEC sp_configure 'external scripts enabled', 1; RECONFIGURE WITH OVERRIDE; "
    "(then restart the Launchpad service if the setting does not take)"
)
LOGIN_HINT = (
    "check target.server, target.port, target.database and target.auth "
    "(auth.method sql reads the password from the variable auth.password_env)"
)
SCRIPT_HINT = "fix the model or its scoring code (the traceback is the server's Python) and push again"
MAX_MESSAGE = 1200
#: a model's traceback is longer than a message; it is shown whole up to this length
MAX_TRACEBACK = 4000


@dataclasses.dataclass(frozen=True)
class Throw:
    """A number the generated T-SQL THROWs: its message (after ``tdsp-<number>: ``) and what to
    do about it."""

    message: str
    hint: str


#: Every THROW of the generated T-SQL, SQL Server's and the pool's: one number, one meaning.
THROWS = {
    50001: Throw(
        "this model version is already stored with other content; give the model a new version",
        "give the new model another model.version (or leave it out: derived from the content)",
    ),
    50002: Throw(
        "this model version is not in the model table; insert it first",
        "push the model version before pointing a slot at it",
    ),
    50003: Throw(
        "no slot of this endpoint takes traffic (or @slot names none); push the model first",
        "push the model first (tdsp-deploy push MANIFEST), or name a slot that exists",
    ),
    50004: Throw(
        "this endpoint has no such deployment slot",
        "name a slot of this endpoint (tdsp-deploy status MANIFEST lists them)",
    ),
    50005: Throw(
        "the traffic weights of this endpoint's slots must add up to 100 (or 0)",
        "give weights that add up to 100, e.g. blue=90 green=10",
    ),
    50006: Throw(
        "@input_table must name a table or view: [schema.]name or #temp",
        "name a table, view or #temp table: [schema.]name",
    ),
    # re-thrown with the engine's own message after the code
    50007: Throw(
        "the scoring query failed",
        "the pool's message says why PREDICT failed; `tdsp-deploy logs MANIFEST` lists such calls",
    ),
    # SQL Server's scoring procedures: the model's own failure, with its traceback
    50010: Throw("the model failed:", SCRIPT_HINT),
}
#: the code of a model's own failure, THROWn by SQL Server's scoring procedures with its traceback
SCRIPT_FAILED = 50010
#: the pool's procedure re-raises a failed scoring query under this number, with the pool's message
SCORING_FAILED = 50007
#: what to do about each THROW, by number
TSQL_REFUSALS = {number: throw.hint for number, throw in THROWS.items()}
#: the stable code every THROW of the generated T-SQL starts its message with
CODE = re.compile(r"\btdsp-(5\d{4})\b")
#: SQLSTATEs whose meaning the connection needs (ODBC's; the words are the driver's)
UNREACHABLE_STATES = frozenset({"08001", "08004", "08S01", "HYT00", "HYT01"})
LOGIN_STATES = frozenset({"28000"})
_KNOWN_STATES = (*sorted(UNREACHABLE_STATES), *sorted(LOGIN_STATES), "42000", "HY000", "23000", "42S02")
#: the shortest run of a secret's characters a message may not repeat
SCRUB_MIN = 4


def is_driver_error(exc: BaseException) -> bool:
    """A DB-API exception of any driver (recognized by PEP 249's class names)."""
    return any(cls.__name__ in DBAPI_ERRORS and cls.__module__ != "builtins" for cls in type(exc).__mro__)


def sqlstate(exc: BaseException) -> str | None:
    """The ODBC SQLSTATE of a driver error: pyodbc's first argument; for mssql-python, read
    back from the words it keeps instead (``driver_error``), through its own table."""
    first = exc.args[0] if exc.args else None
    if isinstance(first, str) and re.fullmatch(r"[0-9A-Z]{5}", first):
        return first
    words = getattr(exc, "driver_error", None)
    return _states_by_words().get(words) if isinstance(words, str) else None


@functools.cache
def _states_by_words() -> dict[str, str]:
    try:
        from mssql_python.exceptions import sqlstate_to_exception
    except ImportError:
        return {}
    found: dict[str, str] = {}
    for state in _KNOWN_STATES:
        known = sqlstate_to_exception(state, "")
        if known is not None:
            found.setdefault(known.driver_error, state)
    return found


def translate_error(
    exc: BaseException, doing: str = "", *, secrets: Sequence[str] = (), dialect: Dialect | None = None
) -> TdspError | None:
    """Our error for what the driver raised, in the words of ``dialect``'s engine (SQL Server's
    when None); None for an exception that is not the driver's (a bug stays a bug)."""
    if isinstance(exc, TdspError):
        return exc
    if not is_driver_error(exc):
        return None
    text = _scrub(" ".join(str(a) for a in exc.args) or str(exc), secrets)
    lowered = text.lower()
    where = f"{doing}: " if doing else ""
    state = sqlstate(exc)
    codes = {int(n) for n in CODE.findall(text)}
    numbers = {int(n) for n in re.findall(r"\((\d{3,6})\)", text)} | codes
    refusal = dialect.refusal(text, where) if dialect is not None and dialect.refusal else None
    if refusal is not None:
        return refusal
    if state in LOGIN_STATES or "login failed" in lowered or 18456 in numbers:
        return BackendError(f"{where}SQL Server refused the login: {_short(text)}", hint=LOGIN_HINT)
    if SCRIPT_FAILED in codes:
        return DeploymentFailed(
            f"{where}the model failed inside SQL Server:\n{_traceback(text)}", hint=SCRIPT_HINT
        )
    if codes:  # the THROWs of the generated T-SQL: the deployment's own rules
        ours = codes & set(TSQL_REFUSALS)
        return DeploymentFailed(
            f"{where}{_short(_server_text(text))}", hint=TSQL_REFUSALS[min(ours)] if ours else None
        )
    if (
        "external scripts enabled" in lowered
        or 39023 in numbers
        or ("sp_execute_external_script" in lowered and "disabled" in lowered)
    ):
        return DeploymentFailed(
            f"{where}Machine Learning Services is off on this instance: {_short(text)}", hint=ENABLE_HINT
        )
    if (
        "permission" in lowered
        and ("denied" in lowered or "does not have" in lowered)
        or numbers & {229, 262, 297, 300}
    ):
        words = dialect or SQL_SERVER
        return BackendError(
            f"{where}permission denied{words.permission_needed}: {_short(text)}", hint=words.permission_hint
        )
    if numbers & {39004, 39019} or "external script error" in lowered or "script error occurred" in lowered:
        return DeploymentFailed(
            f"{where}the Python script failed inside SQL Server: {_script_message(text)}",
            hint="run the procedure in SSMS for the full traceback, fix the model and push again",
        )
    if numbers & set(TSQL_REFUSALS) and not codes:  # pyodbc shows the number of an older THROW
        return DeploymentFailed(
            f"{where}{_short(_server_text(text))}", hint=TSQL_REFUSALS[min(numbers & set(TSQL_REFUSALS))]
        )
    if "encryption not supported" in lowered or "ssl provider" in lowered:
        return BackendError(
            f"{where}the TLS handshake with SQL Server failed: {_short(text)}",
            hint="the server offers no encryption, or a certificate the client does not trust: fix the "
            "server's certificate, or set target.trust_server_certificate: true (or target.encrypt: "
            "false on a network you trust)",
        )
    if state in UNREACHABLE_STATES or any(
        word in lowered for word in ("timeout", "timed out", "tcp provider", "network")
    ):
        return BackendError(f"{where}SQL Server could not be reached: {_short(text)}", hint=LOGIN_HINT)
    return BackendError(f"{where}SQL Server said no: {_short(text)}")


def _traceback(text: str) -> str:
    """The Python traceback a scoring procedure THROWs (``tdsp-50010: ...``), as it came."""
    body = CODE.split(_server_text(text), maxsplit=1)[-1].lstrip(": ")
    body = body.removeprefix("the model failed:").strip()
    return body if len(body) <= MAX_TRACEBACK else "..." + body[-(MAX_TRACEBACK - 3) :]


def _script_message(text: str) -> str:
    """The Python part of an external-script error (SQL Server wraps it in its own lines)."""
    match = re.search(r"(?:An external script error occurred:|Error in execution\.)\s*(.*)", text, re.S)
    return _short(match.group(1).strip() if match else text)


def _server_text(text: str) -> str:
    """The server's own message, without the driver's words and [vendor][driver] prefix."""
    return re.sub(r"^.*\[SQL Server\]", "", text, flags=re.S).strip()


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` without any secret, and without any run of SCRUB_MIN or more of its characters:
    a parser or a server quotes pieces of a value (``keyword 'w}}' has no value``), not only
    whole ones."""
    secrets = [s for s in secrets if s]
    if secrets:
        shortest = min(SCRUB_MIN, *(len(s) for s in secrets))
        out: list[str] = []
        at = 0
        while at < len(text):
            longest = 0
            for secret in secrets:
                end = at + 1
                while end <= len(text) and text[at:end] in secret:
                    end += 1
                longest = max(longest, end - 1 - at)
            if longest >= shortest:
                out.append("***")
                at += longest
            else:
                out.append(text[at])
                at += 1
        text = "".join(out)
    return re.sub(r"(?i)(PWD|Password)=(\{(?:[^}]|\}\})*\}?|[^;]*)", r"\1=***", text)


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
