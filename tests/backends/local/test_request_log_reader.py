"""Reading the router's request log from a time on (request_log.py): the same records as a
read of every line, and a cost that does not grow with what the endpoint served before."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tdsp_deploy.backends.local.metrics import Measurements
from tdsp_deploy.backends.local.request_log import MARGIN_S, records_since

START = 1_800_000_000.0


class CountingFile(io.FileIO):
    """A real file that counts the bytes read from the disk through it."""

    read_bytes = 0

    def readinto(self, buffer):  # type: ignore[no-untyped-def]
        count = super().readinto(buffer)
        self.read_bytes += count or 0
        return count


def write_log(path: Path, stamps: list[float]) -> None:
    """Lines as the router writes them (live and, every tenth, shadow), at the given times."""
    with open(path, "w", encoding="utf-8") as out:
        for number, stamp in enumerate(stamps):
            kind = "shadow" if number % 10 == 9 else "live"
            record = {"kind": kind, "t": round(stamp, 6), "id": f"r{number}", "deployment": "blue",
                      "status": 200, "latency_ms": 1.5}  # fmt: skip
            out.write(json.dumps(record, separators=(",", ":")) + "\n")


def read(path: Path, since: float) -> tuple[list[dict], int]:
    raw = CountingFile(path)
    with io.BufferedReader(raw) as handle:
        return list(records_since(handle, since)), raw.read_bytes


def every_line_since(path: Path, since: float) -> list[dict]:
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in records if r["t"] >= since]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 50, 5_000])
def test_the_same_records_as_reading_every_line(tmp_path, count):
    log = tmp_path / "requests.jsonl"
    write_log(log, [START + i * 0.5 for i in range(count)])
    span = count * 0.5
    for since in (
        0.0,
        START - 100,
        START,
        START + 0.25,
        START + span / 3,
        START + span - 0.5,
        START + span + 1,
    ):
        assert read(log, since)[0] == every_line_since(log, since), since


def test_lines_out_of_order_within_the_margin_are_all_found(tmp_path):
    """Two routers flushing their buffers during a restart, or a clock stepped back a little."""
    log = tmp_path / "requests.jsonl"
    stamps = [START + i for i in range(400)]
    stamps[200:210] = [START + 200 - MARGIN_S / 2 + i * 0.1 for i in range(10)]  # written late
    write_log(log, stamps)
    for since in (START + 195, START + 199, START + 200, START + 205):
        assert read(log, since)[0] == every_line_since(log, since), since


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path):
    log = tmp_path / "requests.jsonl"
    write_log(log, [START + i for i in range(100)])
    with open(log, "a", encoding="utf-8") as out:
        out.write('{"kind":"live","t":%f,"id":"r' % (START + 100))  # no newline yet
    records, _ = read(log, START + 90)
    assert [r["id"] for r in records] == [f"r{i}" for i in range(90, 100)]
    assert read(log, START + 1_000)[0] == []


def test_a_read_of_the_last_minute_costs_the_same_after_10_000_or_200_000_requests(tmp_path):
    """The cost of a read is what it returns plus a bisection, whatever the log holds before:
    counted in bytes read from the file, which load on the machine cannot move."""
    costs = {}
    for count in (10_000, 200_000):
        log = tmp_path / f"requests-{count}.jsonl"
        write_log(log, [START + i * 0.01 for i in range(count)])  # 100 requests a second
        end = START + count * 0.01
        records, read_bytes = read(log, end - 60)
        assert len(records) == 6_000
        costs[count] = read_bytes, log.stat().st_size
    # 60 s asked + the margin's 10 s, about 1 MB of lines; the bisection adds a few dozen 8 KB
    # blocks for the log 20 times longer
    assert costs[200_000][0] <= costs[10_000][0] + 400_000, costs
    assert costs[200_000][0] < costs[200_000][1] / 10  # far from reading the whole log


def test_the_routers_own_lines_are_read_back(tmp_path):
    log = tmp_path / "requests.jsonl"
    measurements = Measurements("iris", str(log))
    for number in range(20):
        measurements.live("blue", 200, 0.002, f"r{number}", pinned=number == 3)
    measurements.shadow("green", 200, 0.003, "r5", agreed=True)
    measurements.close()
    records, _ = read(log, 0.0)
    assert [r["id"] for r in records] == [*(f"r{n}" for n in range(20)), "r5"]
    assert records[3]["pinned"] is True and records[-1] == {**records[-1], "kind": "shadow", "agreed": True}
