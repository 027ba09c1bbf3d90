"""PREDICT's column mapping, run here with onnxruntime.

What a dedicated SQL pool does with ``PREDICT(MODEL = ..., DATA = t AS d, RUNTIME = ONNX) WITH
(...)``: each model input is fed from the column of the same name, as the tensor type of the
column's SQL type ([N] or [N, 1], as the input declares); each ``WITH`` column is read from the
model output of the same name and converted to its SQL type. The parity check and local runs
use this, so what is checked here is what the pool will compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdsp_deploy.backends.synapse.sql_predict_rules import TEXT_TYPES, _Column, base_type

#: numpy dtype of each SQL type PREDICT takes, as the model receives it
NUMPY_DTYPE = {"int": "int32", "bigint": "int64", "real": "float32", "float": "float64"}


class LocalPredict:
    """One ONNX model, loaded once, scoring rows as PREDICT would."""

    def __init__(self, payload: bytes, inputs: Sequence[_Column], outputs: Sequence[_Column]):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            payload, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def score(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """The output columns (in ``outputs`` order) of each row; ``rows`` hold the input
        columns in ``inputs`` order."""
        import numpy as np

        position = {c.name: i for i, c in enumerate(self.inputs)}
        feeds = {}
        for declared in self.session.get_inputs():
            column = self.inputs[position[declared.name]]
            values = [row[position[declared.name]] for row in rows]
            array = _column_array(values, column.type)
            feeds[declared.name] = array.reshape(-1, 1) if len(declared.shape) == 2 else array
        results = self.session.run([c.name for c in self.outputs], feeds)
        columns = []
        for column, result in zip(self.outputs, results, strict=True):
            flat = np.asarray(result).reshape(-1)
            if flat.shape[0] != len(rows):
                raise ValueError(f"output {column.name} gave {flat.shape[0]} values for {len(rows)} rows")
            columns.append([sql_value(v, column.type) for v in flat])
        return [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in rows]


def _column_array(values: list[Any], sql_type: str) -> Any:
    import numpy as np

    kind = base_type(sql_type)
    if kind in TEXT_TYPES:
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    return np.asarray([np.nan if v is None else v for v in values], dtype=NUMPY_DTYPE[kind])


def sql_value(value: Any, sql_type: str) -> Any:
    """A model output converted to the ``WITH`` column's type, as a plain Python value."""
    import numpy as np

    kind = base_type(sql_type)
    if kind in TEXT_TYPES:
        return value.decode() if isinstance(value, bytes) else str(value)
    if kind in ("int", "bigint"):
        return int(value)
    if kind == "real":
        return float(np.float32(value))
    return float(value)
