"""Where the repository and the tests' data are, named once for test modules at any depth of
tests/ (a module moved to another folder keeps its paths)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLES = ROOT / "examples"
DATA = TESTS / "data"
FAKES = TESTS / "fakes"
