"""Collect the figures of one benchmark run, print them, and save them as JSON.

Throughput is cycles per second in the fastest of the rounds (the round least
disturbed by other work on the machine); the median round is kept too.
Every goal is a ratio between clients measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OURS = "wfe-valkey"
GOAL_TASKS = 64
# (peer, lowest ratio of our cycles/s to the peer's) at GOAL_TASKS tasks,
# for the lock and the queue cycle.
THROUGHPUT_GOALS = (
    ("redis-py", 6.0),
    ("valkey-glide", 3.0),
    ("aioredis-1.3.1", 1.5),
    ("bare-loop", 0.9),
)
# Our time per lock cycle for one caller, at most this times redis-py's.
SINGLE_CALLER_GOAL = ("redis-py", 1.1)


@dataclass
class Measurement:
    workload: str
    title: str
    tasks: int
    client: str
    cycles: int
    ids_per_cycle: int
    best_seconds: float
    median_seconds: float
    # The least CPU time of this process in one round, all threads.
    cpu_seconds: float

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.best_seconds

    @property
    def median_cycles_per_second(self) -> float:
        return self.cycles / self.median_seconds

    @property
    def cpu_per_cycle(self) -> float:
        return self.cpu_seconds / self.cycles


@dataclass
class ResultsBook:
    """Everything one run measured, in the order it was measured."""

    measurements: list[Measurement] = field(default_factory=list)
    missing_peers: dict[str, str] = field(default_factory=dict)
    peer_errors: dict[str, str] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    def add(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)

    def find(self, workload: str, tasks: int, client: str) -> Measurement | None:
        for measurement in self.measurements:
            if (measurement.workload, measurement.tasks, measurement.client) == (
                workload,
                tasks,
                client,
            ):
                return measurement
        return None

    def rate(self, workload: str, tasks: int, client: str) -> float | None:
        measurement = self.find(workload, tasks, client)
        return None if measurement is None else measurement.cycles_per_second

    # saving

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": machine_description(),
            "command": " ".join(sys.argv),
            "measurements": [
                {
                    **asdict(measurement),
                    "cycles_per_second": measurement.cycles_per_second,
                    "median_cycles_per_second": measurement.median_cycles_per_second,
                    "cpu_us_per_cycle": measurement.cpu_per_cycle * 1e6,
                }
                for measurement in self.measurements
            ],
            "missing_peers": self.missing_peers,
            "peer_errors": self.peer_errors,
            "memory": self.memory,
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    # printing

    def summary_lines(self) -> list[str]:
        lines: list[str] = []
        clients = _ordered_clients(self.measurements)
        peers = [client for client in clients if client != OURS]
        for workload, title in _ordered_workloads(self.measurements):
            lines.append("")
            lines.append(f"{title}: cycles/s (ratio = {OURS} / peer)")
            header = f"{'tasks':>5}  " + "  ".join(f"{client:>22}" for client in clients)
            lines.append(header)
            for tasks in sorted({m.tasks for m in self.measurements if m.workload == workload}):
                ours = self.rate(workload, tasks, OURS)
                cells = []
                for client in clients:
                    rate = self.rate(workload, tasks, client)
                    cells.append(f"{_cell(rate, ours if client in peers else None):>22}")
                lines.append(f"{tasks:>5}  " + "  ".join(cells))
        lines.append("")
        lines.extend(self.goal_lines())
        if self.memory:
            lines.append("")
            lines.extend(memory_lines(self.memory))
        lines.append("")
        for case, reason in self.peer_errors.items():
            lines.append(f"peer failed ({case}): {reason}")
        if self.missing_peers:
            for peer, reason in self.missing_peers.items():
                lines.append(f"missing peer {peer}: {reason}")
        else:
            lines.append("missing peers: none")
        return lines

    def goal_lines(self) -> list[str]:
        lines = [
            f"goals (ratios from this run, {GOAL_TASKS} tasks unless stated; best round, "
            "then median round, then client CPU per cycle):"
        ]
        for workload in ("lock", "queue"):
            ours = self.find(workload, GOAL_TASKS, OURS)
            for peer, target in THROUGHPUT_GOALS:
                theirs = self.find(workload, GOAL_TASKS, peer)
                if ours is None or theirs is None:
                    lines.append(f"  {workload} cycles/s vs {peer}: not measured")
                    continue
                ratio = ours.cycles_per_second / theirs.cycles_per_second
                median = ours.median_cycles_per_second / theirs.median_cycles_per_second
                cpu = theirs.cpu_per_cycle / ours.cpu_per_cycle
                verdict = "met" if ratio >= target else "MISSED"
                lines.append(
                    f"  {workload} cycles/s vs {peer}: {ratio:.2f}x (goal >= {target}x) {verdict};"
                    f" median {median:.2f}x; CPU {cpu:.2f}x"
                )

        peer, limit = SINGLE_CALLER_GOAL
        ours = self.find("lock", 1, OURS)
        theirs = self.find("lock", 1, peer)
        if ours is None or theirs is None:
            lines.append(f"  1-task time per lock cycle vs {peer}: not measured")
        else:
            ratio = theirs.cycles_per_second / ours.cycles_per_second
            verdict = "met" if ratio <= limit else "MISSED"
            lines.append(
                f"  1-task time per lock cycle vs {peer}: {1e6 / ours.cycles_per_second:.1f} us vs "
                f"{1e6 / theirs.cycles_per_second:.1f} us = {ratio:.2f}x (goal <= {limit}x) "
                f"{verdict}"
            )

        lines.append("")
        lines.append(f"client CPU per cycle at {GOAL_TASKS} tasks, in microseconds (this process):")
        clients = _ordered_clients(self.measurements)
        lines.append(f"{'':>16}" + "".join(f"{client:>16}" for client in clients))
        for workload, title in _ordered_workloads(self.measurements):
            cells = []
            for client in clients:
                measurement = self.find(workload, GOAL_TASKS, client)
                cells.append(
                    "-" if measurement is None else f"{measurement.cpu_per_cycle * 1e6:.1f}"
                )
            lines.append(f"{title:>16}" + "".join(f"{cell:>16}" for cell in cells))
        return lines


def memory_lines(memory: dict[str, dict[str, Any]]) -> list[str]:
    """Describe the stopped-server memory probe's figures, one block per client."""
    mib = 1024 * 1024
    lines = []
    for client, result in memory.items():
        commands = result["commands"]
        growth = result["peak_rss"] - result["rss_before"]
        lines.append(f"{client}: {commands:,} commands issued against a stopped server")
        lines.append(
            f"  {result['written_commands']:,} commands taken into the write path (socket "
            f"or write buffer); {result['waiting_callers']:,} callers wait for it to drain"
        )
        lines.append(
            f"  largest write buffer {result['max_write_buffer'] / mib:.1f} MiB "
            f"(wfe-valkey's high-water mark: {result['high_water'] / mib:.1f} MiB)"
        )
        lines.append(
            f"  peak RSS {result['peak_rss'] / mib:,.0f} MiB, "
            f"{growth / mib:,.0f} MiB above the start: {growth / commands:,.0f} bytes "
            "per caller, its own asyncio task included"
        )
        if "tracemalloc_peak" in result:
            lines.append(f"  tracemalloc peak {result['tracemalloc_peak'] / mib:,.0f} MiB")
    return lines


def machine_description() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cell(rate: float | None, ours: float | None) -> str:
    if rate is None:
        return "-"
    if ours is None:
        return f"{rate:,.0f}"
    return f"{rate:,.0f} ({ours / rate:.2f}x)"


def _ordered_clients(measurements: list[Measurement]) -> list[str]:
    names = list(dict.fromkeys(m.client for m in measurements))
    if OURS in names:
        names.remove(OURS)
        names.insert(0, OURS)
    return names


def _ordered_workloads(measurements: list[Measurement]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((m.workload, m.title) for m in measurements))
