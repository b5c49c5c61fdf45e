"""The demo: several simulated WFE hosts share work through one Valkey.

Each host has its own three providers and several workers. A producer
queues every workflow id, and some of them twice in a row, as WFE does when
an event arrives for a workflow that is already queued. A worker dequeues an
id, takes the workflow's lock, runs the workflow's next step (publishing
Started, StepStarted, StepCompleted and Completed events), queues the id
again while steps remain, and releases the lock. A host that cannot get the
lock puts the id back. A subscriber counts the events on the all-workflows
channel.

The demo then runs three checks and exits non-zero when one fails. Every
workflow ran each step exactly once and completed once. No two workers
were ever inside one workflow's lock at the same time. Every published
event was received.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from .contracts import QueueType
from .embedded import EmbeddedValkey
from .events import (
    Completed,
    LifecycleEvent,
    LifecycleEventType,
    Started,
    StepCompleted,
    StepStarted,
)
from .lifecycle import ValkeyLifecyclePublisher
from .lock import ValkeyLockProvider
from .queue import ValkeyQueueProvider
from .subscriber import LifecycleSubscription, ValkeyLifecycleSubscriber

WORKERS_PER_HOST = 8
DUPLICATE_EVERY = 10
IDLE_POLL_SECONDS = 0.002
PROGRESS_SECONDS = 0.5
EVENT_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class DemoOptions:
    """Settings of one demo run: server, size and output."""

    url: str | None = None
    prefix: str | None = None
    hosts: int = 4
    workflows: int = 3000
    steps: int = 2
    show_progress: bool = True


@dataclass
class Ledger:
    """Record of the simulated hosts' work, kept in-process for the checks.

    `next_step` plays the role of WFE's persistence: the workflow's state,
    read and written only while holding its lock.
    """

    steps: int
    next_step: dict[str, int] = field(default_factory=dict)
    step_runs: Counter[tuple[str, int]] = field(default_factory=Counter)
    completions: Counter[str] = field(default_factory=Counter)
    inside: dict[str, str] = field(default_factory=dict)
    overlaps: list[tuple[str, str, str]] = field(default_factory=list)
    published: int = 0
    lock_acquired: int = 0
    lock_contended: int = 0
    stale_entries: int = 0
    provider_calls: int = 0

    @property
    def completed(self) -> int:
        return len(self.completions)


@dataclass
class Host:
    """One simulated WFE host with its own providers."""

    name: str
    locks: ValkeyLockProvider
    queues: ValkeyQueueProvider
    publisher: ValkeyLifecyclePublisher

    async def close(self) -> None:
        await self.locks.close()
        await self.queues.close()
        await self.publisher.close()


async def run(options: DemoOptions) -> int:
    """Run the demo and print its report; return the exit status."""
    _check_options(options)
    if options.url is not None:
        return await _run_on(options.url, options, "server at " + _shown(options.url))

    server = EmbeddedValkey()
    await asyncio.to_thread(server.start)
    try:
        where = f"embedded valkey-server on 127.0.0.1:{server.port}"
        return await _run_on(server.url, options, where)
    finally:
        await asyncio.to_thread(server.stop)


def _check_options(options: DemoOptions) -> None:
    for name in ("hosts", "workflows", "steps"):
        value = getattr(options, name)
        if value < 1:
            raise ValueError(f"--{name} must be 1 or more, got {value}")


def _shown(url: str) -> str:
    """Return the server address of `url`, without credentials, for printing."""
    from .config import parse_url

    return parse_url(url).address


async def _run_on(url: str, options: DemoOptions, where: str) -> int:
    """Run the simulated hosts against `url` and check the outcome."""
    prefix = options.prefix or f"wfe-demo-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(steps=options.steps)
    ids = [f"wf-{n:06d}" for n in range(options.workflows)]
    print(
        f"wfe-valkey demo: {_count(options.hosts, 'host')} x {WORKERS_PER_HOST} workers, "
        f"{_count(options.workflows, 'workflow')} of {_count(options.steps, 'step')}, "
        f"prefix {prefix!r}, {where}"
    )

    hosts = [await _open_host(f"host-{n}", url, prefix) for n in range(options.hosts)]
    subscriber = await ValkeyLifecycleSubscriber.new(url, prefix)
    subscription = await subscriber.subscribe()
    received: list[int] = [0]
    listener = asyncio.create_task(_count_events(subscription, received))

    try:
        duplicates = await _queue_all(hosts[0].queues, ids)
        print(f"queued {_count(len(ids), 'workflow id')} and {_count(duplicates, 'duplicate')}")
        started = time.perf_counter()
        await _run_hosts(hosts, ledger, options)
        elapsed = time.perf_counter() - started
        await _wait_for_events(received, ledger)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await subscriber.close()
        for host in hosts:
            await host.close()

    _print_summary(ledger, received[0], elapsed, options)
    return _print_checks(ledger, received[0], ids)


async def _open_host(name: str, url: str, prefix: str) -> Host:
    return Host(
        name=name,
        locks=await ValkeyLockProvider.new(url, prefix, client_name=f"demo-{name}-lock"),
        queues=await ValkeyQueueProvider.new(url, prefix, client_name=f"demo-{name}-queue"),
        publisher=await ValkeyLifecyclePublisher.new(
            url, prefix, client_name=f"demo-{name}-lifecycle"
        ),
    )


async def _queue_all(queues: ValkeyQueueProvider, ids: list[str]) -> int:
    """Queue every id, and every tenth one twice in a row; return the duplicates.

    A duplicate right behind its original is likely to be dequeued by another
    worker while the first still holds the workflow's lock.
    """
    entries: list[str] = []
    for index, id in enumerate(ids):
        entries.append(id)
        if index % DUPLICATE_EVERY == 0:
            entries.append(id)
    await queues.queue_work_many(entries, QueueType.WORKFLOW)
    return len(entries) - len(ids)


async def _run_hosts(hosts: list[Host], ledger: Ledger, options: DemoOptions) -> None:
    """Run every worker of every host until all workflows completed."""
    done = asyncio.Event()
    workers = [
        asyncio.create_task(_worker(host, f"{host.name}/w{n}", ledger, done))
        for host in hosts
        for n in range(WORKERS_PER_HOST)
    ]
    progress = asyncio.create_task(_show_progress(ledger, options))
    try:
        while ledger.completed < options.workflows:
            finished, _ = await asyncio.wait(workers, timeout=0.05)
            for task in finished:
                task.result()
        done.set()
        await asyncio.gather(*workers)
    finally:
        done.set()
        progress.cancel()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, progress, return_exceptions=True)


async def _worker(host: Host, worker: str, ledger: Ledger, done: asyncio.Event) -> None:
    """Dequeue, lock, run one step, release; until every workflow completed."""
    while not done.is_set():
        id = await host.queues.dequeue_work(QueueType.WORKFLOW)
        ledger.provider_calls += 1
        if id is None:
            await asyncio.sleep(IDLE_POLL_SECONDS)
            continue

        acquired = await host.locks.acquire_lock(id)
        ledger.provider_calls += 1
        if not acquired:
            ledger.lock_contended += 1
            await host.queues.queue_work(id, QueueType.WORKFLOW)
            ledger.provider_calls += 1
            continue

        ledger.lock_acquired += 1
        try:
            await _run_step(host, worker, id, ledger)
        finally:
            await host.locks.release_lock(id)
            ledger.provider_calls += 1


async def _run_step(host: Host, worker: str, id: str, ledger: Ledger) -> None:
    """Run the workflow's next step while holding its lock."""
    holder = ledger.inside.get(id)
    if holder is not None:
        ledger.overlaps.append((id, holder, worker))
    ledger.inside[id] = worker
    try:
        step = ledger.next_step.get(id, 0)
        if step >= ledger.steps:
            ledger.stale_entries += 1
            return

        if step == 0:
            await _publish(host, ledger, id, Started())
        await _publish(host, ledger, id, StepStarted(step_id=step, step_name=f"step-{step}"))
        ledger.step_runs[(id, step)] += 1
        await _publish(host, ledger, id, StepCompleted(step_id=step, step_name=f"step-{step}"))
        ledger.next_step[id] = step + 1

        if step + 1 == ledger.steps:
            await _publish(host, ledger, id, Completed())
            ledger.completions[id] += 1
        else:
            await host.queues.queue_work(id, QueueType.WORKFLOW)
            ledger.provider_calls += 1
    finally:
        if ledger.inside.get(id) == worker:
            del ledger.inside[id]


