"""Cycles per second of each workload, for us and each installed peer.

Each test times one workload at one concurrency for every client, with the
clients' rounds interleaved: before each of our rounds (timed by
pytest-benchmark) every peer runs one round (timed here), in an order that
rotates from round to round. A burst of other work on the machine then
slows a round of each client alike instead of all rounds of one client,
and the best round of each client is compared. The CPU time this process
spends per cycle (all its threads) is kept too: it is the client's own
cost, and other work on the machine moves it less than the wall time. A peer whose library is not
installed is named in the summary; a peer that fails at some concurrency
(redis-py's default pool opens at most 100 connections) is named with its error.
"""

from __future__ import annotations

import asyncio
import importlib
import statistics
import time
import uuid
from typing import Any

import pytest

from .clients import CLIENTS, OURS_NAME, BenchClient, open_client
from .report import Measurement, ResultsBook
from .workloads import BATCH, CONCURRENCY, HOST, LOCK, PUBLISH, QUEUE, Workload

ROUNDS = 5

CASES = [pytest.param(tasks, id=f"{tasks}-tasks") for tasks in CONCURRENCY]


def installed_clients(book: ResultsBook) -> list[str]:
    """Return the clients whose library imports; note the peers that do not."""
    names = []
    for name, client_class in CLIENTS.items():
        try:
            importlib.import_module(client_class.module)
        except ImportError as exc:
            if name == OURS_NAME:
                raise
            book.missing_peers[name] = f"{client_class.module} does not import ({exc})"
            continue
        names.append(name)
    return names


class Session:
    """The open clients of one test, all on one event loop."""

    def __init__(self, runner: asyncio.Runner, workload: Workload, tasks: int) -> None:
        self.runner = runner
        self.workload = workload
        self.tasks = tasks
        self.clients: dict[str, BenchClient] = {}

    def open(self, names: list[str], url: str) -> None:
        for name in names:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            self.clients[name] = self.runner.run(open_client(name, url, prefix))

    def close(self) -> None:
        for client in self.clients.values():
            self.runner.run(client.close())

    def prepare(self, name: str, cycles: int) -> None:
        self.runner.run(self.workload.prepare(self.clients[name], cycles))

    def run(self, name: str, per_task: int) -> int:
        """Run one round of `name`; return its failed cycles."""
        return self.runner.run(self.workload.run(self.clients[name], self.tasks, per_task))

    def warm_up(self, name: str, per_task: int, book: ResultsBook) -> bool:
        """Run a short round; a peer that raises is dropped and its error noted."""
        self.prepare(name, per_task * self.tasks)
        try:
            self.run(name, per_task)
        except Exception as exc:
            if name == OURS_NAME:
                raise
            if isinstance(exc, ExceptionGroup):
                exc = exc.exceptions[0]
            case = f"{self.workload.title}, {self.tasks} tasks, {name}"
            book.peer_errors[case] = f"{type(exc).__name__}: {exc}"
            self.runner.run(self.clients.pop(name).close())
            return False
        return True


def measure(
    benchmark: Any,
    book: ResultsBook,
    server_url: str,
    scale: float,
    workload: Workload,
    tasks: int,
) -> None:
    """Time ROUNDS interleaved rounds of every client and record the figures."""
    per_task = workload.cycles_per_task(tasks, scale)
    total = per_task * tasks
    names = installed_clients(book)
    peer_seconds: dict[str, list[float]] = {}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in names}
    failures: dict[str, int] = dict.fromkeys(names, 0)
    rounds_done = 0

    with asyncio.Runner() as runner:
        session = Session(runner, workload, tasks)
        try:
            session.open(names, server_url)
            for name in names:
                if session.warm_up(name, max(1, per_task // 10), book) and name != OURS_NAME:
                    peer_seconds[name] = []

            def run_peers() -> None:
                nonlocal rounds_done
                peers = list(peer_seconds)
                shift = rounds_done % len(peers) if peers else 0
                for name in peers[shift:] + peers[:shift]:
                    session.prepare(name, total)
                    started = time.perf_counter()
                    cpu_started = time.process_time()
                    failures[name] += session.run(name, per_task)
                    cpu_seconds[name].append(time.process_time() - cpu_started)
                    peer_seconds[name].append(time.perf_counter() - started)
                rounds_done += 1
                session.prepare(OURS_NAME, total)

            def run_ours() -> None:
                cpu_started = time.process_time()
                failures[OURS_NAME] += session.run(OURS_NAME, per_task)
                cpu_seconds[OURS_NAME].append(time.process_time() - cpu_started)

            benchmark.group = workload.title
            benchmark.pedantic(run_ours, setup=run_peers, rounds=ROUNDS, iterations=1)
        finally:
            session.close()

    assert failures == dict.fromkeys(names, 0)

    stats = benchmark.stats.stats
    seconds = {OURS_NAME: (stats.min, stats.median)}
    for name, times in peer_seconds.items():
        seconds[name] = (min(times), statistics.median(times))
    rates = {}
    for name, (best, median) in seconds.items():
        measurement = Measurement(
            workload=workload.name,
            title=workload.title,
            tasks=tasks,
            client=name,
            cycles=total,
            ids_per_cycle=workload.ids_per_cycle,
            best_seconds=best,
            median_seconds=median,
            cpu_seconds=min(cpu_seconds[name]),
        )
        book.add(measurement)
        rates[name] = round(measurement.cycles_per_second)

    benchmark.extra_info.update(
        workload=workload.name,
        tasks=tasks,
        cycles=total,
        commands_per_cycle=workload.commands_per_cycle,
        ids_per_cycle=workload.ids_per_cycle,
        cycles_per_second=rates,
        ops_per_second={name: rate * workload.commands_per_cycle for name, rate in rates.items()},
    )


@pytest.mark.parametrize("tasks", CASES)
def test_lock_cycle(
    benchmark: Any, book: ResultsBook, server_url: str, bench_scale: float, tasks: int
) -> None:
    measure(benchmark, book, server_url, bench_scale, LOCK, tasks)


@pytest.mark.parametrize("tasks", CASES)
def test_queue_cycle(
    benchmark: Any, book: ResultsBook, server_url: str, bench_scale: float, tasks: int
) -> None:
    measure(benchmark, book, server_url, bench_scale, QUEUE, tasks)


@pytest.mark.parametrize("tasks", CASES)
def test_publish(
    benchmark: Any, book: ResultsBook, server_url: str, bench_scale: float, tasks: int
) -> None:
    measure(benchmark, book, server_url, bench_scale, PUBLISH, tasks)


@pytest.mark.parametrize("tasks", CASES)
def test_host_loop(
    benchmark: Any, book: ResultsBook, server_url: str, bench_scale: float, tasks: int
) -> None:
    measure(benchmark, book, server_url, bench_scale, HOST, tasks)


@pytest.mark.parametrize("tasks", CASES)
def test_queue_batch(
    benchmark: Any, book: ResultsBook, server_url: str, bench_scale: float, tasks: int
) -> None:
    measure(benchmark, book, server_url, bench_scale, BATCH, tasks)
