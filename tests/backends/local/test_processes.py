"""Stopping the local target's processes: every one of a group, gracefully, then by force."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tdsp_deploy.backends.local import processes

# Writes its pid, then on SIGTERM sleeps `delay` before exiting (a graceful stop in progress);
# with delay < 0 it ignores SIGTERM altogether.
PROGRAM = """
import os, signal, sys, time
delay = float(sys.argv[1])
def on_term(*_):
    if delay < 0:
        return
    time.sleep(delay)
    open(sys.argv[2], "w").write("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
if len(sys.argv) > 3:  # one child in the same process group, as a server's worker is
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"])
open(sys.argv[2] + ".ready", "w").write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def start(
    tmp: Path, name: str, delay: float, *, with_child: bool = False
) -> tuple[processes.ProcessRef, Path]:
    marker = tmp / name
    command = [sys.executable, "-c", PROGRAM, str(delay), str(marker)] + (["child"] if with_child else [])
    ref = processes.spawn(command, cwd=tmp, env={"PATH": "/usr/bin:/bin"}, log_path=tmp / f"{name}.log")
    assert processes.wait_until(lambda: (tmp / f"{name}.ready").exists(), timeout=30)
    return ref, marker


def test_stop_together_stops_each_gracefully_and_forces_the_one_that_will_not(tmp_path):
    graceful, graceful_marker = start(tmp_path, "graceful", 0.5, with_child=True)
    quick, quick_marker = start(tmp_path, "quick", 0.0)
    stubborn, stubborn_marker = start(tmp_path, "stubborn", -1)
    members = processes._group_members(processes._process(graceful))
    assert len(members) == 2

    began = time.monotonic()
    processes.stop_together([graceful, quick, stubborn, None], timeout=3)
    waited = time.monotonic() - began

    for ref in (graceful, quick, stubborn):
        assert not processes.is_running(ref)
    assert not any(processes._alive(member) for member in members)  # the child went with its group
    # the two that honour SIGTERM finished their own stop; the stubborn one was killed
    assert graceful_marker.read_text() == "stopped" and quick_marker.read_text() == "stopped"
    assert not stubborn_marker.exists()
    assert waited >= 3  # it was given the whole timeout before being killed
