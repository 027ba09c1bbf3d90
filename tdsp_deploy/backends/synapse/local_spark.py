"""The job on a local Spark: ``spark-submit --master local[*]`` from the pyspark package.

The very script a Synapse pool runs, with the same spec; only the paths are local. The driver
and the Python workers run the interpreter that runs tdsp-deploy (``PYSPARK_PYTHON``), so the
job sees the same libraries the package was built with.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from tdsp_deploy.backends.base import Progress, ProgressEvent, no_progress
from tdsp_deploy.backends.synapse.job import (
    JOB_FILE,
    RESULT_FILE,
    failure_text,
    job_script,
    read_result,
    spec_text,
)
from tdsp_deploy.errors import BackendError, DeploymentFailed, DeploymentTimeout, PluginError

LOG_TAIL_LINES = 40
JOB_LINE_PREFIX = "tdsp-job: "


def spark_submit() -> Path:
    """pyspark's spark-submit; PluginError when pyspark is missing, BackendError without Java."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise PluginError(
            "run --local needs pyspark, which is not installed", hint="pip install 'tdsp-deploy[synapse]'"
        )
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else None
    if not ((java and java.is_file()) or shutil.which("java")):
        raise BackendError(
            "a local Spark needs Java, and no java was found (neither on PATH nor in JAVA_HOME)",
            hint="install a Java runtime 17 (e.g. apt-get install default-jre-headless) or set JAVA_HOME",
        )
    return Path(spec.origin).parent / "bin" / "spark-submit"


def local_cores(master: str) -> int | None:
    """The task slots of a ``local[N]`` / ``local[*]`` / ``local`` master (None for another)."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if match is None:
        return None
    count = match.group(1)
    if count is None:
        return 1
    return (os.cpu_count() or 1) if count == "*" else max(1, int(count))


def local_command(job_file: Path, spec: dict[str, Any], conf: dict[str, str], master: str) -> list[str]:
    """The spark-submit command line (also what ``render`` shows for a local run). The settings
    cut what a one-machine job pays before its first row; ``target.conf`` overrides any."""
    cores = local_cores(master)
    settings = {
        "spark.ui.enabled": "false",  # no web UI to start, and no port to take on a shared machine
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.catalogImplementation": "in-memory",  # no Hive metastore to start
        "spark.python.worker.reuse": "true",  # a worker keeps its loaded model from task to task
        # a shuffle, should a plan have one, in as many parts as there are cores, not Spark's 200
        # opening a local file is cheap: at Spark's 4 MiB estimate, a file of a few row groups
        # makes one task and leaves the other cores idle
        "spark.sql.files.openCostInBytes": str(1 << 20),
        # the JVM's optimising compiler (C2) is most of a short job's CPU: its quick compiler
        # alone starts the job for less (BENCHMARKS.md, "Spark: the fixed cost")
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
        **({"spark.sql.shuffle.partitions": str(cores)} if cores else {}),
        **conf,
    }
    command = [str(spark_submit()), "--master", master]
    for key, value in sorted(settings.items()):
        command += ["--conf", f"{key}={value}"]
    return [*command, str(job_file), spec_text(spec)]


def run_local(
    spec: dict[str, Any],
    work_dir: Path,
    *,
    conf: dict[str, str] | None = None,
    master: str = "local[*]",
    timeout: float = 3600.0,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Run the job on a local Spark and return its summary (rows, output, ...).

    ``work_dir`` receives the job script, ``driver.log`` and the job's ``result.json`` (read
    back as on a pool). A job that fails raises DeploymentFailed with the driver's error; one
    that outlives ``timeout`` is killed and raises DeploymentTimeout."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job_file = work_dir / JOB_FILE
    job_file.write_text(job_script(), encoding="utf-8")
    result_file = work_dir / RESULT_FILE
    result_file.unlink(missing_ok=True)
    spec = {**spec, "result": {"path": str(result_file)}}
    command = local_command(job_file, spec, conf or {}, master)
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),  # loopback only
    }
    log_path = work_dir / "driver.log"
    started = time.monotonic()
    progress(ProgressEvent(step="run", message=f"starting a local Spark ({master})", timeout=timeout))
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=work_dir,
                text=True,
                errors="replace",
                start_new_session=True,  # so that a timeout ends the JVM and its Python workers
            )
        except OSError as exc:
            raise BackendError(f"could not start spark-submit: {exc}") from None
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            _kill(process)

        watchdog = threading.Timer(timeout, stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                if line.startswith(JOB_LINE_PREFIX):
                    progress(
                        ProgressEvent(
                            step="run",
                            message=line[len(JOB_LINE_PREFIX) :].strip(),
                            elapsed=time.monotonic() - started,
                            timeout=timeout,
                        )
                    )
            code = process.wait()
        except KeyboardInterrupt:
            _kill(process)
            raise
        finally:
            watchdog.cancel()
    log_tail = "\n".join(tail)
    result = read_result(result_file.read_bytes() if result_file.is_file() else None)
    if timed_out.is_set():
        raise DeploymentTimeout(
            f"the local Spark job did not finish within {timeout:g} s and was stopped",
            hint="raise target.job_timeout, or score a smaller input",
            details={"log_tail": log_tail, "log": str(log_path)},
        )
    if code != 0:
        reason = failure_text(result) or _reason(log_tail)
        raise DeploymentFailed(
            f"the local Spark job failed (exit code {code}):\n{reason}",
            hint=f"the whole driver log is in {log_path}",
            details={"log_tail": log_tail, "log": str(log_path), "error": reason},
        )
    if result is None or result.get("state") != "success":
        raise DeploymentFailed(
            f"the local Spark job ended without writing its summary to {result_file}",
            hint=f"read the driver log: {log_path}",
            details={"log_tail": log_tail},
        )
    return result


def _reason(tail: str) -> str:
    """The lines that say why: the last Python exception, else the whole tail."""
    lines = tail.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback"):
            return "\n".join(lines[index:])
    return tail


def _kill(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
