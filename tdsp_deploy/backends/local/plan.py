"""`render` for the local target: the process plan a push would carry out (the router, a
deployment's process with its command, working directory and variables, the supervisor),
written offline so that it can be reviewed in a pull request. Secrets are redacted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsp_deploy.secrets import redact_variables

if TYPE_CHECKING:
    from tdsp_deploy.backends.local.slots import SlotStarter
    from tdsp_deploy.packaging import BuiltPackage


def process_plan(starter: SlotStarter, state: Path, package: BuiltPackage) -> dict[str, Any]:
    manifest, target = starter.manifest, starter.target
    slot = manifest.rollout.deployment or "blue"
    layout = starter.planned(state / "slots" / slot / "rN", package.lock)
    return {
        "target": "local",
        "endpoint": manifest.name,
        "package": {"id": package.package_id, "archive": str(package.path)},
        "router": {
            "command": [
                sys.executable,
                "-m",
                "tdsp_deploy.backends.local.router",
                str(state / "router.json"),
            ],
            "host": target.host,
            "port": target.port or "a free port, chosen at the first push and kept",
            "auth": "Authorization: Bearer <primary or secondary key>, keys in keys.json (mode 0600)",
            "control_auth": "/-/state, /-/drain, /-/resume: the admin key in admin.json (mode 0600), "
            "never the scoring keys",
            "max_request_mb": target.max_request_mb,
            "request_timeout_ms": target.request_timeout_ms,
        },
        "slot": {
            "name": slot if manifest.rollout.deployment else "blue or green (the one without traffic)",
            "command": starter.command(layout, 0),
            "working_directory": str(layout.app_root),
            "bind": "127.0.0.1 (loopback only; the router is the only door, and the slot answers "
            "only requests with its secret, which the router adds)",
            "workers": target.workers,
            "environment": {
                **redact_variables(manifest.environment.variables, manifest.secret_values),
                **layout.variables(),
            },
            "startup_timeout_s": target.startup_timeout,
        },
        "supervisor": {
            "command": [sys.executable, "-m", "tdsp_deploy.backends.local.supervisor", str(state)],
            "restarts": "a slot process that ends, on the same port, after 0.5 s doubling to 30 s "
            "(reset after 60 s up); its files are checked against the package lock first",
            "liveness_probe": target.liveness_probe.model_dump(),
        },
        "rollout": manifest.rollout.model_dump(),
    }


def write_plan(plan: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "local-plan.json"
    path.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    return path
