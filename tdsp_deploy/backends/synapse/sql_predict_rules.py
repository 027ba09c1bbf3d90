"""What PREDICT in a dedicated SQL pool accepts, checked before anything is deployed.

The documented rules (learn.microsoft.com, "Score machine learning models with PREDICT" and
"PREDICT (Transact-SQL)", Azure Synapse Analytics):

- the model is ONNX, and ``RUNTIME = ONNX`` is required;
- input data types are int, bigint, real, float, char, varchar and nvarchar;
- multi-dimensional arrays are not supported: each model input is ONE column of the scoring
  table, not a single array holding all inputs;
- the names and data types of the model's inputs match the names and types of the columns;
- the columns of ``WITH (...)`` have the names of the model's outputs.

So every model input here is a tensor of shape [N] or [N, 1] named after one input column and
of that column's type, and every model output is a tensor of shape [N] or [N, 1] named after
one output column. The same type list is applied to the output columns. ``check_columns``
looks at the manifest alone (``validate`` time); ``check_model`` at the ONNX graph.

This module imports onnx only inside ``model_signature``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from tdsp_deploy.errors import UsageError

#: The SQL types PREDICT takes, as the documentation lists them.
PREDICT_TYPES = ("int", "bigint", "real", "float", "char", "varchar", "nvarchar")
TEXT_TYPES = frozenset({"char", "varchar", "nvarchar"})
#: onnx.TensorProto element types (numbers fixed by the ONNX standard) each SQL type maps to.
FLOAT, INT32, INT64, STRING, DOUBLE = 1, 6, 7, 8, 11
TENSOR_TYPE = {
    "int": INT32,
    "bigint": INT64,
    "real": FLOAT,
    "float": DOUBLE,
    "char": STRING,
    "varchar": STRING,
    "nvarchar": STRING,
}
TENSOR_TYPE_NAMES = {FLOAT: "float", INT32: "int32", INT64: "int64", STRING: "string", DOUBLE: "double"}
#: The column name the scoring procedure adds beside the outputs.
VERSION_COLUMN = "model_version"

# What to declare instead of a type PREDICT does not take.
_INSTEAD = {
    "smallint": "int",
    "tinyint": "int",
    "bit": "int",
    "decimal": "float",
    "numeric": "float",
    "datetime2": "a number or text made in a view (e.g. DATEDIFF_BIG in seconds), then int/bigint or varchar",
    "date": "a number or text made in a view, then int or varchar",
}


class _Column(Protocol):
    name: str
    type: str


def base_type(sql_type: str) -> str:
    """``nvarchar(32)`` -> ``nvarchar``; lower case, no blanks."""
    return sql_type.replace(" ", "").lower().split("(", 1)[0]


class PredictRuleError(UsageError):
    """The manifest or the model does not fit PREDICT; ``problems`` says where, the hint how."""

    kind = "predict_rules"

    def __init__(self, problems: list[str], *, hint: str):
        self.problems = problems
        head = "the model cannot be scored by PREDICT in a dedicated SQL pool:"
        super().__init__(
            "\n".join([head, *(f"  - {p}" for p in problems)]), hint=hint, details={"problems": problems}
        )


# -- the manifest's columns -----------------------------------------------------------------------
def column_problems(inputs: Sequence[_Column], outputs: Sequence[_Column]) -> list[str]:
    """Types outside PREDICT's list, and output names the procedure's result cannot hold."""
    problems = []
    for section, columns in (("inputs", inputs), ("outputs", outputs)):
        for column in columns:
            kind = base_type(column.type)
            if kind not in PREDICT_TYPES:
                instead = _INSTEAD.get(kind, "one of " + ", ".join(PREDICT_TYPES))
                problems.append(
                    f"target.{section}: {column.name} is {column.type}; PREDICT takes only "
                    f"{', '.join(PREDICT_TYPES)} (declare it as {instead})"
                )
    input_names = {c.name.lower() for c in inputs}
    for column in outputs:
        if column.name.lower() in input_names:
            problems.append(
                f"target.outputs: {column.name} is also an input; the result holds both (d.*, p.*): rename it"
            )
        if column.name.lower() == VERSION_COLUMN:
            problems.append(f"target.outputs: {column.name} is the column the procedure adds; rename it")
    return problems


def check_columns(inputs: Sequence[_Column], outputs: Sequence[_Column]) -> None:
    """Raise PredictRuleError when the manifest's columns cannot go through PREDICT."""
    problems = column_problems(inputs, outputs)
    if problems:
        raise PredictRuleError(
            problems, hint="change the types in target.inputs / target.outputs as suggested"
        )


# -- the ONNX graph ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorSlot:
    """One input or output of an ONNX graph, as PREDICT sees it."""

    name: str
    elem_type: int | None  # None: not a tensor (a sequence or map, e.g. a ZipMap output)
    shape: tuple[int | str | None, ...] | None  # None: no shape declared; str: a symbolic dim

    def describe(self) -> str:
        if self.elem_type is None:
            return f"{self.name} (not a tensor)"
        kind = TENSOR_TYPE_NAMES.get(self.elem_type, f"type {self.elem_type}")
        dims = (
            "?"
            if self.shape is None
            else ", ".join("N" if i == 0 else str(d or "?") for i, d in enumerate(self.shape))
        )
        return f"{self.name} ({kind} [{dims}])"

    @property
    def one_column(self) -> bool:
        """Shape [N] or [N, 1]: one value per row."""
        if self.shape is None:
            return False
        return len(self.shape) == 1 or (len(self.shape) == 2 and self.shape[1] == 1)


