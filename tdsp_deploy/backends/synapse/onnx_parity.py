"""Does the ONNX graph answer like the scikit-learn model it was converted from?

Checked on the smoke test's sample rows before anything is deployed: the original model's
columns (``predict``, then ``predict_proba`` for a classifier: the order sql_onnx_convert maps
onto ``target.outputs``) against the ONNX graph run with PREDICT's column mapping
(sql_predict_local). Labels and integers must be equal; probabilities and regression values may
differ by the smoke test's tolerance (absolute or relative, the looser), as float32 arithmetic
in a converted graph does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from tdsp_deploy.backends.synapse.sql_predict_local import LocalPredict, sql_value
from tdsp_deploy.backends.synapse.sql_predict_rules import TEXT_TYPES, _Column, base_type
from tdsp_deploy.errors import SmokeFailed

MAX_SHOWN = 10


@dataclasses.dataclass(frozen=True)
class Difference:
    row: int
    column: str
    model: Any
    onnx: Any
    inputs: tuple[Any, ...]

    def render(self) -> str:
        return f"row {self.row} {list(self.inputs)}: {self.column}: model {self.model!r}, onnx {self.onnx!r}"

    def to_json(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)} | {
            "inputs": list(self.inputs)
        }


@dataclasses.dataclass(frozen=True)
class ParityReport:
    rows: int
    columns: tuple[str, ...]
    tolerance: float
    largest_difference: float  # over the compared numbers (0.0 when all are exact)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class OnnxParityMismatch(SmokeFailed):
    """The converted graph answers the sample differently from the original model."""

    kind = "onnx_parity"


def original_columns(
    estimator: Any, rows: Sequence[Sequence[Any]], inputs: Sequence[_Column]
) -> list[list[Any]]:
    """The model's own answer, column by column: ``predict``'s columns, then, for a classifier,
    ``predict_proba``'s."""
    import numpy as np
    import pandas as pd
    from sklearn.base import is_classifier

    names = [c.name for c in inputs]
    frame = pd.DataFrame([list(r) for r in rows], columns=names)
    # A model fitted on a plain array warns when given names; give it what it was fitted on.
    features = frame if hasattr(estimator, "feature_names_in_") else frame.to_numpy()
    predicted = np.asarray(estimator.predict(features))
    blocks = [predicted.reshape(len(rows), -1)]
    if is_classifier(estimator) and hasattr(estimator, "predict_proba"):
        blocks.append(np.asarray(estimator.predict_proba(features)).reshape(len(rows), -1))
    return [list(block[:, i]) for block in blocks for i in range(block.shape[1])]


def check_parity(
    estimator: Any,
    payload: bytes,
    inputs: Sequence[_Column],
    outputs: Sequence[_Column],
    rows: Sequence[Sequence[Any]],
    *,
    tolerance: float,
) -> ParityReport:
    """Compare on ``rows``; OnnxParityMismatch lists the rows that differ."""
    from sklearn.base import is_classifier

    if not rows:
        raise SmokeFailed(
            "the ONNX parity check has no rows: the smoke test's request holds none",
            hint="put sample rows in smoke_test.request",
        )
    expected = original_columns(estimator, rows, inputs)[: len(outputs)]
    actual = LocalPredict(payload, inputs, outputs).score(rows)
    exact = {0} if is_classifier(estimator) else set()  # a classifier's first column is its label
    differences: list[Difference] = []
    largest = 0.0
    for index, column in enumerate(outputs):
        for row, value in enumerate(expected[index]):
            want = sql_value(value, column.type)
            got = actual[row][index]
            same, gap = _same(want, got, column.type, tolerance, exact=index in exact)
            largest = max(largest, gap)
            if not same:
                differences.append(Difference(row, column.name, want, got, tuple(rows[row])))
    if differences:
        shown = "\n  ".join(d.render() for d in differences[:MAX_SHOWN])
        more = f"\n  ... and {len(differences) - MAX_SHOWN} more" if len(differences) > MAX_SHOWN else ""
        raise OnnxParityMismatch(
            f"the ONNX conversion answers {len({d.row for d in differences})} of {len(rows)} sample row(s) "
            f"differently from the scikit-learn model (tolerance {tolerance:g}):\n  {shown}{more}",
            hint="if these are float32 rounding differences, raise smoke_test.tolerance; otherwise the model "
            "uses something skl2onnx converts differently: export it to ONNX yourself (model.flavor: onnx)",
            details={"differences": [d.to_json() for d in differences[:MAX_SHOWN]]},
        )
    return ParityReport(len(rows), tuple(c.name for c in outputs), tolerance, largest)


def _same(want: Any, got: Any, sql_type: str, tolerance: float, *, exact: bool) -> tuple[bool, float]:
    kind = base_type(sql_type)
    if kind in TEXT_TYPES or kind in ("int", "bigint"):
        return want == got, 0.0
    if exact:
        return want == got, abs(want - got)
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got), 0.0
    gap = abs(want - got)
    return math.isclose(want, got, rel_tol=tolerance, abs_tol=tolerance), gap
