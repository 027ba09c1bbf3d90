"""Processes that outlive the CLI: start them detached, recognise them later, stop them whole.

A process is identified by its pid *and* its start time, so a pid reused by the system after
a reboot or a crash is never mistaken for ours (and never killed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # imported where a process is looked at: `validate` and `schema` load this module, never
    # look at a process, and would pay for psutil's import on every start
    import psutil

# Popen objects of children this very process started, so that stopping them also reaps them
# (a child that exits before its parent is a zombie until waited for).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclasses.dataclass(frozen=True)
class ProcessRef:
    pid: int
    create_time: float

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> ProcessRef | None:
        if not doc:
            return None
        return cls(int(doc["pid"]), float(doc["create_time"]))


def spawn(command: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path) -> ProcessRef:
    """Start a process in a session of its own (Ctrl-C in the terminal does not reach it),
    with output appended to ``log_path``."""
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _children[child.pid] = child
    try:
        create_time = psutil.Process(child.pid).create_time()
    except psutil.NoSuchProcess:  # died at once; the health wait will report it
        create_time = 0.0
    return ProcessRef(child.pid, create_time)


def _process(ref: ProcessRef | None) -> psutil.Process | None:
    import psutil

    if ref is None:
        return None
    try:
        process = psutil.Process(ref.pid)
        if abs(process.create_time() - ref.create_time) > 0.01:
            return None  # the pid now belongs to someone else
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def is_running(ref: ProcessRef | None) -> bool:
    _reap(ref)
    return _process(ref) is not None


def exit_code(ref: ProcessRef) -> int | None:
    """The exit status of a child this process started and that has ended, if known."""
    child = _children.get(ref.pid)
    return child.poll() if child is not None else None


def _reap(ref: ProcessRef | None) -> None:
    if ref is not None and ref.pid in _children:
        _children[ref.pid].poll()


def stop(ref: ProcessRef | None, *, timeout: float = 10.0) -> None:
    """Stop the process and everything in its process group: TERM, then KILL after ``timeout``."""
    stop_together([ref], timeout=timeout)


def stop_together(refs: Sequence[ProcessRef | None], *, timeout: float = 10.0) -> None:
    """Stop several processes and their groups at once: TERM to all, one shared wait, then
    KILL whatever is left after ``timeout``. Each stops gracefully in its own time, so the
    whole takes as long as the slowest one, not the sum."""
    groups: dict[int, list[psutil.Process]] = {}
    for ref in refs:
        process = _process(ref)
        if process is not None and ref is not None:
            groups[ref.pid] = _group_members(process)
            _signal_group(ref.pid, groups[ref.pid], signal.SIGTERM)
    members = [member for group in groups.values() for member in group]
    # A process that exited is done with, zombie or not: one of another parent stays a zombie
    # until that parent reaps it, which some init processes do only every few seconds.
    wait_until(lambda: not any(_alive(member) for member in members), timeout=timeout, interval=0.02)
    alive = [member for member in members if _alive(member)]
    if alive:
        for pgid, group in groups.items():
            left = [member for member in group if member in alive]
            if left:
                _signal_group(pgid, left, signal.SIGKILL)
        wait_until(lambda: not any(_alive(member) for member in alive), timeout=5, interval=0.02)
    for ref in refs:
        _forget(ref)


def kill(ref: ProcessRef | None, *, timeout: float = 5.0) -> None:
    """Kill the process and everything in its process group at once (SIGKILL): for a process
    that no longer answers, which may never act on SIGTERM (a stopped one does not even run)."""
    process = _process(ref)
    if process is None or ref is None:
        _forget(ref)
        return
    group = _group_members(process)
    _signal_group(ref.pid, group, signal.SIGKILL)
    # A killed process of another parent stays a zombie until that parent reaps it: gone enough.
    wait_until(lambda: not any(_alive(member) for member in group), timeout=timeout)
    _forget(ref)


def _alive(process: psutil.Process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_members(process: psutil.Process) -> list[psutil.Process]:
    import psutil

    members = [process]
    with contextlib.suppress(psutil.Error):
        members += process.children(recursive=True)
    return members


def _signal_group(pgid: int, members: list[psutil.Process], signum: int) -> None:
    import psutil

    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        for member in members:  # not a group leader any more: signal each one we know
            with contextlib.suppress(psutil.Error):
                member.send_signal(signum)


def _forget(ref: ProcessRef | None) -> None:
    if ref is not None:
        child = _children.pop(ref.pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)


def end_leftovers(ref: ProcessRef | None, directory: Path) -> None:
    """Kill what is left of a dead process's group: a killed gunicorn master leaves its workers
    running, and they keep the port. Only members whose working directory lies in
    ``directory`` are touched, so a pid reused by someone else is never hit."""
    import psutil

    if ref is None or _process(ref) is not None:
        return
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == ref.pid and Path(process.cwd()).is_relative_to(directory):
                process.kill()
        except (psutil.Error, OSError):
            continue


def upstream_connections(holder: ProcessRef | None, port: int) -> int:
    """How many of ``holder``'s TCP connections to 127.0.0.1:``port`` are open or opening:
    the kernel's count of the requests a router still has in flight to that slot."""
    import psutil

    process = _process(holder)
    if process is None:
        return 0
    try:
        return sum(
            1
            for c in process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status in _OPEN_STATES
        )
    except psutil.Error:
        return 0


_OPEN_STATES = frozenset({"ESTABLISHED", "SYN_SENT"})  # psutil.CONN_ESTABLISHED, CONN_SYN_SENT


def memory_rss(ref: ProcessRef | None) -> int | None:
    import psutil

    process = _process(ref)
    if process is None:
        return None
    try:
        return sum(p.memory_info().rss for p in _group_members(process))
    except psutil.Error:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(condition: Any, *, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
