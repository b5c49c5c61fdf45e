"""Client CPU per cycle with no server: what each layer of wfe_valkey costs.

    python -m benchmarks.layer_cost

A fake transport replies to every command in the next event-loop turn with a
canned reply, so the figures are the client's own CPU time, without the
server's share of the 2 cores or the noise of a real socket. Each workload
runs three ways at 64 tasks: through the providers, through `Connection`
directly, and through the bare loop. The difference between the first two
is the provider layer; between the last two, the connection's features
(timeouts, reconnects, typed errors, write-buffer limit). Each figure is
the best of seven rounds, the three ways taking turns.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from wfe_valkey import QueueType, ValkeyLockProvider, ValkeyQueueProvider
from wfe_valkey.config import parse_url
from wfe_valkey.connection import Connection, State, _Wire

from .bare_loop import BareLoop

CANNED_REPLIES = {
    b"SET": b"+OK\r\n",
    b"EVALSHA": b":1\r\n",
    b"LPUSH": b":1\r\n",
    b"RPOP": b"$1\r\nx\r\n",
}
TASKS = 64
CYCLES_PER_TASK = 2000
ROUNDS = 7


class CannedTransport(asyncio.Transport):
    """Reads the commands written to it and feeds back canned replies."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._reader = hiredis.Reader()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._reader.feed(bytes(data))
        replies = []
        command = self._reader.gets()
        while command is not False:
            replies.append(CANNED_REPLIES[command[0]])
            command = self._reader.gets()
        self._loop.call_soon(self._protocol.data_received, b"".join(replies))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def connected() -> Connection:
    """Return a `Connection` whose socket is a `CannedTransport`."""
    connection = Connection(parse_url("redis://127.0.0.1:1"), "layer-cost")
    wire = _Wire(asyncio.get_running_loop(), connection.settings, connection._on_wire_lost)
    wire.connection_made(CannedTransport(wire))
    connection._wire = wire
    connection.state = State.READY
    return connection


Cycle = Callable[[int], Awaitable[None]]


def provider_cycles(connection: Connection) -> dict[str, Cycle]:
    locks = ValkeyLockProvider(connection, "p")
    queues = ValkeyQueueProvider(connection, "p")

    async def lock(task: int) -> None:
        await locks.acquire_lock(f"r{task}")
        await locks.release_lock(f"r{task}")

    async def queue(task: int) -> None:
        await queues.queue_work("x", QueueType.WORKFLOW)
        await queues.dequeue_work(QueueType.WORKFLOW)

    return {"lock": lock, "queue": queue}


def command_cycles(execute: Callable[..., Awaitable[Any]]) -> dict[str, Cycle]:
    async def lock(task: int) -> None:
        key = f"p:lock:r{task}"
        await execute("SET", key, "token", "NX", "PX", 30000)
        await execute("EVALSHA", "sha", 1, key, "token")

    async def queue(task: int) -> None:
        await execute("LPUSH", "p:queue:workflow", "x")
        await execute("RPOP", "p:queue:workflow")

    return {"lock": lock, "queue": queue}


async def cpu_per_cycle(cycle: Cycle) -> float:
    """Run the cycle on every task; return microseconds of CPU per cycle."""

    async def worker(task: int) -> None:
        for _ in range(CYCLES_PER_TASK):
            await cycle(task)

    started = time.process_time()
    await asyncio.gather(*(worker(task) for task in range(TASKS)))
    return (time.process_time() - started) / (TASKS * CYCLES_PER_TASK) * 1e6


async def main() -> None:
    bare = BareLoop()
    bare.connection_made(CannedTransport(bare))
    ways = {
        "providers": provider_cycles(connected()),
        "connection": command_cycles(connected().execute),
        "bare loop": command_cycles(bare.execute),
    }
    for workload in ("lock", "queue"):
        costs: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(ROUNDS):
            for way, cycles in ways.items():
                gc.collect()
                costs[way].append(await cpu_per_cycle(cycles[workload]))
        best = {way: min(values) for way, values in costs.items()}
        figures = ", ".join(f"{way} {cost:.2f} us" for way, cost in best.items())
        print(f"{workload} cycle at {TASKS} tasks, client CPU per cycle: {figures}")


if __name__ == "__main__":
    asyncio.run(main())
