"""Benchmark: how long the CLI takes to start, against the Azure ML SDK and mlflow starting.

Measured: the wall time of whole processes, median of N=10 runs after 1 warm-up, the
commands alternating round by round so they share the machine's noise:

- ours: ``tdsp-deploy validate examples/iris/deploy.yaml`` and ``tdsp-deploy --help``
- peer 1: ``python -c "import azure.ai.ml"`` (what a CLI built on the SDK pays before any work)
- peer 2: ``mlflow --help``
- floor: ``python -c pass`` (the interpreter alone; reported, not compared)
- what ``validate`` cannot do without: ``python -c "from pydantic import BaseModel, Field; import
  yaml"`` (the manifest's schema is pydantic models, the file is YAML), reported against the same
  peer without a goal, so that the room left under the goal is in every run

The commands run with bytecode written as usual (PYTHONDONTWRITEBYTECODE is dropped from their
environment): an installed package has its modules compiled when pip installs it, as the peer's
have; an editable checkout gets them on the warm-up run.

Each entry also gives the best (lowest) wall times of the runs and their ratio, and the CPU
seconds (user + system) of ours and the peer: on a machine shared with other work the wall
times of a short command swing widely, the CPU it spends much less.

All with this interpreter and its venv. Goal (issue 21): validate and --help each at most 0.1
of the azure.ai.ml import. A peer
that is not installed (bench/requirements.txt) is reported as ``"peer": null, "met": null``.
--quick: 2 runs, and no `mlflow --help` (about 3 s a run idle, and it has no goal).

    python bench/cli_start.py [--runs N | --quick]
    python bench/cli_start.py --importtime [TOP] [--command validate|help]   # where start-up goes

Prints one JSON document on stdout (the import-time table is text); notes go to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from common import EXAMPLE, emit, fresh_home, note, result, tdsp_deploy, tool

GOAL = 0.1
IMPORTS = "from pydantic import BaseModel, Field; import yaml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 runs")
    parser.add_argument(
        "--importtime",
        type=int,
        nargs="?",
        const=15,
        metavar="TOP",
        help="print the TOP modules by cumulative import time of `validate` (or --command) instead",
    )
    parser.add_argument("--command", choices=["validate", "help"], default="validate")
    args = parser.parse_args()
    if args.importtime:
        print(import_table(args.importtime, command=args.command))
        return
    runs = 2 if args.quick else args.runs

    commands = {
        "validate": [*tdsp_deploy(), "validate", str(EXAMPLE)],
        "help": [*tdsp_deploy(), "--help"],
        "floor": [sys.executable, "-c", "pass"],
        "imports": [sys.executable, "-c", IMPORTS],
    }
    missing: dict[str, str] = {}
    azure_ai_ml = [sys.executable, "-c", "import azure.ai.ml"]
    # found without importing it: the import is the slowest thing this benchmark runs
    if _installed("azure.ai.ml"):
        commands["azure_ai_ml"] = azure_ai_ml
    else:
        missing["azure_ai_ml"] = "azure-ai-ml is not installed: pip install -r bench/requirements.txt"
    mlflow = tool("mlflow")
    if args.quick:
        pass  # the slowest command of the run, and reported only
    elif mlflow:
        commands["mlflow"] = [mlflow, "--help"]
    else:
        missing["mlflow"] = "mlflow is not installed: pip install -r bench/requirements.txt"

    times: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    with fresh_home() as env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for round_ in range(runs + 1):  # round 0 is the warm-up
            for name, command in commands.items():
                seconds, cpu_seconds = _timed(command, env)
                if round_:
                    times[name].append(seconds)
                    cpu[name].append(cpu_seconds)
            if round_:
                note(f"round {round_}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in times))
    median = {name: statistics.median(values) for name, values in times.items()}

    def entry(name: str, ours: str, peer: str, goal: float | None, peer_command: str) -> dict:
        peer_s = median.get(peer)
        ratio = median[ours] / peer_s if peer_s else None
        met = None if ratio is None or goal is None else ratio <= goal
        extra: dict = {"note": missing[peer]} if peer in missing else {}
        if peer_s:
            best_ours, best_peer = min(times[ours]), min(times[peer])
            cpu_ours, cpu_peer = statistics.median(cpu[ours]), statistics.median(cpu[peer])
            extra["best"] = {
                "ours": round(best_ours, 4),
                "peer": round(best_peer, 4),
                "ratio": round(best_ours / best_peer, 3),
            }
            extra["cpu_s"] = {
                "ours": round(cpu_ours, 4),
                "peer": round(cpu_peer, 4),
                "ratio": round(cpu_ours / cpu_peer, 3),
            }
        return result(
            name,
            median[ours],
            peer_s,
            ratio=ratio,
            unit="s",
            goal=f"ratio <= {goal}" if goal is not None else "none set (reported for comparison)",
            met=met,
            command=f'python -c "{IMPORTS}"'
            if ours == "imports"
            else " ".join(["tdsp-deploy", *commands[ours][len(tdsp_deploy()) :]]),
            peer_command=peer_command,
            python_floor_s=round(median["floor"], 4),
            runs={"ours": _r(times[ours]), "peer": _r(times.get(peer, []))},
            notes=f"median of {runs} after 1 warm-up, whole-process wall time, commands alternating",
            **extra,
        )

    entries = [
        entry(
            "cli_start_validate_vs_azure_ai_ml",
            "validate",
            "azure_ai_ml",
            GOAL,
            'python -c "import azure.ai.ml"',
        ),
        entry("cli_start_help_vs_azure_ai_ml", "help", "azure_ai_ml", GOAL, 'python -c "import azure.ai.ml"'),
        entry(
            "cli_start_pydantic_yaml_imports_vs_azure_ai_ml",
            "imports",
            "azure_ai_ml",
            None,
            'python -c "import azure.ai.ml"',
        ),
    ]
    if not args.quick:
        entries.insert(1, entry("cli_start_validate_vs_mlflow", "validate", "mlflow", None, "mlflow --help"))
    emit(entries)


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one command run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        command,
        env=env,
        cwd=env["TDSP_DEPLOY_HOME"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _r(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_table(top: int, runs: int = 5, command: str = "validate") -> str:
    """The TOP modules by cumulative import time of `tdsp-deploy validate` (or `--help`),
    medians of ``runs``."""
    arguments = ["validate", str(EXAMPLE)] if command == "validate" else ["--help"]
    cumulative: dict[str, list[int]] = defaultdict(list)
    own: dict[str, list[int]] = defaultdict(list)
    depth: dict[str, int] = {}
    totals: list[int] = []
    with fresh_home() as env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for i in range(runs + 1):  # run 0 fills the page cache and __pycache__
            done = subprocess.run(
                [sys.executable, "-X", "importtime", "-m", "tdsp_deploy", *arguments],
                env=env,
                cwd=env["TDSP_DEPLOY_HOME"],
                capture_output=True,
                text=True,
                check=True,
            )
            parsed = [m.groups() for m in map(LINE.match, done.stderr.splitlines()) if m]
            if i == 0:
                continue
            totals.append(sum(int(c) for _, c, indent, _ in parsed if len(indent) // 2 == 0))
            for self_us, cumulative_us, indent, module in parsed:
                cumulative[module].append(int(cumulative_us))
                own[module].append(int(self_us))
                depth[module] = len(indent) // 2
    total = statistics.median(totals)
    rows = sorted(cumulative, key=lambda m: statistics.median(cumulative[m]), reverse=True)[:top]
    lines = [
        f"`tdsp-deploy {' '.join(arguments[:1]) if command == 'validate' else '--help'}` imports: "
        f"{total / 1000:.1f} ms in all (median of {runs}; -X importtime)",
        f"{'cumulative ms':>13}  {'self ms':>7}  depth  module",
    ]
    for m in rows:
        lines.append(
            f"{statistics.median(cumulative[m]) / 1000:13.1f}  {statistics.median(own[m]) / 1000:7.1f}"
            f"  {depth[m]:5d}  {m}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