async def _publish(host: Host, ledger: Ledger, id: str, event_type: LifecycleEventType) -> None:
    event = LifecycleEvent.new(id, "demo-order", 1, event_type)
    await host.publisher.publish(event)
    ledger.published += 1
    ledger.provider_calls += 1


async def _count_events(subscription: LifecycleSubscription, received: list[int]) -> None:
    async for _ in subscription:
        received[0] += 1


async def _wait_for_events(received: list[int], ledger: Ledger) -> None:
    """Give the subscriber a moment to read the last events."""
    deadline = time.monotonic() + EVENT_WAIT_SECONDS
    while received[0] < ledger.published and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _show_progress(ledger: Ledger, options: DemoOptions) -> None:
    """Print a progress line every half second."""
    if not options.show_progress:
        return
    started = time.perf_counter()
    interactive = sys.stdout.isatty()
    while True:
        await asyncio.sleep(PROGRESS_SECONDS)
        elapsed = time.perf_counter() - started
        line = (
            f"  {ledger.completed:>7,}/{options.workflows:,} workflows completed, "
            f"{ledger.published:,} events, {ledger.provider_calls / elapsed:,.0f} provider calls/s"
        )
        print(f"\r{line}" if interactive else line, end="" if interactive else "\n", flush=True)


def _print_summary(ledger: Ledger, received: int, elapsed: float, options: DemoOptions) -> None:
    if options.show_progress and sys.stdout.isatty():
        print()
    print(
        f"ran {_count(options.workflows, 'workflow')} in {elapsed:.2f} s: "
        f"{options.workflows / elapsed:,.0f} workflows/s, "
        f"{ledger.provider_calls / elapsed:,.0f} provider calls/s"
    )
    print(
        f"  {_count(ledger.lock_acquired, 'lock')} taken, "
        f"{_count(ledger.lock_contended, 'attempt')} found the lock held, "
        f"{_count(ledger.stale_entries, 'duplicate entry', 'duplicate entries')} "
        "found nothing left to run"
    )
    print(
        f"  {_count(ledger.published, 'event')} published, {received:,} received on the all channel"
    )


