"""A scikit-learn model as an ONNX graph PREDICT can run: one input and one output per column.

skl2onnx converts a model that takes one feature matrix. PREDICT feeds each model input from
one column, so the graph is given one [N, 1] input per ``target.inputs`` column (named and typed
as the column: float -> double, real -> float, int -> int32, bigint -> int64), cast to the
converted model's type and concatenated in the manifest's order -- the order the model was
trained on. A Pipeline whose first step picks columns by name (a ColumnTransformer) is
converted with per-column inputs by skl2onnx itself.

Outputs: a classifier gives its label, then one probability per class (ZipMap off); a regressor
its values. Those columns fill ``target.outputs`` in order, each its own [N] output named after
the column and cast to the column's type, as ``WITH (...)`` reads them.

skl2onnx, onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdsp_deploy.backends.synapse.sql_predict_rules import (
    DOUBLE,
    FLOAT,
    TENSOR_TYPE,
    TEXT_TYPES,
    _Column,
    base_type,
)
from tdsp_deploy.errors import UsageError

#: Opsets old enough for older onnxruntime builds to load (Synapse does not document the
#: runtime version behind PREDICT); skl2onnx picks the highest its converters need up to these.
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}
#: Prefix of every name the converted model uses inside the graph, so none can collide with a
#: column name (which become the graph's input and output names).
INNER = "tdsp_inner__"
FEATURES = "tdsp_features"


class ConversionFailed(UsageError):
    kind = "onnx_conversion"


def sklearn_to_onnx(estimator: Any, inputs: Sequence[_Column], outputs: Sequence[_Column]) -> bytes:
    """The serialized ONNX model for ``estimator``, one input and one output per column.

    Tries a float64 feature matrix first (scikit-learn computes in float64), then float32
    (tree converters take only float32; scikit-learn's trees compare in float32 too), then
    skl2onnx's own per-column inputs; the first graph onnxruntime loads wins. ConversionFailed
    says why none did."""
    import onnxruntime

    for column in (*inputs, *outputs):
        if column.name.startswith(INNER):
            raise ConversionFailed(f"column {column.name}: names starting with {INNER} are reserved")
    attempts: list[tuple[str, Any]] = []
    if not any(base_type(c.type) in TEXT_TYPES for c in inputs):
        attempts += [("float64 matrix", DOUBLE), ("float32 matrix", FLOAT)]
    attempts.append(("per-column inputs", None))
    failures = []
    for label, core in attempts:
        try:
            model = _convert(estimator, inputs, core)
            _one_output_per_column(model, outputs)
            _dedupe_opsets(model)
            model.graph.name = "tdsp_deploy"  # skl2onnx names it with a random uuid: same model, same bytes
            payload = model.SerializeToString()
            onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
            return payload
        except ConversionFailed:
            raise
        except Exception as exc:  # skl2onnx and onnxruntime raise many kinds; each is one reason
            failures.append(f"{label}: {type(exc).__name__}: {_first_line(exc)}")
    raise ConversionFailed(
        f"skl2onnx could not convert the {type(estimator).__name__} to ONNX:\n  " + "\n  ".join(failures),
        hint="export the model to ONNX yourself (one input per column) and set model.flavor: onnx",
    )


def _convert(estimator: Any, inputs: Sequence[_Column], core: int | None) -> Any:
    from skl2onnx import convert_sklearn

    options = _zipmap_off(estimator)
    if core is None:  # skl2onnx names the inputs after the columns itself
        model = convert_sklearn(
            estimator,
            initial_types=[(c.name, _tensor_type(TENSOR_TYPE[base_type(c.type)], [None, 1])) for c in inputs],
            options=options,
            target_opset=TARGET_OPSET,
        )
        _rename_inner(model.graph, keep={c.name for c in inputs})
        return model
    model = convert_sklearn(
        estimator,
        initial_types=[(FEATURES, _tensor_type(core, [None, len(inputs)]))],
        options=options,
        target_opset=TARGET_OPSET,
    )
    _rename_inner(model.graph, keep=set())
    _columns_into_matrix(model.graph, inputs, core)
    return model


def _zipmap_off(estimator: Any) -> dict[int, dict[str, bool]] | None:
    from sklearn.base import is_classifier

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    return {id(final): {"zipmap": False}} if is_classifier(final) else None


def _tensor_type(elem_type: int, shape: list[int | None]) -> Any:
    from skl2onnx.common import data_types

    kinds = {
        DOUBLE: data_types.DoubleTensorType,
        FLOAT: data_types.FloatTensorType,
        TENSOR_TYPE["int"]: data_types.Int32TensorType,
        TENSOR_TYPE["bigint"]: data_types.Int64TensorType,
        TENSOR_TYPE["nvarchar"]: data_types.StringTensorType,
    }
    return kinds[elem_type](shape)


def _rename_inner(graph: Any, *, keep: set[str]) -> None:
    """Prefix every value name of the converted graph except ``keep`` (the column inputs)."""

    def renamed(name: str) -> str:
        return name if not name or name in keep else INNER + name

    for node in graph.node:
        node.input[:] = [renamed(n) for n in node.input]
        node.output[:] = [renamed(n) for n in node.output]
    for collection in (graph.input, graph.output, graph.value_info, graph.initializer):
        for value in collection:
            value.name = renamed(value.name)


def _columns_into_matrix(graph: Any, inputs: Sequence[_Column], core: int) -> None:
    """Replace the matrix input by one [N, 1] input per column, cast and concatenated."""
    from onnx import helper

    matrix = INNER + FEATURES
    del graph.input[:]
    nodes, parts = [], []
    for column in inputs:
        kind = TENSOR_TYPE[base_type(column.type)]
        graph.input.append(helper.make_tensor_value_info(column.name, kind, [None, 1]))
        if kind == core:
            parts.append(column.name)
        else:
            cast = f"{INNER}cast_{column.name}"
            nodes.append(helper.make_node("Cast", [column.name], [cast], to=core))
            parts.append(cast)
    nodes.append(helper.make_node("Concat", parts, [matrix], axis=1, name=f"{INNER}concat"))
    for node in reversed(nodes):
        graph.node.insert(0, node)


def _one_output_per_column(model: Any, outputs: Sequence[_Column]) -> None:
    """Name the converted outputs' columns after ``outputs``, in order, one [N] tensor each."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    columns: list[tuple[str, int | None]] = []  # (tensor, column index or None for a [N] tensor)
    for value in graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if len(dims) == 1:
            columns.append((value.name, None))
        elif len(dims) == 2 and dims[1]:
            columns += [(value.name, i) for i in range(dims[1])]
        else:
            raise ValueError(
                f"output {value.name.removeprefix(INNER)} has shape {dims}; cannot split it into columns"
            )
    if len(outputs) > len(columns):
        raise ConversionFailed(
            f"the model gives {len(columns)} output column(s) "
            f"({', '.join(_describe(c) for c in columns)}); target.outputs lists {len(outputs)}",
            hint="list at most that many outputs: a classifier's label, then one probability per class",
        )
    del graph.output[:]
    for column, (tensor, index) in zip(outputs, columns, strict=False):
        kind = TENSOR_TYPE[base_type(column.type)]
        source = tensor
        if index is not None:
            position = f"{INNER}index_{index}"
            if not any(i.name == position for i in graph.initializer):
                graph.initializer.append(numpy_helper.from_array(np.array(index, dtype=np.int64), position))
            source = f"{INNER}{column.name}_picked"
            graph.node.append(helper.make_node("Gather", [tensor, position], [source], axis=1))
        graph.node.append(helper.make_node("Cast", [source], [column.name], to=kind))
        graph.output.append(helper.make_tensor_value_info(column.name, kind, [None]))


def _describe(column: tuple[str, int | None]) -> str:
    tensor, index = column
    name = tensor.removeprefix(INNER)
    return name if index is None else f"{name}[{index}]"


def _dedupe_opsets(model: Any) -> None:
    # skl2onnx lists a domain twice when given a target_opset dict; keep the highest of each.
    from onnx import helper

    versions: dict[str, int] = {}
    for opset in model.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    del model.opset_import[:]
    model.opset_import.extend(
        helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]
