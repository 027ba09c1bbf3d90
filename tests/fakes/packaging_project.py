"""A small project to package: a model (folder or one file), a scoring folder, requirements."""

from __future__ import annotations

import os
from pathlib import Path

SCORE = "import os\n\ndef init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n"


def make_project(root: Path, *, single_file: bool = False) -> Path:
    """A small project: a model (folder or one file), a scoring folder, requirements."""
    root.mkdir(parents=True, exist_ok=True)
    if single_file:
        (root / "iris.onnx").write_bytes(b"\x08\x07onnx-bytes" * 100)
    else:
        (root / "model" / "sub").mkdir(parents=True)
        (root / "model" / "weights.bin").write_bytes(os.urandom(5000))
        (root / "model" / "sub" / "vocab.txt").write_text("a\nb\n")
    (root / "src" / "lib").mkdir(parents=True)
    (root / "src" / "score.py").write_text(SCORE)
    (root / "src" / "lib" / "helpers.py").write_text("X = 1\n")
    (root / "requirements.txt").write_text("pytest>=8\n")
    return root
