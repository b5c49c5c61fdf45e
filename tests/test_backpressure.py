"""Backpressure: when the server stops reading, memory stays bounded and callers wait.

The server is frozen with SIGSTOP (or a proxy stops reading), then 200,000
commands are attempted at once. The bytes held for the socket must stay
below its high-water mark plus two early-flush batches. Callers beyond
that wait for the buffer to drain, or time out, rather than pile up in
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import valkey
from proxy import DelayingProxy

from wfe_valkey import QueueType, ValkeyQueueProvider, ValkeyTimeoutError
from wfe_valkey.connection import EARLY_FLUSH_BYTES, WRITE_HIGH_WATER, Connection
from wfe_valkey.embedded import EmbeddedValkey

Freeze = Callable[[EmbeddedValkey], contextlib.AbstractContextManager[int]]

ATTEMPTS = 100_000
ID_PADDING = "x" * 300

# The bound on bytes this process holds for one socket: the transport's
# buffer up to the high-water mark, plus the last batch written before
# writing paused, plus the commands not yet flushed.
BOUND = WRITE_HIGH_WATER + 2 * EARLY_FLUSH_BYTES


def work_id(number: int, padding: str = ID_PADDING) -> str:
    return f"id-{number:06d}-{padding}"


class BufferWatch:
    """Samples a connection's buffered bytes every millisecond and keeps the maximum."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.max_buffered = 0
        self._task = asyncio.ensure_future(self._sample())

    def buffered(self) -> int:
        wire = self.connection._wire
        assert wire is not None and wire._transport is not None
        unsent = sum(len(payload) for payload in wire._buffer)
        return wire._transport.get_write_buffer_size() + unsent

    async def _sample(self) -> None:
        while True:
            self.max_buffered = max(self.max_buffered, self.buffered())
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        self.max_buffered = max(self.max_buffered, self.buffered())
        self._task.cancel()


async def test_frozen_server_bounds_the_write_buffer(
    private_server: EmbeddedValkey, freeze: Freeze, prefix: str
) -> None:
    queues = await ValkeyQueueProvider.new(private_server.url, prefix, timeout=30)
    connection = queues._connection

    with freeze(private_server):
        watch = BufferWatch(connection)
        calls = [
            asyncio.ensure_future(queues.queue_work(work_id(n), QueueType.WORKFLOW))
            for n in range(ATTEMPTS)
        ]
        await asyncio.sleep(1.0)
        assert connection._wire is not None
        admitted = connection._wire.pending_count
        waiting = sum(1 for call in calls if not call.done())
        watch.stop()

    print(
        f"\nserver frozen, {ATTEMPTS} commands attempted: {admitted} admitted to the socket, "
        f"{ATTEMPTS - admitted} callers waiting, max {watch.max_buffered} bytes buffered "
        f"in the process (bound {BOUND})"
    )
    assert watch.max_buffered <= BOUND
    assert waiting == ATTEMPTS
    assert admitted < ATTEMPTS // 2
    await asyncio.gather(*calls)
    with valkey.Valkey(port=private_server.port) as checker:
        key = queues.queue_key(QueueType.WORKFLOW)
        assert checker.llen(key) == ATTEMPTS
        assert checker.lindex(key, -1) == work_id(0).encode()
        assert checker.lindex(key, 0) == work_id(ATTEMPTS - 1).encode()
    await queues.close()


async def test_waiters_time_out_if_never_drained(
    private_server: EmbeddedValkey,
    start_proxy: Callable[..., Awaitable[DelayingProxy]],
    prefix: str,
) -> None:
    proxy = await start_proxy(private_server.port)
    queues = await ValkeyQueueProvider.new(proxy.url, prefix, timeout=1.0)
    proxy.stop_reading()

    results = await asyncio.gather(
        *(queues.queue_work(work_id(n, "y" * 1000), QueueType.EVENT) for n in range(20_000)),
        return_exceptions=True,
    )

    # The proxy forwards the one chunk it was already reading when it
    # stopped, so the first commands may complete.
    timed_out = [result for result in results if isinstance(result, ValkeyTimeoutError)]
    completed = [result for result in results if result is None]
    assert len(timed_out) + len(completed) == len(results)
    assert len(timed_out) >= 0.9 * len(results)
    address = f"127.0.0.1:{proxy.port}"
    messages = {str(result).split(" within")[0] for result in timed_out}
    print(
        f"\nproxy not reading: {len(timed_out)} timed out, {len(completed)} completed, "
        f"messages: {sorted(messages)}"
    )
    assert messages <= {
        f"no reply from {address}",
        f"{address} did not read the commands already sent",
        f"{address} not reachable",
    }
    proxy.resume_reading()
    await queues.queue_work("after", QueueType.EVENT)

    # Commands that timed out after they were written may still reach the
    # server once the proxy reads again, so "after" need not be the newest.
    with valkey.Valkey(port=private_server.port) as checker:
        assert checker.lpos(queues.queue_key(QueueType.EVENT), "after") is not None
    await queues.close()


async def test_buffer_drains_and_every_command_arrives_once(
    private_server: EmbeddedValkey,
    start_proxy: Callable[..., Awaitable[DelayingProxy]],
    prefix: str,
) -> None:
    proxy = await start_proxy(private_server.port)
    queues = await ValkeyQueueProvider.new(proxy.url, prefix, timeout=30)
    proxy.stop_reading()

    calls = [
        asyncio.ensure_future(queues.queue_work(work_id(n), QueueType.INDEX))
        for n in range(ATTEMPTS // 4)
    ]
    await asyncio.sleep(0.5)
    proxy.resume_reading()
    await asyncio.gather(*calls)

    with valkey.Valkey(port=private_server.port) as checker:
        key = queues.queue_key(QueueType.INDEX)
        ids = checker.lrange(key, 0, -1)
    assert len(ids) == ATTEMPTS // 4
    assert len(set(ids)) == ATTEMPTS // 4
    await queues.close()