@dataclasses.dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSlot, ...]
    outputs: tuple[TensorSlot, ...]


def model_signature(model: Any) -> Signature:
    """The inputs (initializers excluded) and outputs of an onnx.ModelProto."""
    graph = model.graph
    initialized = {i.name for i in graph.initializer}
    return Signature(
        inputs=tuple(_slot(v) for v in graph.input if v.name not in initialized),
        outputs=tuple(_slot(v) for v in graph.output),
    )


def _slot(value: Any) -> TensorSlot:
    if not value.type.HasField("tensor_type"):
        return TensorSlot(value.name, None, None)
    tensor = value.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
    return TensorSlot(value.name, tensor.elem_type, shape)


def signature_problems(
    signature: Signature, inputs: Sequence[_Column], outputs: Sequence[_Column]
) -> list[str]:
    """Every way the graph's inputs and outputs fail to map one column each onto the manifest's."""
    problems: list[str] = []
    wanted = {c.name: c for c in inputs}
    for slot in signature.inputs:
        column = wanted.get(slot.name)
        if slot.elem_type is None:
            problems.append(f"model input {slot.describe()} is not a tensor")
            continue
        if not slot.one_column:
            width = slot.shape[1] if slot.shape and len(slot.shape) == 2 else None
            what = f"{width} columns in one tensor" if isinstance(width, int) else "not one column per row"
            problems.append(
                f"model input {slot.describe()} holds {what}; PREDICT feeds each input from one column, "
                "so the model needs one input per column"
            )
            continue
        if column is None:
            near = next((c.name for c in inputs if c.name.lower() == slot.name.lower()), None)
            problems.append(
                f"model input {slot.name} is not a column of target.inputs"
                + (f" (names must match exactly: {near})" if near else "")
            )
            continue
        expected = _passed_as(column, slot)
        if expected is not None:
            problems.append(
                f"model input {slot.describe()} is fed from {column.name} {column.type}, which PREDICT "
                f"passes as {TENSOR_TYPE_NAMES[expected]}; declare the column as {_sql_for(slot.elem_type)} "
                "or re-export the "
                f"input as {TENSOR_TYPE_NAMES[expected]}"
            )
    problems += _not_in_model(inputs, signature.inputs, "target.inputs", "an input")
    declared = {c.name: c for c in outputs}
    for slot in signature.outputs:
        column = declared.get(slot.name)
        if slot.elem_type is None:
            problems.append(
                f"model output {slot.describe()} is not a tensor (a scikit-learn classifier exported with "
                "ZipMap gives a list of dicts: export with options={'zipmap': False})"
            )
            continue
        if not slot.one_column:
            problems.append(
                f"model output {slot.describe()} is not one column per row; "
                "split it into one output per column"
            )
            continue
        if column is None:
            problems.append(
                f"model output {slot.name} is not listed in target.outputs (WITH names every output)"
            )
            continue
        if _passed_as(column, slot) is not None:
            problems.append(
                f"model output {slot.describe()} does not match target.outputs {column.name} {column.type}; "
                f"declare it as {_sql_for(slot.elem_type)}"
            )
    problems += _not_in_model(outputs, signature.outputs, "target.outputs", "an output")
    return problems


def _passed_as(column: _Column, slot: TensorSlot) -> int | None:
    """The tensor type PREDICT uses for ``column`` when the model's ``slot`` expects another."""
    expected = TENSOR_TYPE.get(base_type(column.type))
    return expected if expected is not None and slot.elem_type != expected else None


def _not_in_model(
    columns: Sequence[_Column], slots: Sequence[TensorSlot], section: str, what: str
) -> list[str]:
    names = {s.name for s in slots}
    return [f"{section}: {c.name} is not {what} of the model" for c in columns if c.name not in names]


def _sql_for(elem_type: int | None) -> str:
    return {FLOAT: "real", DOUBLE: "float", INT32: "int", INT64: "bigint", STRING: "nvarchar(n)"}.get(
        elem_type or 0, "a type PREDICT takes (this tensor type has none)"
    )


def reexport_hint(flavor: str | None) -> str:
    """How to fix a graph that does not map one column per input."""
    if flavor == "sklearn":
        return "the converted model does not fit; see the problems above"
    return (
        "re-export the model with one input per column, named and typed as target.inputs (skl2onnx: "
        "convert_sklearn(model, initial_types=[('sepal_length', DoubleTensorType([None, 1])), ...]) "
        "on a Pipeline, which concatenates them), and its outputs split one per column; "
        "or give the scikit-learn model itself "
        "(model.flavor: sklearn, a .pkl or .joblib file): tdsp-deploy converts it that way at package time"
    )


def check_model(
    model: Any, inputs: Sequence[_Column], outputs: Sequence[_Column], *, flavor: str | None
) -> None:
    """Raise PredictRuleError unless the ONNX ``model`` maps one column per input and output,
    with names and types as the manifest declares them."""
    problems = column_problems(inputs, outputs) + signature_problems(model_signature(model), inputs, outputs)
    if problems:
        raise PredictRuleError(problems, hint=reexport_hint(flavor))
