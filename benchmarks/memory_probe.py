"""Memory of one client while a million commands wait on a stopped server.

    python -m benchmarks.memory_probe --commands 1000000 [--client wfe-valkey]

starts a private valkey-server, connects one client, stops the server with
SIGSTOP and then issues `--commands` LPUSH commands from as many asyncio
tasks, 1,000 new tasks per event-loop turn. The stopped server sends no
reply, so every task stays waiting. The probe prints, as one JSON object:

- how many commands the client took into its write path (the socket and
  the write buffer), and how many callers are still waiting to write;
- the client's largest write buffer seen (the transport's buffer plus the
  commands not yet handed to it);
- the process's resident memory before and at the end (Linux VmRSS and
  VmHWM), and with ``--tracemalloc`` the peak of Python allocations.

Each client runs in a process of its own, so that one's memory does not
count against another's. The server is killed at the end, and the process
leaves without unwinding the waiting tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from wfe_valkey import QueueType, ValkeyQueueProvider
from wfe_valkey.connection import WRITE_HIGH_WATER
from wfe_valkey.embedded import EmbeddedValkey

TASKS_PER_TURN = 1000
QUEUE_ID = "work-0123456789"


def memory_status() -> dict[str, int]:
    """Return this process's VmRSS and VmHWM in bytes (Linux only)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


class OursUnderTest:
    """wfe_valkey's queue provider, with its write buffer read from the wire."""

    async def connect(self, url: str) -> None:
        # The command timeout is raised so that no caller gives up while the
        # probe is still issuing commands.
        self.queues = await ValkeyQueueProvider.new(url, "memory", timeout=600)

    async def issue(self) -> Any:
        await self.queues.queue_work(QUEUE_ID, QueueType.WORKFLOW)

    def buffered_bytes(self) -> int:
        # The probe reads the connection's private state, because no public
        # attribute gives the bytes waiting in the socket's write buffer.
        wire = self.queues._connection._wire
        assert wire is not None and wire._transport is not None
        return wire._transport.get_write_buffer_size() + sum(map(len, wire._buffer))

    def written(self) -> int:
        wire = self.queues._connection._wire
        assert wire is not None
        return wire.pending_count


class AioRedisUnderTest:
    """aioredis 1.3.1 on one connection: it has no write-buffer limit."""

    async def connect(self, url: str) -> None:
        import aioredis

        self.client = await aioredis.create_redis(url)

    async def issue(self) -> Any:
        await self.client.lpush("memory:queue:workflow", QUEUE_ID)

    def buffered_bytes(self) -> int:
        transport = self.client.connection._writer.transport
        return int(transport.get_write_buffer_size())

    def written(self) -> int:
        return len(self.client.connection._waiters)


CLIENTS = {"wfe-valkey": OursUnderTest, "aioredis-1.3.1": AioRedisUnderTest}


async def probe(url: str, server_pid: int, client_name: str, commands: int) -> dict[str, Any]:
    client = CLIENTS[client_name]()
    await client.connect(url)
    before = memory_status()
    os.kill(server_pid, signal.SIGSTOP)

    started = time.perf_counter()
    tasks = []
    max_buffered = 0
    issued = 0
    while issued < commands:
        batch = min(TASKS_PER_TURN, commands - issued)
        tasks.extend(asyncio.ensure_future(client.issue()) for _ in range(batch))
        issued += batch
        await asyncio.sleep(0)
        max_buffered = max(max_buffered, client.buffered_bytes())
    for _ in range(10):
        await asyncio.sleep(0.01)
        max_buffered = max(max_buffered, client.buffered_bytes())
    elapsed = time.perf_counter() - started

    written = client.written()
    after = memory_status()
    failed = sum(1 for task in tasks if task.done())
    return {
        "client": client_name,
        "commands": commands,
        "written_commands": written,
        "waiting_callers": commands - written - failed,
        "failed_callers": failed,
        "max_write_buffer": max_buffered,
        "high_water": WRITE_HIGH_WATER,
        "rss_before": before["VmRSS"],
        "rss_after": after["VmRSS"],
        "peak_rss": after["VmHWM"],
        "seconds_to_issue": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--client", choices=sorted(CLIENTS), default="wfe-valkey")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also report the peak of Python allocations"
    )
    arguments = parser.parse_args()

    server = EmbeddedValkey()
    server.start()
    assert server._process is not None
    server_pid = server._process.pid
    try:
        if arguments.tracemalloc:
            tracemalloc.start()
        # The loop is left open: closing it would cancel every waiting task first.
        loop = asyncio.new_event_loop()
        result = loop.run_until_complete(
            probe(server.url, server_pid, arguments.client, arguments.commands)
        )
        if arguments.tracemalloc:
            result["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    finally:
        os.kill(server_pid, signal.SIGKILL)
        os.kill(server_pid, signal.SIGCONT)
        server.stop()
    print(json.dumps(result))
    sys.stdout.flush()
    # Unwinding a million waiting tasks takes longer than the probe itself.
    os._exit(0)


if __name__ == "__main__":
    main()
