"""A real slot process (slot_server.py under granian or gunicorn) with a small score.py, for the
router's tests."""

from __future__ import annotations

import http.client
import http.server
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdsp_deploy.backends.local.processes import free_port


class SlotProcess:
    """A real slot: slot_server.py (the inference server under granian or gunicorn) with a
    small score.py."""

    def __init__(
        self,
        tmp: Path,
        score_py: str,
        *,
        workers: int = 1,
        scoring_timeout_ms: int | None = None,
        http_server: str = "granian",
    ):
        code = tmp / "code"
        code.mkdir()
        (code / "score.py").write_text(score_py)
        (tmp / "model").mkdir()
        self.port = free_port()
        self.log_path = tmp / "slot.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed by stop())
        env = {k: v for k, v in os.environ.items() if k not in ("SERVER_PORT", "WORKER_COUNT")}
        env.update(
            {"AZUREML_MODEL_DIR": str(tmp / "model"), "AML_APP_ROOT": str(code), "PYTHONUNBUFFERED": "1"}
        )
        if scoring_timeout_ms is not None:
            env["SCORING_TIMEOUT_MS"] = str(scoring_timeout_ms)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tdsp_deploy.backends.local.slot_server",
                "--entry_script",
                "score.py",
                "--model_dir",
                str(tmp / "model"),
                "--port",
                str(self.port),
                "--worker_count",
                str(workers),
                "--http_server",
                http_server,
            ],
            cwd=code,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.post(b'"ping"', path="/")[0] == 200:
                    return
            except OSError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.2)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def post(self, body: bytes, path: str = "/score") -> tuple[int, bytes]:
        connection = self.connection()
        connection.request(
            "GET" if path == "/" else "POST",
            path,
            body=None if path == "/" else body,
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        result = response.status, response.read()
        connection.close()
        return result

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        self.log.close()


HTTP_SERVERS = pytest.mark.parametrize("http_server", ["granian", "gunicorn"])
