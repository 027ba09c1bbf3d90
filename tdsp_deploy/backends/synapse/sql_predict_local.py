"""PREDICT's column mapping, run here with onnxruntime.

What a dedicated SQL pool does with ``PREDICT(MODEL = ..., DATA = t AS d, RUNTIME = ONNX) WITH
(...)``: each model input is fed from the column of the same name, as the tensor type of the
column's SQL type ([N] or [N, 1], as the input declares); each ``WITH`` column is read from the
model output of the same name and converted to its SQL type. The parity check and local runs
use this, so what is checked here is what the pool will compute.

Under a traffic split the procedure routes each row by its key's bucket (predict_tsql.
bucket_expression); ``split_rows`` routes rows the same way here, so that a split can be
checked row by row against the pool.
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


# -- the split between slots, as the procedure routes rows (predict_tsql.bucket_expression) ----------
BUCKETS = 100


def key_text(value: Any, sql_type: str) -> str:
    """``value`` as the procedure's key hash reads it (predict_tsql.key_text): whole numbers in
    digits, float and real as CONVERT(..., 2) writes a float (16 significant digits, scientific,
    'e', a sign and 3 exponent digits), text as it is, NULL as ''."""
    if value is None:
        return ""
    kind = base_type(sql_type)
    if kind in ("int", "bigint"):
        return str(int(value))
    if kind in ("real", "float"):
        import numpy as np

        number = float(np.float32(value)) if kind == "real" else float(value)
        mantissa, exponent = f"{number:.15e}".split("e")
        return f"{mantissa}e{exponent[0]}{int(exponent[1:]):03d}"
    return value.decode() if isinstance(value, bytes) else str(value)


def row_key(row: Sequence[Any], inputs: Sequence[_Column], ab_key: str | None) -> str:
    """The key of a row (its values in ``inputs`` order): the ``ab_key`` column, else every input
    joined by '|'."""
    if ab_key:
        index = next(i for i, c in enumerate(inputs) if c.name.lower() == ab_key.lower())
        return key_text(row[index], inputs[index].type)
    return "|".join(key_text(value, column.type) for value, column in zip(row, inputs, strict=True))


def key_bucket(salt: str, key: str) -> int:
    """0 to BUCKETS - 1: the first 4 bytes of SHA-256 over salt|key in UTF-16LE (what HASHBYTES
    hashes for nvarchar), as a fraction of 2^32, times BUCKETS."""
    import hashlib

    digest = hashlib.sha256(f"{salt}|{key}".encode("utf-16-le")).digest()
    return int.from_bytes(digest[:4], "big") * BUCKETS // 2**32


def split_rows(
    rows: Sequence[Sequence[Any]],
    inputs: Sequence[_Column],
    weights: dict[str, int],
    *,
    salt: str | None = None,
    ab_key: str | None = None,
) -> list[str]:
    """The slot that answers each row under ``weights`` (percent per slot, adding up to 100): the
    slots with a weight in name order, each taking the buckets of its share, as the procedure's
    routes do."""
    shares = [(slot, weight) for slot, weight in sorted(weights.items()) if weight > 0]
    if not shares:
        raise ValueError("no slot takes traffic")
    chosen = []
    for row in rows:
        bucket = key_bucket(salt or "", row_key(row, inputs, ab_key))
        upto = 0
        for slot, weight in shares:
            upto += weight
            if bucket < upto:
                chosen.append(slot)
                break
        else:
            raise ValueError(f"the weights add up to {upto}, not {BUCKETS}")
    return chosen
