"""What `status` reports of a local endpoint: the router and the supervisor, each deployment's
process, health, traffic, restarts and environment, and any process an interrupted command
left that the record does not account for.
"""

from __future__ import annotations

from tdsp_deploy.backends.base import EndpointStatus, SlotStatus
from tdsp_deploy.backends.local import processes
from tdsp_deploy.backends.local.lifecycle import client_host, probe
from tdsp_deploy.backends.local.processes import ProcessRef
from tdsp_deploy.backends.local.slots import this_python
from tdsp_deploy.backends.local.state import EndpointFiles, EndpointRecord, SlotRecord


def scoring_uri(record: EndpointRecord) -> str:
    return f"http://{client_host(record.host)}:{record.port}/score"


def endpoint_status(
    kind: str, files: EndpointFiles, record: EndpointRecord, strays: list[ProcessRef]
) -> EndpointStatus:
    router_up = processes.is_running(record.router)
    supervisor_up = processes.is_running(record.supervisor)
    return EndpointStatus(
        name=record.name,
        kind=kind,
        exists=True,
        scoring_uri=scoring_uri(record),
        slots=[slot_status(slot) for _, slot in sorted(record.slots.items())],
        details={
            "router": {
                "state": "running" if router_up else "stopped",
                "pid": record.router.pid if record.router and router_up else None,
                "host": record.host,
                "port": record.port,
            },
            "supervisor": {
                "state": "running" if supervisor_up else "stopped",
                "pid": record.supervisor.pid if record.supervisor and supervisor_up else None,
                "log": str(files.supervisor_log),
            },
            "state_dir": str(files.root),
            # started by a command that was interrupted before it could record or stop them;
            # the next push or delete stops them
            "stray_processes": [ref.pid for ref in strays],
        },
    )


def slot_status(slot: SlotRecord) -> SlotStatus:
    running = processes.is_running(slot.process)
    state = ("healthy" if probe(slot.port, timeout=2.0) else "unhealthy") if running else "stopped"
    return SlotStatus(
        name=slot.name,
        state=state,
        traffic=slot.traffic,
        mirror=slot.mirror,
        model_version=slot.model_version,
        package_id=slot.package_id,
        config_id=slot.config_id,
        details={
            "pid": slot.process.pid if slot.process and running else None,
            "port": slot.port,
            "revision": slot.revision,
            "deployed_at": slot.deployed_at,
            "log": str(slot.log_path),
            "restarts": slot.restarts,  # by the supervisor: the process ended, or hung
            "last_exit": slot.last_exit,
            "last_restart_reason": slot.last_restart_reason,
            "last_restart_at": slot.last_restart_at,
            # the deployment's own environment (hash, Python), or "shared": the CLI's
            "environment": slot.environment or {"hash": "shared", "python": this_python()},
        },
    )
