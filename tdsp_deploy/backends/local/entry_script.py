"""What the router needs to know about a slot's entry script, read from its source at push.

Azure ML's inference server hands run() the raw HTTP request when the script applies the
``@rawhttp`` decorator (``azureml.contrib.services.aml_request.rawhttp``, or the same function
from ``azureml_inference_server_http.api.aml_request``). Such a script takes any body and any
content type, so the router must not refuse a request to it for not being JSON.

The server switches to raw requests as soon as the decorator is applied to any function of the
script (it sets a module-wide flag), so any use of it counts, as a decorator or as a call.
"""

from __future__ import annotations

import ast
from pathlib import Path

RAW_HTTP = "rawhttp"


def takes_raw_requests(script: Path) -> bool:
    """True when the entry script applies Azure ML's ``@rawhttp``: its run() gets every request
    as it arrived. A script that cannot be read or parsed is not (its init() fails anyway)."""
    try:
        tree = ast.parse(script.read_bytes(), filename=str(script))
    except (OSError, SyntaxError, ValueError):
        return False
    names = {RAW_HTTP}  # and whatever it is imported as
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(a.asname for a in node.names if a.name == RAW_HTTP and a.asname)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(_names_rawhttp(d, names) for d in node.decorator_list):
                return True
        elif isinstance(node, ast.Call) and _names_rawhttp(node.func, names):
            return True
    return False


def _names_rawhttp(node: ast.expr, names: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in names
    return isinstance(node, ast.Attribute) and node.attr == RAW_HTTP
