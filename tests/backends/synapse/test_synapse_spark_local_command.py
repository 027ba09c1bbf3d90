"""The spark-submit command line of a local run: the session settings that cut the job's fixed
cost on one machine, sized to the master's cores, and target.conf above them all. No Spark
starts here (spark_submit() only finds pyspark's script; a JRE must be on PATH, as for the
other Spark tests)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tdsp_deploy.backends.synapse.local_spark import local_command, local_cores

pytestmark = pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                                reason="spark_submit() refuses a machine without Java")  # fmt: skip


def settings(command: list[str]) -> dict[str, str]:
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "--conf"]
    return dict(pair.split("=", 1) for pair in pairs)


@pytest.mark.parametrize(
    ("master", "cores"),
    [("local", 1), ("local[2]", 2), ("local[3, 4]", 3), ("local[*]", os.cpu_count() or 1),
     ("yarn", None), ("spark://host:7077", None), ("local[x]", None)],
)  # fmt: skip
def test_the_cores_of_a_local_master(master: str, cores: int | None) -> None:
    assert local_cores(master) == cores


def test_a_local_run_starts_no_ui_no_hive_and_sizes_its_parts_to_the_cores(tmp_path: Path) -> None:
    command = local_command(tmp_path / "job.py", {"input": {}}, {}, "local[2]")
    conf = settings(command)
    assert command[command.index("--master") + 1] == "local[2]"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.catalogImplementation"] == "in-memory"
    assert conf["spark.python.worker.reuse"] == "true"
    assert conf["spark.sql.shuffle.partitions"] == "2"
    assert int(conf["spark.sql.files.openCostInBytes"]) < 4 << 20  # below Spark's own estimate
    assert conf["spark.driver.extraJavaOptions"] == "-XX:TieredStopAtLevel=1"  # the driver is the executor
    assert command[-2] == str(tmp_path / "job.py")


def test_target_conf_overrides_every_default(tmp_path: Path) -> None:
    mine = {"spark.sql.shuffle.partitions": "7", "spark.python.worker.reuse": "false",
            "spark.sql.files.openCostInBytes": str(64 << 20), "spark.executor.memory": "2g",
            "spark.driver.extraJavaOptions": "-Xmx2g"}  # fmt: skip
    conf = settings(local_command(tmp_path / "job.py", {}, mine, "local[4]"))
    assert {key: conf[key] for key in mine} == mine


def test_a_master_that_is_not_local_gets_no_shuffle_size(tmp_path: Path) -> None:
    conf = settings(local_command(tmp_path / "job.py", {}, {}, "spark://host:7077"))
    assert "spark.sql.shuffle.partitions" not in conf
    assert conf["spark.ui.enabled"] == "false"
