"""Start one slot: Azure ML's inference server (azmlinfsrv), bound to loopback only.

The server's own launcher binds 0.0.0.0, which would put the model on the user's network
with no key; the router must be the only door. So this runs the launcher's own steps
(argument parsing, environment set-up, gunicorn start) and passes 127.0.0.1 as the host.
Everything else is the unchanged server that Azure ML runs in its containers.

Run as: ``python -m tdsp_deploy.backends.local.slot_server --entry_script S --model_dir M --port P
[--worker_count N]`` with the working directory at the scoring code (AML_APP_ROOT).
"""

from __future__ import annotations

import os
import sys

LOOPBACK = "127.0.0.1"


def main() -> None:
    from azureml_inference_server_http import amlserver, amlserver_linux
    from azureml_inference_server_http.constants import ENV_PORT, ENV_WORKER_COUNT, PACKAGE_ROOT
    from azureml_inference_server_http.log_config import load_logging_config

    args = amlserver.parse_arguments()
    load_logging_config(PACKAGE_ROOT)
    amlserver.merge_configuration(args)
    amlserver.validate_environment_variables()
    amlserver.set_path_variable()
    amlserver.print_server_info()
    _no_shared_control_socket()
    amlserver_linux.run(LOOPBACK, int(os.environ[ENV_PORT]), int(os.environ[ENV_WORKER_COUNT]))


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
