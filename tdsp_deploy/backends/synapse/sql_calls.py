"""A caller's side of the pool's scoring procedure. What it adds to the core's call
(sql/requests.scoring_call): how the request's rows get into the #temp table (numbered, in a
ROUND_ROBIN heap), and the procedure's result as the JSON answer (in the request's row order)
with the slots that served it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tdsp_deploy.backends.sql.requests import INPUT_TABLE
from tdsp_deploy.backends.sql.rows import q
from tdsp_deploy.backends.synapse.predict_tsql import ROW_COLUMN, VARIANT_COLUMN
from tdsp_deploy.errors import BackendError

if TYPE_CHECKING:
    from tdsp_deploy.backends.synapse.target import SynapseTarget


#: how the pool's procedure is told where a call's rows are
INPUT_ARGUMENT = f"@input_table = N'{INPUT_TABLE}'"


def input_rows(target: SynapseTarget, rows: Sequence[Sequence[Any]]) -> tuple[list[str], list[Any]]:
    """The rows into the #temp table with their numbers (``tdsp_row``: the answer comes back in
    no particular order), values bound as ``?`` (one SELECT per row joined by UNION ALL). No
    rows: an empty table (the health probe). A #temp table lives as long as the session, so
    each caller has its own."""
    names = ", ".join(q(c.name) for c in target.inputs)
    declared = ", ".join(f"{q(c.name)} {c.type}" for c in target.inputs)
    params: list[Any] = []
    selects = []
    for number, row in enumerate(rows):
        selects.append(f"SELECT {number}, " + ", ".join(f"CAST(? AS {c.type})" for c in target.inputs))
        params.extend(row)
    lines = [
        "SET NOCOUNT ON;",
        f"IF OBJECT_ID(N'tempdb..{INPUT_TABLE}') IS NOT NULL DROP TABLE {INPUT_TABLE};",
        f"CREATE TABLE {INPUT_TABLE} ({q(ROW_COLUMN)} int, {declared})"
        " WITH (DISTRIBUTION = ROUND_ROBIN, HEAP);",
    ]
    if selects:
        lines.append(
            f"INSERT INTO {INPUT_TABLE} ({q(ROW_COLUMN)}, {names})\n" + "\nUNION ALL ".join(selects) + ";"
        )
    return lines, params


def answer(columns: Sequence[str], rows: Sequence[Sequence[Any]], outputs: Sequence[Any]) -> dict[str, Any]:
    """The procedure's result (input columns, outputs, model_version, variant) as the JSON
    answer: the outputs and model_version only, as the SQL Server target answers, in the
    request's row order."""
    position = {name.lower(): i for i, name in enumerate(columns)}
    wanted = [*(c.name for c in outputs), "model_version"]
    missing = [name for name in wanted if name.lower() not in position]
    if missing:
        raise BackendError(
            f"the procedure's result has no column {', '.join(missing)} (columns: {list(columns)})"
        )
    picks = [position[name.lower()] for name in wanted]
    order = position.get(ROW_COLUMN)
    if order is not None:  # the pool answers in no particular order: the request's order again
        rows = sorted(rows, key=lambda row: row[order])
    return {"columns": wanted, "data": [[row[i] for i in picks] for row in rows]}


def served_by(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The slots (``variant`` column) that answered, by name."""
    position = {name.lower(): i for i, name in enumerate(columns)}.get(VARIANT_COLUMN)
    return [] if position is None else sorted({str(row[position]) for row in rows})
