"""The tests' own layout holds: every test file and test named in README.md and docs/*.md exists
(the guarantees table cannot point at a moved or renamed test), tests/ mirrors the packages of
tdsp_deploy/, a test file's name is unique across tests/, and no test module imports another
(what two of them share lives in tests/fakes/)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

from tests import paths

ROOT = paths.ROOT
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Folders of tests/ that mirror no package: shared fakes, data, and the tests of the
# repository's own files (documents, CI, import layers, this layout).
NOT_MIRRORS = {"fakes", "data", "repository"}
# `tests/...` as the documents write it; not the tail of someone else's path (".../tests/...").
NAMED = re.compile(r"(?<![\w/.-])tests/[\w./-]*[\w/](?:::[\w*\[\]-]+)?|(?<![\w/.:-])::(test_[\w*]+)")


def named_in(text: str) -> list[tuple[int, str, str | None]]:
    """(line, path, test) for each test path the text names; a bare `::test_x` names a test of
    the file named last before it on the same line."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        last: str | None = None
        for match in NAMED.finditer(line):
            if match.group(1):
                found.append((number, last or "(no file named before it)", match.group(1)))
                continue
            path, _, test = match.group(0).partition("::")
            last = path if path.endswith(".py") else last
            found.append((number, path, test or None))
    return found


def missing(path: str, test: str | None) -> str | None:
    """Why a named path or test does not exist, or None when it does."""
    where = ROOT / path.rstrip("/")
    if not where.exists():
        return "no such file or folder"
    if test is None:
        return None
    tree = ast.parse(where.read_text(encoding="utf-8"))
    functions = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    pattern = test.split("[", 1)[0]
    if not any(fnmatch.fnmatchcase(name, pattern) for name in functions):
        return f"no test {test} in it"
    return None


def test_the_documents_name_tests_to_check():
    named = [item for document in DOCUMENTS for item in named_in(document.read_text(encoding="utf-8"))]
    assert len(named) > 30 and any(test for _, _, test in named)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_test_file_and_test_named_in_the_documents_exists(document):
    problems = [
        f"{document.relative_to(ROOT)}:{number}: {path}{'::' + test if test else ''}: {why}"
        for number, path, test in named_in(document.read_text(encoding="utf-8"))
        if (why := missing(path, test)) is not None
    ]
    assert problems == []


def test_a_moved_file_or_a_renamed_test_is_caught():
    text = (
        "| a | `tests/backends/local/test_router.py::test_no_such_test`,"
        " `::test_refuses_missing_and_wrong_keys_but_takes_the_secondary` |\n"
        "| b | `tests/test_router.py`, `tests/data/corpus/requests/`, `::test_orphan` |\n"
        "upstream: `python/sdk/ml/azure-ai-ml/tests/recordings/` is not ours; `::test_alone`\n"
    )
    named = named_in(text)
    router = "tests/backends/local/test_router.py"
    assert [(path, test, missing(path, test)) for _, path, test in named] == [
        (router, "test_no_such_test", "no test test_no_such_test in it"),
        (router, "test_refuses_missing_and_wrong_keys_but_takes_the_secondary", None),
        ("tests/test_router.py", None, "no such file or folder"),
        ("tests/data/corpus/requests/", None, None),
        ("tests/test_router.py", "test_orphan", "no such file or folder"),
        ("(no file named before it)", "test_alone", "no such file or folder"),
    ]


def test_every_test_folder_mirrors_a_package_of_tdsp_deploy():
    folders = [
        p.relative_to(paths.TESTS)
        for p in paths.TESTS.rglob("*")
        if p.is_dir() and p.name != "__pycache__" and p.relative_to(paths.TESTS).parts[0] not in NOT_MIRRORS
    ]
    assert folders, "tests/ has no folder"
    for folder in folders:
        assert (ROOT / "tdsp_deploy" / folder / "__init__.py").is_file(), f"tests/{folder} mirrors no package"
        assert (paths.TESTS / folder / "__init__.py").is_file(), f"tests/{folder} is not a package"
    for folder in NOT_MIRRORS:
        assert (paths.TESTS / folder).is_dir()


def test_a_test_files_name_is_unique_across_tests():
    """A file moved in from a branch that added it flat in tests/ must not meet its namesake."""
    seen: dict[str, Path] = {}
    for path in sorted(paths.TESTS.rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]}"
        seen[path.name] = path
    assert len(seen) > 50


def test_no_test_module_imports_another():
    imports_a_test = re.compile(r"^\s*(?:from|import)\s+(?:tests\.(?:\w+\.)*)?test_\w+", re.M)
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in sorted(paths.TESTS.rglob("*.py"))
        if imports_a_test.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
