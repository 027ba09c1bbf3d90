"""Checks of the files a manifest names, done without importing or running any user code.

A scoring script that does not parse, or lacks ``init``/``run``, would otherwise be found only
after a slow deployment; a sample request that is not JSON, only at the smoke test. Each problem
points at the manifest field that names the file and says where in that file it fails:
``deploy.yaml:7: scoring.script: src/score.py:12: syntax error: invalid syntax (column 5)``.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

from tdsp_deploy.errors import ManifestError, ManifestProblem
from tdsp_deploy.manifest.loaded import LoadedManifest
from tdsp_deploy.manifest.yaml_lines import FieldPath

_CONTRACT = "the scoring contract needs def init() and def run(raw_data)"

# A function definition, or a lambda assigned to a name: both have a checkable signature.
_Callable = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def check_manifest(loaded: LoadedManifest) -> list[str]:
    """Check the scoring script and smoke-test files; raise ``ManifestError`` listing every problem.

    Returns warnings (rendered like problems) for things that work but are probably mistakes.
    """
    problems = [*_script_problems(loaded), *_smoke_test_problems(loaded)]
    if not problems and loaded.manifest.model.flavor == "mlflow":
        problems += _mlflow_problems(loaded)
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.field or ""))
        raise ManifestError(problems)
    return [warning.render() for warning in _warnings(loaded)]


def _shown(loaded: LoadedManifest, path: Path) -> str:
    """A file as the user knows it: relative to the manifest's folder when it is inside."""
    try:
        return path.relative_to(loaded.base_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


# --- the scoring script --------------------------------------------------------------------


def _script_problems(loaded: LoadedManifest) -> list[ManifestProblem]:
    field: FieldPath = ("scoring", "script")
    if loaded.manifest.scoring is None:
        return []  # an MLflow model: its entry script is generated
    script = loaded.manifest.scoring.script
    shown = _shown(loaded, script)
    try:
        source = script.read_bytes()
    except OSError as exc:
        return [loaded.problem(field, f"{shown}: cannot be read: {exc.strerror or exc}")]
    try:
        # Bytes, so that Python itself applies the coding cookie or byte-order mark.
        tree = ast.parse(source, filename=str(script))
    except SyntaxError as exc:
        where = f"{shown}:{exc.lineno}" if exc.lineno else shown
        column = f" (column {exc.offset})" if exc.offset else ""
        return [loaded.problem(field, f"{where}: syntax error: {exc.msg}{column}")]
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes; absurd nesting
        return [loaded.problem(field, f"{shown}: cannot be parsed: {exc}")]
    return [loaded.problem(field, f"{shown}{message}") for message in _contract_problems(tree)]


def _contract_problems(tree: ast.Module) -> Iterator[str]:
    """Messages (each starting with ':LINE: ' or ': ') for breaches of the init/run contract."""
    bindings, star_import = _top_level_bindings(tree.body)
    missing = [name for name in ("init", "run") if name not in bindings]
    if missing and not star_import:  # `from x import *` may bring them; we cannot tell
        names = " and ".join(f"'{name}'" for name in missing)
        yield f": no top-level function {names}; {_CONTRACT}"
    runs = [node for node in bindings.get("run", []) if isinstance(node, _Callable)]
    # Only when every definition we can read refuses an argument: a conditional or assigned
    # `run` elsewhere may be the one that counts.
    if runs and len(runs) == len(bindings["run"]) and not any(_takes_positional(run) for run in runs):
        yield f":{runs[-1].lineno}: run() takes no positional parameter; the server calls run(raw_data)"
    inits = [
        node for node in bindings.get("init", []) if isinstance(node, _Callable) and not _decorated(node)
    ]
    for init in inits:
        if _required_parameters(init):
            yield f":{init.lineno}: init() is called with no arguments; give its parameters defaults"


def _top_level_bindings(body: list[ast.stmt]) -> tuple[dict[str, list[ast.AST]], bool]:
    """Names the module binds at import time -> what they are bound to (a def, a lambda, or
    the statement when the value is unknown); and whether a star import was seen."""
    bindings: dict[str, list[ast.AST]] = {}
    star_import = False
    for statement in body:
        for name, node in _bound_by(statement):
            if name == "*":
                star_import = True
            else:
                bindings.setdefault(name, []).append(node)
        # Definitions under `if`/`try`/`with` at top level still run at import.
        for nested in _nested_bodies(statement):
            inner, star = _top_level_bindings(nested)
            star_import |= star
            for name, nodes in inner.items():
                bindings.setdefault(name, []).extend(nodes)
    return bindings, star_import


def _bound_by(statement: ast.stmt) -> Iterator[tuple[str, ast.AST]]:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield statement.name, statement
    elif isinstance(statement, ast.Assign):
        for target in statement.targets:
            single = isinstance(target, ast.Name) and isinstance(statement.value, ast.Lambda)
            for name in _names(target):
                yield name, statement.value if single else statement
    elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
        for name in _names(statement.target):
            yield name, statement.value if isinstance(statement.value, ast.Lambda) else statement
    elif isinstance(statement, (ast.Import, ast.ImportFrom)):
        for alias in statement.names:
            yield (alias.asname or alias.name.split(".")[0]), statement


def _names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _names(element)
    elif isinstance(target, ast.Starred):
        yield from _names(target.value)


def _nested_bodies(statement: ast.stmt) -> Iterator[list[ast.stmt]]:
    if isinstance(statement, (ast.If, ast.For, ast.AsyncFor, ast.While)):
        yield statement.body
        yield statement.orelse
    elif isinstance(statement, (ast.With, ast.AsyncWith)):
        yield statement.body
    elif isinstance(statement, (ast.Try, ast.TryStar)):
        yield statement.body
        for handler in statement.handlers:
            yield handler.body
        yield statement.orelse
        yield statement.finalbody


def _takes_positional(function: _Callable) -> bool:
    args = function.args
    return bool(args.posonlyargs or args.args or args.vararg)


def _required_parameters(function: _Callable) -> list[str]:
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    required = positional[: len(positional) - len(args.defaults)]
    required += [
        arg for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is None
    ]
    return [arg.arg for arg in required]


def _decorated(function: _Callable) -> bool:
    # A decorator (inference_schema's @input_schema, for one) may change how it is called.
    return not isinstance(function, ast.Lambda) and bool(function.decorator_list)


# --- MLflow models ---------------------------------------------------------------------------


def _mlflow_problems(loaded: LoadedManifest) -> list[ManifestProblem]:
    """The model folder holds a pyfunc MLmodel; an HTTP sample request fits its signature."""
    from tdsp_deploy.mlflow_model import MLmodelError, read_mlmodel, request_problems

    try:
        model = read_mlmodel(loaded.manifest.model.path)
    except MLmodelError as exc:
        return [loaded.problem(("model", "path"), str(exc))]
    smoke = loaded.manifest.smoke_test
    kind = getattr(getattr(loaded.manifest, "target", None), "kind", "local")
    if smoke is None or kind not in ("local", "azureml"):  # tabular targets take rows, not input_data
        return []
    request = json.loads(smoke.request.read_text(encoding="utf-8-sig"))
    shown = _shown(loaded, smoke.request)
    field: FieldPath = ("smoke_test", "request")
    return [loaded.problem(field, f"{shown}: {p}") for p in request_problems(model, request)]


# --- smoke-test files ----------------------------------------------------------------------


def _smoke_test_problems(loaded: LoadedManifest) -> list[ManifestProblem]:
    smoke = loaded.manifest.smoke_test
    if smoke is None:
        return []
    files: list[tuple[FieldPath, Path | None]] = [
        (("smoke_test", "request"), smoke.request),
        (("smoke_test", "expect"), smoke.expect),
    ]
    problems = []
    for field, path in files:
        if path is not None:
            if field[1] == "request" and path.suffix.lower() == ".csv" and _takes_csv(loaded):
                continue  # rows as CSV: the target reads them (and says what is wrong)
            message = _json_problem(path, _shown(loaded, path))
            if message:
                problems.append(loaded.problem(field, message))
    return problems


def _takes_csv(loaded: LoadedManifest) -> bool:
    """Tabular targets (SQL Server) take a CSV sample request as well as a JSON table."""
    return getattr(getattr(loaded.manifest, "target", None), "kind", None) == "sqlserver"


def _json_problem(path: Path, shown: str) -> str | None:
    if path.is_dir():
        return f"{shown} is a folder; give a JSON file"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"{shown}: cannot be read: {exc.strerror or exc}"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return f"{shown}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save it as UTF-8"
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{shown}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return f"{shown}: invalid JSON: nested too deeply"
    return None


# --- warnings ------------------------------------------------------------------------------


def _warnings(loaded: LoadedManifest) -> Iterator[ManifestProblem]:
    model_path = loaded.manifest.model.path
    if _is_empty(model_path):
        what = "folder" if model_path.is_dir() else "file"
        yield loaded.problem(("model", "path"), f"the model {what} {_shown(loaded, model_path)} is empty")
    target = getattr(loaded.manifest, "target", None)
    if loaded.manifest.environment.image and getattr(target, "kind", None) == "local":
        yield loaded.problem(("environment", "image"), "ignored by the local target")
    flavor = loaded.manifest.model.flavor
    pickled = _pickled_files(model_path) if flavor in ("sklearn", "mlflow") else []
    if pickled:
        names = ", ".join(_shown(loaded, path) for path in pickled[:3])
        names += ", ..." if len(pickled) > 3 else ""
        yield loaded.problem(
            ("model", "flavor"),
            f"model.flavor {flavor} loads {names} by unpickling, which runs whatever code the file "
            "holds: deploy only a model you trust, or export it to ONNX (model.flavor: onnx), "
            "which loads without running code",
        )


PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib"})
_MAX_LOOKED_AT = 10_000  # files of a model folder looked at for pickles; validate stays fast


def _pickled_files(path: Path) -> list[Path]:
    """The model's files that are loaded by unpickling (by their suffix: pickle, joblib)."""
    try:
        if path.is_file():
            return [path] if path.suffix.lower() in PICKLE_SUFFIXES else []
        found = []
        for count, entry in enumerate(path.rglob("*")):
            if count >= _MAX_LOOKED_AT:
                break
            if entry.suffix.lower() in PICKLE_SUFFIXES and entry.is_file():
                found.append(entry)
        return sorted(found)
    except OSError:
        return []


def _is_empty(path: Path) -> bool:
    try:
        if path.is_dir():
            return not any(entry.is_file() for entry in path.rglob("*"))
        return path.stat().st_size == 0
    except OSError:
        return False  # what cannot be read is reported by packaging, with its own context
