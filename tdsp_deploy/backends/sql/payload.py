"""The bytes a SQL target stores in its model table for a model file or folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

FLAVORS: tuple[str, ...] = ("sklearn", "onnx", "mlflow")

_MODEL_SUFFIXES = {"sklearn": (".pkl", ".pickle", ".joblib"), "onnx": (".onnx",)}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def model_payload(model_path: Path, flavor: str) -> tuple[bytes, str]:
    """(the bytes stored in the model table, the model file's name).

    sklearn and onnx: one file, or a folder that holds exactly one file of the flavor's
    suffix. mlflow: the folder, zipped deterministically (sorted names, fixed times and modes)."""
    path = Path(model_path)
    if flavor == "mlflow":
        if not path.is_dir():
            raise ValueError(f"an mlflow model is a folder (with an MLmodel file); {path} is not one")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(file.relative_to(path).as_posix(), date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, file.read_bytes())
        return buffer.getvalue(), path.name
    if flavor not in _MODEL_SUFFIXES:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _MODEL_SUFFIXES[flavor]
        )
        if len(found) != 1:
            raise ValueError(
                f"the model folder {path} must hold exactly one {'/'.join(_MODEL_SUFFIXES[flavor])} "
                f"file for flavor {flavor}, found {len(found)}; point model.path at the file"
            )
        path = found[0]
    return path.read_bytes(), path.name
