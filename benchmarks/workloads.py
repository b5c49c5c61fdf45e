"""The timed workloads: how many cycles, spread over how many tasks.

A round runs `cycles` cycles of one workload, split evenly over N asyncio
tasks that share one client object. It returns the number of cycles that
did not do their work: a lock not acquired, an empty dequeue, a short batch.
A correct client returns 0, and the benchmarks check that.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wfe_valkey import LifecycleEvent

from .clients import DEFINITION_ID, STARTED, BenchClient

CONCURRENCY = (1, 16, 64, 256)
BATCH_SIZE = 100

Worker = Callable[[BenchClient, int, int], Awaitable[int]]


async def lock_worker(client: BenchClient, index: int, count: int) -> int:
    resource = f"resource-{index}"
    failures = 0
    for _ in range(count):
        if not await client.lock_cycle(resource):
            failures += 1
    return failures


async def queue_worker(client: BenchClient, index: int, count: int) -> int:
    id = f"work-{index}"
    failures = 0
    for _ in range(count):
        if await client.queue_cycle(id) is None:
            failures += 1
    return failures


async def publish_worker(client: BenchClient, index: int, count: int) -> int:
    event = LifecycleEvent.new(f"workflow-{index}", DEFINITION_ID, 1, STARTED)
    for _ in range(count):
        await client.publish(event)
    return 0


async def host_worker(client: BenchClient, index: int, count: int) -> int:
    failures = 0
    for _ in range(count):
        if not await client.host_cycle():
            failures += 1
    return failures


async def batch_worker(client: BenchClient, index: int, count: int) -> int:
    ids = [f"work-{index}-{position}" for position in range(BATCH_SIZE)]
    failures = 0
    for _ in range(count):
        if await client.batch_cycle(ids) != BATCH_SIZE:
            failures += 1
    return failures


@dataclass(frozen=True)
class Workload:
    """One kind of cycle, and how many of them make a round."""

    name: str
    title: str
    worker: Worker
    cycles: int
    # Commands each cycle sends, and ids each cycle moves (batch only).
    commands_per_cycle: int
    ids_per_cycle: int = 0
    # The host cycle needs one queued workflow id per cycle before the round.
    fills_queue: bool = False

    def cycles_per_task(self, tasks: int, scale: float) -> int:
        """Cycles for each of `tasks` tasks; one task runs a quarter of the cycles."""
        cycles = self.cycles * scale
        if tasks == 1:
            cycles /= 4
        return max(1, math.ceil(cycles / tasks))

    async def prepare(self, client: BenchClient, total: int) -> None:
        """Do the untimed work a round needs first."""
        if self.fills_queue:
            ids = [f"workflow-{position}" for position in range(total)]
            for start in range(0, total, 1000):
                await client.fill_queue(ids[start : start + 1000])

    async def run(self, client: BenchClient, tasks: int, per_task: int) -> int:
        """Run `tasks` tasks of `per_task` cycles; return the failed cycles.

        When one task raises, the others are cancelled before this returns,
        so that none of them runs on into the next client's round.
        """
        async with asyncio.TaskGroup() as group:
            runs = [
                group.create_task(self.worker(client, index, per_task)) for index in range(tasks)
            ]
        return sum(run.result() for run in runs)


LOCK = Workload("lock", "lock cycle", lock_worker, 20_000, commands_per_cycle=2)
QUEUE = Workload("queue", "queue cycle", queue_worker, 20_000, commands_per_cycle=2)
PUBLISH = Workload("publish", "publish", publish_worker, 20_000, commands_per_cycle=2)
HOST = Workload("host", "WFE host loop", host_worker, 5_000, commands_per_cycle=7, fills_queue=True)
BATCH = Workload(
    "batch",
    f"batch of {BATCH_SIZE} ids",
    batch_worker,
    2_000,
    commands_per_cycle=2,
    ids_per_cycle=BATCH_SIZE,
)
WORKLOADS = (LOCK, QUEUE, PUBLISH, HOST, BATCH)
