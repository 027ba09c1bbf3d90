"""Start one slot: Azure ML's inference server (azmlinfsrv), bound to loopback only.

The server's own launcher binds 0.0.0.0, which would put the model on the user's network
with no key; the router must be the only door. So this runs the launcher's own steps
(argument parsing, environment set-up) and serves the same application
(``azureml_inference_server_http.server.entry:app``, with the user's init() and run()) with
the same worker count, under one of two HTTP servers (``target.http_server``):

- granian (the default): a Rust HTTP server whose worker processes call the app one request
  at a time each (``blocking_threads=1``), as gunicorn's sync worker does; it keeps
  connections open for the router and costs a worker about half of gunicorn's CPU per request
  (see BENCHMARKS.md, "Serving"). slot_app.py keeps the scoring time limit and stops the slot
  when init() fails, as gunicorn does.
- gunicorn: the server Azure ML's containers run, for byte-for-byte parity; its threaded
  worker with ONE thread per worker, so the router still reuses its connections (the sync
  worker closes every connection), with no access log (the server logs every scoring
  request itself) and slot_hooks.py keeping the scoring time limit on the worker thread.

Either way the slot binds 127.0.0.1 only.

Run as: ``python -m tdsp_deploy.backends.local.slot_server --entry_script S --model_dir M --port P
[--worker_count N] [--http_server granian|gunicorn]`` with the working directory at the
scoring code (AML_APP_ROOT).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys

LOOPBACK = "127.0.0.1"
APP = "azureml_inference_server_http.server.entry:app"
HOOKS = "python:tdsp_deploy.backends.local.slot_hooks"
# gunicorn closes a keep-alive connection idle this long; the router closes its own idle
# connections sooner (upstream.IDLE_TIMEOUT_S), so it never sends on one being closed.
KEEP_ALIVE_S = 5


def gunicorn_arguments(port: int, workers: int, timeout_s: str, *, preload: bool) -> list[str]:
    """gunicorn's command line for one slot."""
    arguments = [
        "-b",
        f"{LOOPBACK}:{port}",
        "-w",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        "1",
        "--keep-alive",
        str(KEEP_ALIVE_S),
        "--timeout",
        timeout_s,
        "--error-logfile",
        "/dev/null",  # the server's logging config writes gunicorn's errors once already
        "-c",
        HOOKS,  # the scoring time limit, which SIGALRM cannot keep on a worker thread
    ]
    if preload:
        arguments.append("--preload")
    return [*arguments, APP]


class FalseConfigWarning:
    """Drops the server's "Found extra keys in the config file" warning when every key it
    names is one of the server's own documented variables (AZUREML_MODEL_DIR and the like):
    its check compares those variable names with its field names, so any deployment that sets
    them, as Azure ML's container does, gets the warning. A config file with a key the server
    really does not know still warns."""

    PREFIX = "Found extra keys in the config file"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIX):
            return True
        try:
            from azureml_inference_server_http.server.config import alias_mapping
        except ImportError:  # the module that warns is being imported: read its names instead
            alias_mapping = _server_variable_names()
        try:
            keys = ast.literal_eval(message.split("Extra keys = ", 1)[1].strip())
        except (IndexError, ValueError, SyntaxError):
            return True
        return not all(key in alias_mapping for key in keys)


def _server_variable_names() -> frozenset[str]:
    import sys as _sys

    module = _sys.modules.get("azureml_inference_server_http.server.config")
    return frozenset(getattr(module, "alias_mapping", {}))


def quiet_false_warnings() -> None:
    """Installed where the server's modules are first imported (here: this module is imported
    by the slot's main process and by every worker), so a healthy log holds no warning."""
    server_log = logging.getLogger("azmlinfsrv")
    if not any(isinstance(f, FalseConfigWarning) for f in server_log.filters):
        server_log.addFilter(FalseConfigWarning())


quiet_false_warnings()

HTTP_SERVERS = ("granian", "gunicorn")
# By file, not by module name: granian prefixes a dotted name with the package the working
# directory is in, and a scoring folder with an __init__.py (a common layout) made it look for
# "code.tdsp_deploy.backends.local.slot_app"; a file's module name it derives from the file's
# own package folders.
GRANIAN_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slot_app.py") + ":app"
# Where a granian worker whose init() failed leaves the exit code (see slot_app.py).
BOOT_EXIT_FILE = "TDSP_SLOT_BOOT_EXIT_FILE"


