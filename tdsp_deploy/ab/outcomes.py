"""Outcomes of requests, from the business side: request id -> a number (or true/false).

An experiment's primary metric is not in the request log — a purchase, a click, a label
arrives later and elsewhere. The user exports it as CSV or parquet with two columns,
``request_id`` and ``outcome``, and `ab analyze --outcomes FILE` joins it to the requests by
id. Every problem with the file is a UsageError that names the line and says how to fix it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from tdsp_deploy.errors import PluginError, UsageError

__all__ = ["read_outcomes", "read_units", "outcome_type"]

REQUEST_ID = "request_id"
OUTCOME = "outcome"
UNIT = "unit"  # optional: the unit of randomisation (the sticky key's value, e.g. a user id)
_COLUMNS_HINT = "the file needs the columns request_id and outcome (a number, or true/false)"
_BOOLEANS = {"true": 1.0, "false": 0.0}
_PARQUET_SUFFIXES = {".parquet", ".pq"}


def read_outcomes(path: Path) -> dict[str, float]:
    """Map each request id to its outcome: numbers as floats, true/false as 1.0/0.0.

    CSV (with a header row; read with the standard library) or parquet (``.parquet``/``.pq``,
    read with pyarrow, which is then required). Missing columns, empty or unreadable values
    and duplicate ids raise UsageError naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such outcomes file", hint="pass --outcomes with a CSV or parquet file")
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        return _read_parquet(path)
    return _read_csv(path)


def read_units(path: Path) -> dict[str, str] | None:
    """request id -> unit, from the file's optional ``unit`` column (None without one): with
    a sticky header the split assigns users, not requests, and the analysis must count users."""
    path = Path(path)
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        if UNIT not in pq.read_schema(path).names:
            return None
        table = pq.read_table(path, columns=[REQUEST_ID, UNIT])
        pairs = zip(table.column(REQUEST_ID).to_pylist(), table.column(UNIT).to_pylist(), strict=True)
    else:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if UNIT not in [c.strip() for c in reader.fieldnames or []]:
                return None
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
        pairs = ((row.get(REQUEST_ID), row.get(UNIT)) for row in rows)
    return {
        str(request_id).strip(): str(unit).strip()
        for request_id, unit in pairs
        if request_id is not None and unit not in (None, "")
    }


def outcome_type(values: Iterable[float]) -> Literal["binary", "continuous"]:
    """'binary' when there is at least one value and every value is 0 or 1, else 'continuous'."""
    seen = False
    for value in values:
        if value not in (0.0, 1.0):
            return "continuous"
        seen = True
    return "binary" if seen else "continuous"


def _parse_outcome(raw: Any, where: str, path: Path) -> float:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        text = "" if raw is None else str(raw).strip()
        if not text:
            raise UsageError(
                f"{path}:{where}: the outcome is empty",
                hint="give every request an outcome, or leave the request's row out",
            )
        if text.lower() in _BOOLEANS:
            return _BOOLEANS[text.lower()]
        try:
            value = float(text)
        except ValueError:
            raise UsageError(
                f"{path}:{where}: outcome {text!r} is not a number",
                hint="outcomes are numbers, or true/false",
            ) from None
    if not math.isfinite(value):
        raise UsageError(
            f"{path}:{where}: outcome {raw!r} is not a finite number",
            hint="outcomes are numbers, or true/false",
        )
    return value


def _add(
    outcomes: dict[str, float], lines: dict[str, str], request_id: Any, value: float, where: str, path: Path
) -> None:
    key = "" if request_id is None else str(request_id).strip()
    if not key:
        raise UsageError(f"{path}:{where}: the request_id is empty", hint=_COLUMNS_HINT)
    if key in outcomes:
        raise UsageError(
            f"{path}:{where}: request_id {key!r} appears twice (first at {lines[key]})",
            hint="give each request one outcome: aggregate the rows first (e.g. any purchase -> 1)",
        )
    outcomes[key] = value
    lines[key] = where


def _missing_columns(found: list[str], path: Path) -> UsageError:
    missing = [c for c in (REQUEST_ID, OUTCOME) if c not in found]
    shown = ", ".join(found) if found else "none"
    return UsageError(f"{path}: missing column(s) {', '.join(missing)} (found: {shown})", hint=_COLUMNS_HINT)


def _read_csv(path: Path) -> dict[str, float]:
    outcomes: dict[str, float] = {}
    lines: dict[str, str] = {}
    try:
        # utf-8-sig: spreadsheets put a byte-order mark before the header
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            columns = [c.strip() for c in header] if header else []
            if REQUEST_ID not in columns or OUTCOME not in columns:
                raise _missing_columns([c for c in columns if c], path)
            id_at, outcome_at = columns.index(REQUEST_ID), columns.index(OUTCOME)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines, e.g. at the end
                where = f"line {reader.line_num}"
                if len(row) <= max(id_at, outcome_at):
                    raise UsageError(
                        f"{path}:{where}: expected {len(columns)} columns, found {len(row)}",
                        hint=_COLUMNS_HINT,
                    )
                value = _parse_outcome(row[outcome_at], where, path)
                _add(outcomes, lines, row[id_at], value, where, path)
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path}: not a UTF-8 text file ({error.reason})",
            hint="save the outcomes as UTF-8 CSV, or as parquet with a .parquet suffix",
        ) from None
    except csv.Error as error:
        raise UsageError(f"{path}: not a readable CSV file: {error}", hint=_COLUMNS_HINT) from None
    return outcomes


def _read_parquet(path: Path) -> dict[str, float]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PluginError(
            f"{path}: reading parquet needs pyarrow, which is not installed", hint="pip install pyarrow"
        ) from None
    try:
        columns = list(pq.read_schema(path).names)
        if REQUEST_ID not in columns or OUTCOME not in columns:
            raise _missing_columns(columns, path)
        table = pq.read_table(path, columns=[REQUEST_ID, OUTCOME])
    except UsageError:
        raise
    except Exception as error:  # pyarrow's own errors (ArrowInvalid, OSError, ...) at this one seam
        raise UsageError(
            f"{path}: not a readable parquet file: {error}",
            hint="write it with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table",
        ) from None
    outcomes: dict[str, float] = {}
    lines: dict[str, str] = {}
    ids = table.column(REQUEST_ID).to_pylist()
    values = table.column(OUTCOME).to_pylist()
    for row, (request_id, raw) in enumerate(zip(ids, values, strict=True), start=1):
        where = f"row {row}"
        _add(outcomes, lines, request_id, _parse_outcome(raw, where, path), where, path)
    return outcomes
