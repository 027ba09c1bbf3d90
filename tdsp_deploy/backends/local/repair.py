"""What `repair` does on the local target: finish what an interrupted command left, and bring
back the router, supervisor and slots that stopped (after a machine restart, say)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tdsp_deploy import interrupts
from tdsp_deploy.backends.local import processes
from tdsp_deploy.errors import DeploymentFailed

if TYPE_CHECKING:
    from tdsp_deploy.backends.local import LocalBackend
    from tdsp_deploy.backends.local.state import EndpointRecord, SlotRecord


def finish_interrupted(backend: LocalBackend, record: EndpointRecord) -> list[str]:
    """Complete what an interrupted command left: roll back a deployment its push never
    finished with, stop the processes it started and never recorded or stopped."""
    done = []
    for name in sorted(n for n, slot in record.slots.items() if slot.pending):
        backend.discard_slot(name)
        done.append(f"rolled back deployment '{name}', left by a push that did not finish")
    record = backend.deployed_record()
    strays = backend.lifecycle.strays(record)
    if strays:
        processes.stop_together([ref for ref, _ in strays])
        done += [
            f"stopped a {what} process (pid {ref.pid}) left by an interrupted command" for ref, what in strays
        ]
    return done


def restart_what_stopped(backend: LocalBackend, record: EndpointRecord) -> list[str]:
    dead = [
        slot
        for slot in record.slots.values()
        if not processes.is_running(slot.process) and (Path(slot.directory) / "package").is_dir()
    ]
    supervisor_up = processes.is_running(record.supervisor)
    if not dead and supervisor_up and processes.is_running(record.router):
        return []
    done, restarted = [], []
    if dead:
        # The supervisor may be restarting them too: stop it first so only one of us does.
        processes.stop(record.supervisor)
        record = backend.deployed_record()
        for name in sorted(slot.name for slot in dead):
            slot = record.slots[name]
            if processes.is_running(slot.process):
                continue
            try:
                restart_slot(backend, record, slot)
            except DeploymentFailed as refused:  # its files changed on disk: not loaded again
                done.append(f"deployment '{name}' not restarted: {refused.message}")
                continue
            restarted.append(name)
            done.append(f"restarted deployment '{name}' (its process had stopped)")
    if not processes.is_running(record.router):
        backend.lifecycle.start_router(record)
        done.append(f"restarted the router on {record.host}:{record.port}")
    for name in restarted:
        backend.wait_healthy(name)  # publishes the slot to the router once it answers
    record = backend.deployed_record()
    if not processes.is_running(record.supervisor):
        backend.lifecycle.start_supervisor(record)
        if not supervisor_up and not dead:
            done.append("restarted the supervisor")
    return done


def restart_slot(backend: LocalBackend, record: EndpointRecord, slot: SlotRecord) -> None:
    from tdsp_deploy.packaging.extract import verify_extracted

    directory = Path(slot.directory)
    processes.end_leftovers(slot.process, directory)
    lock = verify_extracted(directory / "package", slot.package_id)  # before the model loads again
    if not processes.port_is_free("127.0.0.1", slot.port):  # keep the port: the router knows it
        slot.port = processes.free_port()
    with interrupts.deferred():
        slot.process, slot.command = backend.starter.start(
            backend.lifecycle.spawn, directory, lock, slot.port, slot.environment, slot.log_path
        )
        backend.files.write(record)
