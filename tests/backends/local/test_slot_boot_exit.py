"""Where a granian slot keeps the exit code of a failed init(): in the revision's folder that
slots.py names, so a slot ended by SIGKILL (the supervisor's kill of a hung slot, a crash)
leaves nothing behind in the machine's temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tdsp_deploy.backends.local.processes import free_port
from tdsp_deploy.backends.local.slot_server import BOOT_EXIT_FILE
from tests.fakes.slot_process import SlotProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def revision(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A revision folder with the code a failed start of it left, and a temporary folder of
    the slot's own to look into."""
    folder = tmp_path / "revision"
    folder.mkdir()
    (folder / "boot-exit").write_text("7")  # an earlier start of this revision failed
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv(BOOT_EXIT_FILE, str(folder / "boot-exit"))
    return folder, scratch


def test_a_killed_slot_leaves_nothing_in_the_temporary_folder(tmp_path, revision):
    folder, scratch = revision
    (tmp_path / "slot").mkdir()
    slot = SlotProcess(tmp_path / "slot", "def init():\n    pass\n\n\ndef run(raw_data):\n    return 1\n")
    try:
        assert slot.post(b'"x"')[0] == 200
        assert not (folder / "boot-exit").exists()  # the earlier start's code is not this one's
    finally:
        os.killpg(slot.process.pid, signal.SIGKILL)
        slot.process.wait(timeout=30)
        slot.log.close()
    assert [p.name for p in scratch.iterdir() if p.name.startswith("tdsp-slot-")] == []


def test_a_failed_init_leaves_its_code_in_the_revisions_folder(tmp_path, revision):
    folder, _ = revision
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "def init():\n    raise RuntimeError('no model')\n\n\ndef run(d):\n    return 1\n"
    )
    (tmp_path / "model").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SERVER_PORT", "WORKER_COUNT")}
    env.update({"AZUREML_MODEL_DIR": str(tmp_path / "model"), "AML_APP_ROOT": str(code)})
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "tdsp_deploy.backends.local.slot_server"),
            *("--entry_script", "score.py", "--model_dir", str(tmp_path / "model")),
            *("--port", str(free_port()), "--http_server", "granian"),
        ],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 3, (finished.stdout + finished.stderr)[-3000:]
    assert (folder / "boot-exit").read_text() == "3"
