"""Start one slot: Azure ML's inference server (azmlinfsrv), bound to loopback only.

The server's own launcher binds 0.0.0.0, which would put the model on the user's network
with no key; the router must be the only door. So this runs the launcher's own steps
(argument parsing, environment set-up) and starts gunicorn with the same application
(``azureml_inference_server_http.server.entry:app``), worker count and timeout, with three
differences, each for the router in front of it:

- bound to 127.0.0.1;
- keep-alive: gunicorn's threaded worker with ONE thread per worker, so the router reuses
  its connections instead of opening one per request (the sync worker closes every
  connection), while run() is still called by one thread at a time in each worker process,
  as under the sync worker;
- no gunicorn access log: the server logs every scoring request itself (method, path,
  status, time), so the access log only wrote each request a second time.

Run as: ``python -m tdsp_deploy.backends.local.slot_server --entry_script S --model_dir M --port P
[--worker_count N]`` with the working directory at the scoring code (AML_APP_ROOT).
"""

from __future__ import annotations

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


def main() -> None:
    import gunicorn.app.wsgiapp
    from azureml_inference_server_http import amlserver
    from azureml_inference_server_http.constants import (
        DEFAULT_WORKER_PRELOAD,
        DEFAULT_WORKER_TIMEOUT_SECONDS,
        ENV_PORT,
        ENV_WORKER_COUNT,
        ENV_WORKER_PRELOAD,
        ENV_WORKER_TIMEOUT,
        PACKAGE_ROOT,
    )
    from azureml_inference_server_http.log_config import load_logging_config

    args = amlserver.parse_arguments()
    load_logging_config(PACKAGE_ROOT)
    amlserver.merge_configuration(args)
    amlserver.validate_environment_variables()
    amlserver.set_path_variable()
    amlserver.print_server_info()
    _no_shared_control_socket()
    sys.argv = [
        sys.argv[0],
        *gunicorn_arguments(
            int(os.environ[ENV_PORT]),
            int(os.environ[ENV_WORKER_COUNT]),
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