def _count(number: int, singular: str, plural: str | None = None) -> str:
    """Write a count with thousands separators and the noun in the right number."""
    noun = singular if number == 1 else plural or singular + "s"
    return f"{number:,} {noun}"


def _print_checks(ledger: Ledger, received: int, ids: list[str]) -> int:
    """Print each check as ok or FAILED; return 0 only when all pass."""
    expected_runs = {(id, step) for id in ids for step in range(ledger.steps)}
    twice = [key for key, count in ledger.step_runs.items() if count > 1]
    missing = expected_runs - set(ledger.step_runs)
    completed_twice = [id for id, count in ledger.completions.items() if count > 1]

    checks = [
        (
            not twice and not missing and not completed_twice and ledger.completed == len(ids),
            f"every workflow ran each step exactly once: {len(ledger.step_runs):,} of "
            f"{_count(len(expected_runs), 'step')}, {len(twice):,} ran twice, "
            f"{len(missing):,} missing, {ledger.completed:,} of "
            f"{_count(len(ids), 'workflow')} completed",
        ),
        (
            not ledger.overlaps,
            "never two hosts inside one workflow's lock: "
            f"{_count(len(ledger.overlaps), 'overlap')}",
        ),
        (
            received == ledger.published,
            f"every published event received: {received:,} of {ledger.published:,}",
        ),
    ]

    print("checks:")
    for passed, text in checks:
        print(f"  [{'ok' if passed else 'FAILED'}] {text}")
    failed = sum(1 for passed, _ in checks if not passed)
    if failed:
        print(f"{_count(failed, 'check')} failed")
        return 1
    print("all checks passed")
    return 0
