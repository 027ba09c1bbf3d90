"""What the SQL targets' backends do alike with a request and an answer: a request's rows
(JSON table or CSV) as values a driver binds, the batch that calls the scoring procedure on
them, the refusal of a traffic change a procedure-routed target cannot make, a JSON answer,
and the id of a deployment document."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from tdsp_deploy.backends.sql.target import Column
from tdsp_deploy.errors import EndpointNotFound, UsageError


#: the #temp table a caller's rows go into for the scoring procedure to read (a session's own)
INPUT_TABLE = "#tdsp_input"


def scoring_call(
    procedure: str, argument: str, loading: tuple[list[str], list[Any]], slot: str | None, request_id: str | None
) -> tuple[str, list[Any]]:
    """One batch: ``loading`` (the statements that fill INPUT_TABLE with the request's rows,
    and their bound values), EXEC of ``procedure`` on that table (``argument`` tells it where
    the rows are; ``@slot``: NULL lets the split decide; ``@request_id`` names the call in the
    request log), then the table dropped."""
    lines, params = loading
    call = f"EXEC {procedure} {argument}, @slot = ?, @request_id = ?;"
    return "\n".join([*lines, call, f"DROP TABLE {INPUT_TABLE};"]) + "\n", [*params, slot, request_id]


def check_traffic_request(
    slots: Sequence[dict[str, Any]],
    traffic: dict[str, int],
    mirror: dict[str, int] | None,
    target: str,
    procedure: str,
) -> None:
    """Refuse, before any statement, a traffic change that a procedure-routed target cannot
    make: mirroring, an endpoint with no slots, or a slot it does not have (``slots``: the
    traffic table's rows)."""
    if any((mirror or {}).values()):
        raise UsageError(f"{target} cannot mirror traffic", hint="leave out --mirror")
    if not slots:
        raise EndpointNotFound(f"procedure {procedure} has no slots", hint="push first")
    known = {r["slot"] for r in slots}
    unknown = sorted(set(traffic) - known)
    if unknown:
        raise UsageError(f"no slot named {', '.join(unknown)}", hint=f"slots: {', '.join(sorted(known))}")


def request_rows(body: bytes, inputs: Sequence[Column | str]) -> list[list[Any]]:
    """The rows of a request, in the order of the procedure's inputs: a JSON table
    (``{"columns": [...], "data": [[...]]}``) or CSV with a header line naming the columns.
    CSV cells become numbers for numeric inputs (an empty cell is NULL). ValueError says
    what is wrong."""
    names = [c if isinstance(c, str) else c.name for c in inputs]
    text = body.decode("utf-8-sig", errors="strict") if isinstance(body, bytes) else str(body)
    if text.lstrip()[:1] in ("{", "["):
        columns, data = _json_table(text, names)
    else:
        columns, data = _csv_table(text, inputs)
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(f"the request has no column {', '.join(missing)}")
    order = [columns.index(name) for name in names]
    rows = []
    for number, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ValueError(f"data[{number}] must be a list of {len(columns)} values")
        rows.append([_bindable(row[i], number, names[k]) for k, i in enumerate(order)])
    return rows


#: the integers a driver binds (bigint); a larger one is no SQL value
BIGINT = range(-(2**63), 2**63)


def _bindable(cell: Any, row: int, name: str) -> Any:
    """A cell the driver can bind: text, a number, true/false or null. Lists, objects and
    integers beyond bigint make the driver raise TypeError/ValueError: a 400, not a crash."""
    if isinstance(cell, float) and not math.isfinite(cell):
        raise ValueError(f"data[{row}], column {name}: {cell} is no SQL number")
    if cell is None or isinstance(cell, str | float | bool):
        return cell
    if isinstance(cell, int):
        if cell in BIGINT:
            return cell
        raise ValueError(f"data[{row}], column {name}: {cell} is beyond a bigint")
    raise ValueError(f"data[{row}], column {name}: a {type(cell).__name__} is not a value of a column")


def _json_table(text: str, names: list[str]) -> tuple[list[str], list[Any]]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the request is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError('the request must be {"columns": [...], "data": [[...], ...]} or CSV')
    return list(doc.get("columns") or names), doc["data"]


_NUMERIC = re.compile(r"^(float|real|decimal|numeric|int|bigint|smallint|tinyint|bit)\b")


def _csv_table(text: str, inputs: Sequence[Column | str]) -> tuple[list[str], list[Any]]:
    import csv
    import io

    lines = list(csv.reader(io.StringIO(text)))
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("the CSV request is empty: it needs a header line naming the columns")
    header = [cell.strip() for cell in lines[0]]
    types = {c.name: c.type for c in inputs if not isinstance(c, str)}
    data = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(header):
            raise ValueError(f"CSV line {number} has {len(line)} cells; the header names {len(header)}")
        data.append(
            [_csv_cell(cell, types.get(name), name, number) for name, cell in zip(header, line, strict=True)]
        )
    return header, data


def _csv_cell(cell: str, sql_type: str | None, name: str, line: int) -> Any:
    cell = cell.strip()
    if sql_type is None or not _NUMERIC.match(sql_type):
        return cell
    if cell == "":
        return None
    try:
        number = float(cell)
    except ValueError:
        raise ValueError(f"CSV line {line}, column {name}: '{cell}' is not a number ({sql_type})") from None
    return int(number) if sql_type.startswith(("int", "bigint", "smallint", "tinyint", "bit")) else number


def first_value_true(rows: Sequence[Sequence[Any]]) -> bool:
    return bool(rows) and bool(rows[0]) and rows[0][0] not in (None, 0, False, "0")

