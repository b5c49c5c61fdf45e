"""Mutual exclusion under stress, and what happens to a holder that overruns.

Several lock providers, each with its own connection like separate hosts,
contend for a few resources. Every worker that acquires a lock marks the
resource in an in-process record, holds it for a random time shorter than
the lock duration, and clears the mark before it releases. Any acquire
that finds the mark already set is an overlap. Run with -s to see the counts.
"""

from __future__ import annotations

import asyncio
import random
import time

import valkey

from wfe_valkey import ValkeyLockProvider

PROVIDERS = 4
WORKERS_PER_PROVIDER = 12
RESOURCES = 16
TARGET_ACQUISITIONS = 50_000
TIME_LIMIT = 15.0
MAX_HOLD = 0.002
LOCK_DURATION = 2.0


class InsideRecord:
    """The worker inside each resource, as the workers themselves record it."""

    def __init__(self) -> None:
        self.holder: dict[str, str] = {}
        self.acquisitions = 0
        self.attempts = 0
        self.overlaps = 0

    def enter(self, resource: str, worker: str) -> None:
        self.acquisitions += 1
        if resource in self.holder:
            self.overlaps += 1
        self.holder[resource] = worker

    def leave(self, resource: str, worker: str) -> None:
        if self.holder.get(resource) != worker:
            self.overlaps += 1
            return
        del self.holder[resource]


async def contend(
    locks: ValkeyLockProvider, worker: str, record: InsideRecord, chooser: random.Random
) -> None:
    """Acquire random resources until the target count or the time limit is reached."""
    deadline = time.monotonic() + TIME_LIMIT
    while record.acquisitions < TARGET_ACQUISITIONS and time.monotonic() < deadline:
        resource = f"resource-{chooser.randrange(RESOURCES)}"
        record.attempts += 1
        if not await locks.acquire_lock(resource):
            continue
        record.enter(resource, worker)
        await asyncio.sleep(chooser.uniform(0.0, MAX_HOLD))
        record.leave(resource, worker)
        await locks.release_lock(resource)


async def test_no_two_holders_overlap_under_contention(
    server_url: str, other_host: valkey.Valkey, prefix: str
) -> None:
    providers = [
        (await ValkeyLockProvider.new(server_url, prefix)).with_lock_duration(LOCK_DURATION)
        for _ in range(PROVIDERS)
    ]
    record = InsideRecord()
    chooser = random.Random(7)
    started = time.monotonic()

    await asyncio.gather(
        *(
            contend(locks, f"host-{host}/worker-{worker}", record, chooser)
            for host, locks in enumerate(providers)
            for worker in range(WORKERS_PER_PROVIDER)
        )
    )

    elapsed = time.monotonic() - started
    print(
        f"\nmutual exclusion: {record.acquisitions} acquisitions in {record.attempts} attempts "
        f"by {PROVIDERS} hosts x {WORKERS_PER_PROVIDER} workers on {RESOURCES} resources "
        f"in {elapsed:.1f} s; overlaps: {record.overlaps}"
    )
    assert record.overlaps == 0
    assert record.acquisitions >= 20_000
    assert record.holder == {}
    assert other_host.keys(f"{prefix}:lock:*") == []
    for locks in providers:
        await locks.close()


async def test_overrunning_holder_loses_its_lock(
    server_url: str, other_host: valkey.Valkey, prefix: str
) -> None:
    slow = (await ValkeyLockProvider.new(server_url, prefix)).with_lock_duration(0.2)
    fast = await ValkeyLockProvider.new(server_url, prefix)
    key = f"{prefix}:lock:wf-1"

    assert await slow.acquire_lock("wf-1") is True
    assert await fast.acquire_lock("wf-1") is False
    await asyncio.sleep(0.35)
    assert await fast.acquire_lock("wf-1") is True
    await slow.release_lock("wf-1")

    assert other_host.get(key) == fast.token.encode()
    assert await slow.acquire_lock("wf-1") is False
    await fast.release_lock("wf-1")
    assert other_host.exists(key) == 0
    await slow.close()
    await fast.close()
