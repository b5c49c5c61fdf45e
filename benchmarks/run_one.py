"""Run one workload for one client outside pytest, for profilers and quick checks.

    python -m benchmarks.run_one --client wfe-valkey --workload lock --tasks 64 \\
        --cycles 200000

starts a private server (or uses --url), runs a tenth of the cycles as a
warm-up and then all of them, and prints cycles/s and the CPU time this
process spent per cycle. Wrap it in a
profiler to see where the time goes, for example
``pyinstrument -m benchmarks.run_one ...`` or
``py-spy record -o lock.svg -- python -m benchmarks.run_one ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from wfe_valkey.embedded import EmbeddedValkey

from .clients import CLIENTS, OURS_NAME, open_client
from .workloads import WORKLOADS


async def run(
    url: str, client_name: str, workload_name: str, tasks: int, cycles: int
) -> tuple[float, float]:
    """Return the cycles/s and this process's CPU seconds per cycle, after a warm-up."""
    workload = next(w for w in WORKLOADS if w.name == workload_name)
    per_task = max(1, cycles // tasks)
    client = await open_client(client_name, url, f"bench-{uuid.uuid4().hex[:8]}")
    try:
        warm_up = max(1, per_task // 10)
        await workload.prepare(client, warm_up * tasks)
        await workload.run(client, tasks, warm_up)
        await workload.prepare(client, per_task * tasks)
        started = time.perf_counter()
        cpu_started = time.process_time()
        failures = await workload.run(client, tasks, per_task)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await client.close()
    if failures:
        raise SystemExit(f"{failures} cycles failed")
    total = per_task * tasks
    return total / elapsed, cpu / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=sorted(CLIENTS), default=OURS_NAME)
    parser.add_argument("--workload", choices=[w.name for w in WORKLOADS], default="lock")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent asyncio tasks")
    parser.add_argument("--cycles", type=int, default=100_000, help="cycles in the timed run")
    parser.add_argument("--url", help="server to use instead of a private one")
    arguments = parser.parse_args()

    def measure(url: str) -> tuple[float, float]:
        return asyncio.run(
            run(url, arguments.client, arguments.workload, arguments.tasks, arguments.cycles)
        )

    if arguments.url:
        rate, cpu = measure(arguments.url)
    else:
        with EmbeddedValkey() as server:
            rate, cpu = measure(server.url)
    print(
        f"{arguments.client} {arguments.workload} at {arguments.tasks} tasks: "
        f"{rate:,.0f} cycles/s, client CPU {cpu * 1e6:.2f} us per cycle"
    )


if __name__ == "__main__":
    main()
