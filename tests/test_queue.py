"""The queue provider: the Rust crate's cases, layout and batch calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import valkey

from wfe_valkey import QueueProvider, QueueType, ValkeyQueueProvider
from wfe_valkey.errors import ValkeyConnectionError


async def test_three_ids_come_back_fifo(queues: ValkeyQueueProvider) -> None:
    for id in ("wf-1", "wf-2", "wf-3"):
        await queues.queue_work(id, QueueType.WORKFLOW)

    assert await queues.dequeue_work(QueueType.WORKFLOW) == "wf-1"
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "wf-2"
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "wf-3"


async def test_empty_queue_gives_none(queues: ValkeyQueueProvider) -> None:
    assert await queues.dequeue_work(QueueType.WORKFLOW) is None


async def test_queue_types_are_independent(queues: ValkeyQueueProvider) -> None:
    await queues.queue_work("workflow-id", QueueType.WORKFLOW)
    await queues.queue_work("event-id", QueueType.EVENT)
    await queues.queue_work("index-id", QueueType.INDEX)

    assert await queues.dequeue_work(QueueType.EVENT) == "event-id"
    assert await queues.dequeue_work(QueueType.EVENT) is None
    assert await queues.dequeue_work(QueueType.INDEX) == "index-id"
    assert await queues.dequeue_work(QueueType.INDEX) is None
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "workflow-id"
    assert await queues.dequeue_work(QueueType.WORKFLOW) is None


async def test_start_and_stop_twice_each(queues: ValkeyQueueProvider) -> None:
    await queues.start()
    await queues.start()
    await queues.stop()
    await queues.stop()
    await queues.start()

    await queues.queue_work("after-restart", QueueType.WORKFLOW)
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "after-restart"


async def test_is_dequeue_blocking_is_false_every_time(queues: ValkeyQueueProvider) -> None:
    assert queues.is_dequeue_blocking() is False
    assert queues.is_dequeue_blocking() is False


async def test_twenty_ids_in_order_then_none(queues: ValkeyQueueProvider) -> None:
    ids = [f"wf-{n}" for n in range(20)]
    for id in ids:
        await queues.queue_work(id, QueueType.WORKFLOW)

    taken = [await queues.dequeue_work(QueueType.WORKFLOW) for _ in range(20)]

    assert taken == ids
    assert await queues.dequeue_work(QueueType.WORKFLOW) is None


async def test_same_id_twice_is_two_entries(queues: ValkeyQueueProvider) -> None:
    await queues.queue_work("wf-1", QueueType.WORKFLOW)
    await queues.queue_work("wf-1", QueueType.WORKFLOW)

    assert await queues.dequeue_work(QueueType.WORKFLOW) == "wf-1"
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "wf-1"
    assert await queues.dequeue_work(QueueType.WORKFLOW) is None


async def test_queue_keys_follow_the_contract(
    queues: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    await queues.queue_work("w", QueueType.WORKFLOW)
    await queues.queue_work("e", QueueType.EVENT)
    await queues.queue_work("i", QueueType.INDEX)

    assert other_host.lrange(f"{queues.prefix}:queue:workflow", 0, -1) == [b"w"]
    assert other_host.lrange(f"{queues.prefix}:queue:event", 0, -1) == [b"e"]
    assert other_host.lrange(f"{queues.prefix}:queue:index", 0, -1) == [b"i"]


async def test_ids_pushed_by_rust_host_dequeue_in_order(
    queues: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    key = f"{queues.prefix}:queue:event"
    other_host.lpush(key, "ev-1")
    other_host.lpush(key, "ev-2")

    assert await queues.dequeue_work(QueueType.EVENT) == "ev-1"
    assert await queues.dequeue_work(QueueType.EVENT) == "ev-2"


async def test_ids_we_queue_reach_rust_host_in_order(
    queues: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    await queues.queue_work("wf-ä", QueueType.WORKFLOW)
    await queues.queue_work("wf-2", QueueType.WORKFLOW)

    key = f"{queues.prefix}:queue:workflow"
    assert other_host.rpop(key) == "wf-ä".encode()
    assert other_host.rpop(key) == b"wf-2"


async def test_queue_work_many_keeps_fifo_order(queues: ValkeyQueueProvider) -> None:
    await queues.queue_work("first", QueueType.WORKFLOW)
    await queues.queue_work_many(["a", "b", "c"], QueueType.WORKFLOW)
    await queues.queue_work("last", QueueType.WORKFLOW)

    taken = [await queues.dequeue_work(QueueType.WORKFLOW) for _ in range(5)]

    assert taken == ["first", "a", "b", "c", "last"]


async def test_dequeue_work_many_returns_oldest_first(queues: ValkeyQueueProvider) -> None:
    await queues.queue_work_many([f"wf-{n}" for n in range(5)], QueueType.INDEX)

    assert await queues.dequeue_work_many(QueueType.INDEX, 3) == ["wf-0", "wf-1", "wf-2"]
    assert await queues.dequeue_work_many(QueueType.INDEX, 3) == ["wf-3", "wf-4"]
    assert await queues.dequeue_work_many(QueueType.INDEX, 3) == []


async def test_queue_work_many_of_nothing_sends_nothing(
    queues: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    await queues.queue_work_many([], QueueType.WORKFLOW)

    assert other_host.exists(f"{queues.prefix}:queue:workflow") == 0


async def test_provider_satisfies_the_protocol(queues: ValkeyQueueProvider) -> None:
    assert isinstance(queues, QueueProvider)


@pytest.fixture
async def named(server_url: str, prefix: str) -> AsyncIterator[ValkeyQueueProvider]:
    """A provider whose connections carry the test's prefix as their client name."""
    provider = await ValkeyQueueProvider.new(server_url, prefix, client_name=prefix)
    yield provider
    await provider.close()


async def connections_named(other_host: valkey.Valkey, name: str, count: int) -> int:
    """Count the server's clients named `name`, waiting up to 2 s for `count`.

    The server drops a closed connection from its list a moment after the
    client closed it.
    """
    for _ in range(200):
        found = [client["name"] for client in other_host.client_list()].count(name)
        if found == count:
            break
        await asyncio.sleep(0.01)
    return found


async def test_concurrent_starts_open_one_connection(
    named: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    await named.stop()

    await asyncio.gather(named.start(), named.start(), named.start())
    opened = await connections_named(other_host, named.prefix, 1)
    await named.stop()

    assert opened == 1
    assert await connections_named(other_host, named.prefix, 0) == 0


async def test_stop_called_after_start_leaves_the_provider_stopped(
    named: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    start = asyncio.create_task(named.start())
    await named.stop()
    await start

    assert await connections_named(other_host, named.prefix, 0) == 0
    with pytest.raises(ValkeyConnectionError, match="is closed"):
        await named.queue_work("wf-1", QueueType.WORKFLOW)


async def test_stop_during_a_start_leaves_the_provider_stopped(
    named: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    await named.stop()
    start = asyncio.create_task(named.start())
    await asyncio.sleep(0)

    await named.stop()
    await start

    assert await connections_named(other_host, named.prefix, 0) == 0
    with pytest.raises(ValkeyConnectionError, match="is closed"):
        await named.queue_work("wf-1", QueueType.WORKFLOW)


async def test_start_called_after_stop_leaves_the_provider_open(
    named: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    stop = asyncio.create_task(named.stop())
    await named.start()
    await stop

    await named.queue_work("wf-1", QueueType.WORKFLOW)
    assert await named.dequeue_work(QueueType.WORKFLOW) == "wf-1"
    assert await connections_named(other_host, named.prefix, 1) == 1
