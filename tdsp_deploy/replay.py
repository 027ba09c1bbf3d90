"""Replay labelled rows through two deployments and compare them on the label.

Both variants see exactly the same rows (each request pinned to one of them), so the
comparison is paired: McNemar's test on which rows each got right (classes), or a paired
t-test and Wilcoxon's signed-rank test on each row's absolute error (numbers). Rows travel
in batches as ``{"data": [[...], ...]}``, the request format of Azure ML's examples, and the
answer's ``predictions`` (or the answer itself, when it is a list) must hold one value per row.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tdsp_deploy.backends.base import Caller, Progress, ProgressEvent, no_progress
from tdsp_deploy.errors import BackendError, UsageError

MAX_CLASSES = 20


@dataclasses.dataclass
class LabelledRows:
    features: list[list[Any]]
    labels: list[Any]
    columns: list[str]


def read_rows(path: Path, label: str, *, id_column: str | None = None) -> LabelledRows:
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if label not in header:
            raise UsageError(f"{path} has no column '{label}'", hint=f"columns: {', '.join(header)}")
        columns = [c for c in header if c not in (label, id_column)]
        features, labels = [], []
        for line, row in enumerate(reader, start=2):
            try:
                features.append([_value(row[c]) for c in columns])
            except (TypeError, ValueError):
                raise UsageError(
                    f"{path}:{line}: a feature is not a number", hint="replay sends numeric features"
                ) from None
            labels.append(_label(row[label]))
    if not labels:
        raise UsageError(f"{path} holds no rows")
    return LabelledRows(features, labels, columns)


def _value(text: str | None) -> float:
    if text is None or text.strip() == "":
        raise ValueError("missing")
    return float(text)


def _label(text: str | None) -> Any:
    text = (text or "").strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def predictions_of(answer: Any, rows: int) -> list[Any]:
    values = answer.get("predictions") if isinstance(answer, dict) else answer
    if not isinstance(values, list) or len(values) != rows:
        raise UsageError(
            f"the answer does not hold one prediction per row ({rows} rows sent)",
            hint='replay expects {"predictions": [...]} or a list, one value per row',
        )
    return values


def collect_predictions(
    callers: Callable[[str | None], AbstractContextManager[Iterator[Caller]]],
    slot: str,
    rows: LabelledRows,
    *,
    batch: int,
    progress: Progress = no_progress,
) -> list[Any]:
    predictions: list[Any] = []
    with callers(slot) as new_callers:
        caller = next(new_callers)
        for start in range(0, len(rows.features), batch):
            chunk = rows.features[start : start + batch]
            answer = caller(json.dumps({"data": chunk}).encode())
            if answer.status != 200:
                rows_sent = f"rows {start + 1}-{start + len(chunk)}"
                raise BackendError(
                    f"deployment '{slot}' answered HTTP {answer.status} to {rows_sent}",
                    hint=f"see `tdsp-deploy logs --deployment {slot}`",
                )
            predictions += predictions_of(answer.json(), len(chunk))
            progress(
                ProgressEvent(step="replay", message=f"{slot}", done=len(predictions), total=len(rows.labels))
            )
    return predictions


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _whole(value: Any) -> bool:
    number = _number(value)
    return number is not None and number.is_integer()


def is_classification(labels: list[Any], predictions: list[Any]) -> bool:
    """Classes when any value is text, or when labels and predictions are all whole numbers
    (1.0 counts: a model may answer classes as floats) with few distinct labels. A model that
    answers 2.7 for a label of 3 is a regression, however whole its labels are."""
    values = [*labels, *predictions]
    if any(isinstance(v, str) for v in values):
        return True
    return all(_whole(v) for v in values) and len(set(labels)) <= MAX_CLASSES


def same_class(prediction: Any, label: Any) -> bool:
    """Equal as numbers when both are numbers (1.0 is the class 1), else as text."""
    a, b = _number(prediction), _number(label)
    if a is not None and b is not None:
        return a == b
    return str(prediction).strip() == str(label).strip()


def compare(labels: list[Any], control: list[Any], treatment: list[Any], alpha: float) -> dict[str, Any]:
    """The paired comparison on the label, with a verdict."""
    import numpy as np

    from tdsp_deploy.ab import stats

    if is_classification(labels, control + treatment):
        right_a = np.array([same_class(p, y) for p, y in zip(control, labels, strict=True)])
        right_b = np.array([same_class(p, y) for p, y in zip(treatment, labels, strict=True)])
        results = [stats.mcnemar(right_a, right_b, alpha)]
        task, better_when = "classification", "higher"
        summary = {
            "control": {"accuracy": float(right_a.mean())},
            "treatment": {"accuracy": float(right_b.mean())},
        }
    else:
        y = np.array(labels, dtype=float)
        try:
            error_a = np.abs(np.array(control, dtype=float) - y)
            error_b = np.abs(np.array(treatment, dtype=float) - y)
        except (TypeError, ValueError):
            raise UsageError(
                "the predictions are not numbers, and the labels are not classes",
                hint="a classifier's answers should be its classes; a regression's, numbers",
            ) from None
        results = [stats.paired_ttest(error_a, error_b, alpha), stats.wilcoxon(error_a, error_b, alpha)]
        task, better_when = "regression", "lower"
        summary = {"control": {"mae": float(error_a.mean())}, "treatment": {"mae": float(error_b.mean())}}
    primary = results[0]
    if primary.p_value >= alpha:
        verdict = "no difference"
    elif (primary.effect > 0) == (better_when == "higher"):
        verdict = "treatment better"
    else:
        verdict = "control better"
    return {
        "task": task,
        "rows": len(labels),
        **summary,
        "tests": [dataclasses.asdict(r) for r in results],
        "alpha": alpha,
        "verdict": verdict,
    }
