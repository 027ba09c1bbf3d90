"""``sp_execute_external_script``'s Python contract, reproduced for tests.

The script runs in a fresh namespace with ``InputDataSet`` (a pandas DataFrame, the rows of
``@input_data_1``) and each ``@params`` variable bound under its name without ``@``. What it
leaves in ``OutputDataSet`` is checked against the ``WITH RESULT SETS`` columns as the server
does: a script error, a missing or non-DataFrame ``OutputDataSet``, a wrong column count or a
value that does not convert to the declared type is refused with the server's message.
An ``OUTPUT`` parameter is read back from the variable of its name when the script ends
(``run_external_script_with_outputs``); one the script did not set comes back as NULL.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


class ExternalScriptError(Exception):
    """What the server raises (``Msg <number>, Level 16``), with its number."""

    def __init__(self, number: int, message: str):
        super().__init__(f"Msg {number}, Level 16, State 1, Procedure sp_execute_external_script\n{message}")
        self.number = number


_SCRIPT_ERROR = (
    "A 'Python' script error occurred during execution of 'sp_execute_external_script' with "
    "HRESULT 0x80004004.\nSTDERR message(s) from external script:\n{details}"
)


def run_external_script(
    script: str,
    input_df: pd.DataFrame | None,
    params: Mapping[str, Any],
    *,
    result_sets: Sequence[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Run ``script`` as the server would; ``params`` are keyed with or without ``@``.

    ``result_sets``: the ``WITH RESULT SETS`` columns as (name, SQL type); the output is
    renamed to these names and converted to their types. None: returned as the script left it.
    """
    return run_external_script_with_outputs(script, input_df, params, result_sets=result_sets)[0]


def run_external_script_with_outputs(
    script: str,
    input_df: pd.DataFrame | None,
    params: Mapping[str, Any],
    *,
    result_sets: Sequence[tuple[str, str]] | None = None,
    output_params: Sequence[str] = (),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``run_external_script``, plus the values of the ``OUTPUT`` parameters named."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    if input_df is not None:
        # the script gets a frame of its own; with copy-on-write (pandas 3) a shallow copy is
        # one already, and costs nothing next to the model on a large batch
        namespace["InputDataSet"] = input_df.copy(deep=not _COPY_ON_WRITE)
    for name, value in params.items():
        namespace[name.removeprefix("@")] = value
    try:
        exec(compile(script, "<sp_execute_external_script>", "exec"), namespace)
    except Exception:
        details = "".join(traceback.format_exc(limit=-3))
        raise ExternalScriptError(39004, _SCRIPT_ERROR.format(details=details)) from None
    outputs = {name.removeprefix("@"): namespace.get(name.removeprefix("@")) for name in output_params}
    return _result_set(namespace.get("OutputDataSet"), result_sets), outputs


def _result_set(output: Any, result_sets: Sequence[tuple[str, str]] | None) -> pd.DataFrame:
    if output is None:
        if result_sets:
            raise ExternalScriptError(
                11536,
                "EXECUTE statement failed because its WITH RESULT SETS clause specified 1 result "
                "set(s), but the statement only sent 0 result set(s) at run time.",
            )
        return pd.DataFrame()
    if not isinstance(output, pd.DataFrame):
        raise ExternalScriptError(
            39004,
            _SCRIPT_ERROR.format(
                details=f"OutputDataSet must be a pandas DataFrame, got {type(output).__name__}"
            ),
        )
    if result_sets is None:
        return output
    if output.shape[1] != len(result_sets):
        raise ExternalScriptError(
            11537,
            f"EXECUTE statement failed because its WITH RESULT SETS clause specified {len(result_sets)} "
            f"column(s) for result set number 1, but the statement sent {output.shape[1]} column(s) "
            "at run time.",
        )
    # WITH RESULT SETS names the columns by position, and converts each value to its type.
    result = pd.DataFrame(index=range(len(output)))
    for position, (name, sql_type) in enumerate(result_sets):
        result[name] = _convert(output.iloc[:, position].reset_index(drop=True), sql_type, name)
    return result


_INTEGERS = {
    "bit": (0, 1),
    "tinyint": (0, 255),
    "smallint": (-(2**15), 2**15 - 1),
    "int": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
_DTYPES = {"tinyint": "UInt8", "smallint": "Int16", "int": "Int32", "bigint": "Int64"}


def _convert(column: pd.Series, sql_type: str, name: str) -> pd.Series:
    kind = sql_type.lower().replace(" ", "")
    base = kind.split("(")[0]
    try:
        if base in ("float", "real", "decimal", "numeric"):
            values = pd.to_numeric(column, errors="raise").astype("float64")
            if base == "real":
                values = values.astype("float32")
            elif base in ("decimal", "numeric"):
                scale = int(re.findall(r"\d+", kind)[1]) if kind.count(",") else 0
                values = values.round(scale)
            return values
        if base in _INTEGERS:
            numbers = pd.to_numeric(column, errors="raise")
            low, high = _INTEGERS[base]
            present = numbers.dropna()
            if ((present % 1) != 0).any() and base != "bit":
                numbers = np.trunc(numbers)  # SQL Server truncates float -> int
            if base == "bit":
                return numbers.map(lambda v: None if pd.isna(v) else bool(v)).astype("boolean")
            if ((present < low) | (present > high)).any():
                raise ExternalScriptError(
                    8115, f"Arithmetic overflow error converting expression to data type {base}."
                )
            return numbers.astype(_DTYPES[base])
        if base in ("nvarchar", "varchar"):
            size = re.findall(r"\((\w+)\)", kind)[0]
            text = pd.Series(
                [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in column],
                dtype=object,
            )
            if size != "max" and text.dropna().map(len).gt(int(size)).any():
                raise ExternalScriptError(
                    2628, f"String or binary data would be truncated in column '{name}' ({sql_type})."
                )
            return text.astype(object)
        if base in ("datetime2", "date"):
            values = pd.to_datetime(column, errors="raise")
            return values.dt.normalize() if base == "date" else values
    except (ValueError, TypeError):
        raise ExternalScriptError(
            8114, f"Error converting data type to {sql_type} in column '{name}'."
        ) from None
    raise ValueError(f"the harness does not know SQL type {sql_type!r}")