def main() -> None:
    from azureml_inference_server_http import amlserver
    from azureml_inference_server_http.constants import ENV_PORT, ENV_WORKER_COUNT, PACKAGE_ROOT
    from azureml_inference_server_http.log_config import load_logging_config

    http_server = _take_option("--http_server", default="granian")
    if http_server not in HTTP_SERVERS:
        sys.exit(f"--http_server must be one of {', '.join(HTTP_SERVERS)}, not {http_server!r}")
    args = amlserver.parse_arguments()
    load_logging_config(PACKAGE_ROOT)
    amlserver.merge_configuration(args)
    amlserver.validate_environment_variables()
    amlserver.set_path_variable()
    # what azmlinfsrv prints before it starts serving, so the log begins as on Azure ML
    amlserver.print_server_info()
    amlserver.print_server_settings()
    amlserver.print_routes()
    amlserver.print_python_path()
    port, workers = int(os.environ[ENV_PORT]), int(os.environ[ENV_WORKER_COUNT])
    if http_server == "granian":
        serve_with_granian(port, workers)
    else:
        serve_with_gunicorn(port, workers)


def _take_option(name: str, *, default: str) -> str:
    """Remove ``name VALUE`` from sys.argv (the server's own parser knows no such option)."""
    if name not in sys.argv:
        return default
    at = sys.argv.index(name)
    if at + 1 >= len(sys.argv):
        sys.exit(f"{name} needs a value")
    value = sys.argv[at + 1]
    del sys.argv[at : at + 2]
    return value


def serve_with_granian(port: int, workers: int) -> None:
    import tempfile

    given = os.environ.get(BOOT_EXIT_FILE)
    if given:  # in the revision's folder (slots.py): it goes with the revision, however the slot ends
        with contextlib.suppress(FileNotFoundError):
            os.remove(given)  # left by an earlier start of this revision
        sys.exit(_serve_granian(port, workers, given))
    # Started by hand: a folder of its own, which a SIGKILL leaves behind.
    with tempfile.TemporaryDirectory(prefix="tdsp-slot-") as scratch:
        code = _serve_granian(port, workers, os.path.join(scratch, "boot-exit"))
    sys.exit(code)


def _serve_granian(port: int, workers: int, boot_exit: str) -> int:
    """Serve until granian stops; the exit code (a worker's whose init() failed, if one did)."""
    from granian.constants import Interfaces
    from granian.server import Server

    os.environ[BOOT_EXIT_FILE] = boot_exit
    server = Server(
        GRANIAN_APP,
        address=LOOPBACK,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=1,  # run() one call at a time per worker, as under gunicorn
        runtime_threads=1,
        # a worker that dies (a crashed model, the watchdog's exit) is started again, as
        # gunicorn's arbiter does; a crash loop stops the slot and the supervisor takes over
        respawn_failed_workers=True,
        log_access=False,  # the server logs every scoring request itself
        websockets=False,
    )
    code = 0
    try:
        server.serve()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    if os.path.exists(boot_exit):  # init() failed: exit as gunicorn would, with its code
        with open(boot_exit) as file:
            code = int(file.read() or 1)
    return code


def serve_with_gunicorn(port: int, workers: int) -> None:
    import gunicorn.app.wsgiapp
    from azureml_inference_server_http.constants import (
        DEFAULT_WORKER_PRELOAD,
        DEFAULT_WORKER_TIMEOUT_SECONDS,
        ENV_WORKER_PRELOAD,
        ENV_WORKER_TIMEOUT,
    )

    _no_shared_control_socket()
    sys.argv = [
        sys.argv[0],
        *gunicorn_arguments(
            port,
            workers,
            os.environ.get(ENV_WORKER_TIMEOUT, DEFAULT_WORKER_TIMEOUT_SECONDS),
            preload=os.environ.get(ENV_WORKER_PRELOAD, DEFAULT_WORKER_PRELOAD).lower() == "true",
        ),
    ]
    gunicorn.app.wsgiapp.WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()


def _no_shared_control_socket() -> None:
    # gunicorn >= 25 opens a control socket at one fixed path per user; several slots would
    # fight over it. Slots are managed by signals, so turn it off where the option exists.
    from gunicorn import config

    if any(setting.name == "control_socket_disable" for setting in config.KNOWN_SETTINGS):
        extra = os.environ.get("GUNICORN_CMD_ARGS", "")
        os.environ["GUNICORN_CMD_ARGS"] = f"{extra} --no-control-socket".strip()


if __name__ == "__main__":
    sys.argv[0] = "azmlinfsrv"
    main()
