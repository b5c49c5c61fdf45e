"""Cycles per second of each workload, for us and each installed peer.

Each test times one workload at one concurrency for one client. The
clients of one workload and concurrency run one after another, so their
ratios are taken minutes apart at most. A peer whose library is not
installed is skipped and named in the summary.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from typing import Any

import pytest

from .clients import CLIENTS, OURS_NAME, open_client
from .report import Measurement, ResultsBook
from .workloads import BATCH, CONCURRENCY, HOST, LOCK, PUBLISH, QUEUE, Workload

ROUNDS = 5

CASES = [
    pytest.param(tasks, client, id=f"{tasks}-tasks-{client}")
    for tasks in CONCURRENCY
    for client in CLIENTS
]


def require_client(name: str, book: ResultsBook) -> None:
    """Skip a peer whose library does not import; our own client must import."""
    if name == OURS_NAME:
        return
    module = CLIENTS[name].module
    try:
        importlib.import_module(module)
    except ImportError as exc:
        book.missing_peers[name] = f"{module} does not import ({exc})"
    pytest.importorskip(module)


def measure(
    benchmark: Any,
    book: ResultsBook,
    server_url: str,
    scale: float,
    workload: Workload,
    tasks: int,
    client_name: str,
) -> None:
    """Time ROUNDS rounds of `workload` after a warm-up, and record the figures."""
    require_client(client_name, book)
    per_task = workload.cycles_per_task(tasks, scale)
    total = per_task * tasks
    warm_up_per_task = max(1, per_task // 10)
    failures: list[int] = []

    with asyncio.Runner() as runner:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        client = runner.run(open_client(client_name, server_url, prefix))
        try:
            runner.run(workload.prepare(client, warm_up_per_task * tasks))
            try:
                runner.run(workload.run(client, tasks, warm_up_per_task))
            except Exception as exc:
                if client_name == OURS_NAME:
                    raise
                # A peer that cannot run this case is a result, not a broken benchmark.
                reason = f"{type(exc).__name__}: {exc}"
                book.peer_errors[f"{workload.title}, {tasks} tasks, {client_name}"] = reason
                pytest.xfail(f"{client_name} fails at {tasks} tasks: {reason}")

            def prepare() -> None:
                runner.run(workload.prepare(client, total))

            def one_round() -> None:
                failures.append(runner.run(workload.run(client, tasks, per_task)))

            benchmark.group = f"{workload.title}, {tasks} tasks"
            benchmark.pedantic(one_round, setup=prepare, rounds=ROUNDS, iterations=1)
        finally:
            runner.run(client.close())

    assert failures == [0] * ROUNDS

    stats = benchmark.stats.stats
    measurement = Measurement(
        workload=workload.name,
        title=workload.title,
        tasks=tasks,
        client=client_name,
        cycles=total,
        ids_per_cycle=workload.ids_per_cycle,
        best_seconds=stats.min,
        median_seconds=stats.median,
    )
    book.add(measurement)
    benchmark.extra_info.update(
        workload=workload.name,
        tasks=tasks,
        client=client_name,
        cycles=total,
        commands_per_cycle=workload.commands_per_cycle,
        ids_per_cycle=workload.ids_per_cycle,
        cycles_per_second=round(measurement.cycles_per_second),
        median_cycles_per_second=round(measurement.median_cycles_per_second),
        ops_per_second=round(measurement.cycles_per_second * workload.commands_per_cycle),
    )


@pytest.mark.parametrize(("tasks", "client_name"), CASES)
def test_lock_cycle(
    benchmark: Any,
    book: ResultsBook,
    server_url: str,
    bench_scale: float,
    tasks: int,
    client_name: str,
) -> None:
    measure(benchmark, book, server_url, bench_scale, LOCK, tasks, client_name)


@pytest.mark.parametrize(("tasks", "client_name"), CASES)
def test_queue_cycle(
    benchmark: Any,
    book: ResultsBook,
    server_url: str,
    bench_scale: float,
    tasks: int,
    client_name: str,
) -> None:
    measure(benchmark, book, server_url, bench_scale, QUEUE, tasks, client_name)


@pytest.mark.parametrize(("tasks", "client_name"), CASES)
def test_publish(
    benchmark: Any,
    book: ResultsBook,
    server_url: str,
    bench_scale: float,
    tasks: int,
    client_name: str,
) -> None:
    measure(benchmark, book, server_url, bench_scale, PUBLISH, tasks, client_name)


@pytest.mark.parametrize(("tasks", "client_name"), CASES)
def test_host_loop(
    benchmark: Any,
    book: ResultsBook,
    server_url: str,
    bench_scale: float,
    tasks: int,
    client_name: str,
) -> None:
    measure(benchmark, book, server_url, bench_scale, HOST, tasks, client_name)


@pytest.mark.parametrize(("tasks", "client_name"), CASES)
def test_queue_batch(
    benchmark: Any,
    book: ResultsBook,
    server_url: str,
    bench_scale: float,
    tasks: int,
    client_name: str,
) -> None:
    measure(benchmark, book, server_url, bench_scale, BATCH, tasks, client_name)
