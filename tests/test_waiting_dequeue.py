"""Waiting dequeues: BRPOP on pooled connections of their own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import valkey

from wfe_valkey import QueueType, ValkeyLockProvider, ValkeyQueueProvider
from wfe_valkey.embedded import EmbeddedValkey
from wfe_valkey.errors import ValkeyConnectionError

# These tests count the server's blocked clients, so each runs on a server
# of its own where no other test blocks a client.


@pytest.fixture
def server_url(private_server: EmbeddedValkey) -> str:
    return private_server.url


@pytest.fixture
def other_host(server_url: str) -> Iterator[valkey.Valkey]:
    client = valkey.Valkey.from_url(server_url)
    yield client
    client.close()


@pytest.fixture
async def waiting(server_url: str, prefix: str) -> AsyncIterator[ValkeyQueueProvider]:
    provider = await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait=10.0)
    yield provider
    await provider.close()


def workflow_key(queues: ValkeyQueueProvider) -> str:
    return f"{queues.prefix}:queue:workflow"


async def wait_for_blocked_clients(other_host: valkey.Valkey, count: int) -> None:
    """Wait until `count` clients of the server are blocked in a pop."""
    async with asyncio.timeout(5):
        while other_host.info("clients")["blocked_clients"] != count:
            await asyncio.sleep(0.005)


async def test_waiting_provider_reports_blocking(waiting: ValkeyQueueProvider) -> None:
    assert waiting.is_dequeue_blocking() is True
    assert waiting.is_dequeue_blocking() is True


async def test_default_provider_reports_polling(server_url: str, prefix: str) -> None:
    async with await ValkeyQueueProvider.new(server_url, prefix) as provider:
        assert provider.is_dequeue_blocking() is False


async def test_empty_queue_gives_none_after_the_wait(server_url: str, prefix: str) -> None:
    provider = await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait=0.2)
    try:
        started = time.monotonic()
        result = await provider.dequeue_work(QueueType.WORKFLOW)
        waited = time.monotonic() - started
    finally:
        await provider.close()

    assert result is None
    assert waited >= 0.15


async def test_id_pushed_during_the_wait_reaches_the_waiter(
    waiting: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    dequeue = asyncio.create_task(waiting.dequeue_work(QueueType.WORKFLOW))
    await wait_for_blocked_clients(other_host, 1)

    other_host.lpush(workflow_key(waiting), "wf-from-rust")

    async with asyncio.timeout(2):
        assert await dequeue == "wf-from-rust"


async def test_waiting_dequeue_keeps_fifo_order(
    waiting: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    for id in ("wf-1", "wf-2", "wf-3"):
        await waiting.queue_work(id, QueueType.WORKFLOW)

    assert await waiting.dequeue_work(QueueType.WORKFLOW) == "wf-1"
    assert await waiting.dequeue_work(QueueType.WORKFLOW) == "wf-2"
    assert await waiting.dequeue_work(QueueType.WORKFLOW) == "wf-3"
    assert other_host.llen(workflow_key(waiting)) == 0


async def test_shared_connection_serves_others_during_a_wait(
    waiting: ValkeyQueueProvider, server_url: str, other_host: valkey.Valkey
) -> None:
    locks = await ValkeyLockProvider.new(server_url, waiting.prefix)
    dequeue = asyncio.create_task(waiting.dequeue_work(QueueType.WORKFLOW))
    await wait_for_blocked_clients(other_host, 1)
    try:
        async with asyncio.timeout(2):
            await waiting.queue_work("event-1", QueueType.EVENT)
            await waiting.queue_work_many(["index-1", "index-2"], QueueType.INDEX)
            taken = await waiting.dequeue_work_many(QueueType.INDEX, 2)
            acquired = await locks.acquire_lock("wf-1")
        still_waiting = not dequeue.done()
    finally:
        await locks.close()

    assert taken == ["index-1", "index-2"]
    assert acquired is True
    assert still_waiting is True
    assert other_host.lrange(f"{waiting.prefix}:queue:event", 0, -1) == [b"event-1"]
    other_host.lpush(workflow_key(waiting), "wf-1")
    async with asyncio.timeout(2):
        assert await dequeue == "wf-1"


async def test_close_ends_the_wait_with_none(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait=30.0)
    dequeue = asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW))
    await wait_for_blocked_clients(other_host, 1)

    async with asyncio.timeout(3):
        await provider.close()
        result = await dequeue

    assert result is None
    assert other_host.info("clients")["blocked_clients"] == 0


async def test_cancelled_wait_puts_a_taken_id_back(
    waiting: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    await waiting.queue_work("wf-0", QueueType.WORKFLOW)
    dequeue = asyncio.create_task(waiting.dequeue_work(QueueType.WORKFLOW))
    assert await dequeue == "wf-0"
    dequeue = asyncio.create_task(waiting.dequeue_work(QueueType.WORKFLOW))
    await wait_for_blocked_clients(other_host, 1)

    other_host.lpush(workflow_key(waiting), "wf-1")
    dequeue.cancel()

    with pytest.raises(asyncio.CancelledError):
        await dequeue
    async with asyncio.timeout(5):
        while other_host.llen(workflow_key(waiting)) != 1:
            await asyncio.sleep(0.005)
    assert other_host.lrange(workflow_key(waiting), 0, -1) == [b"wf-1"]


async def test_cancelled_wait_is_unblocked(
    waiting: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    dequeue = asyncio.create_task(waiting.dequeue_work(QueueType.WORKFLOW))
    await wait_for_blocked_clients(other_host, 1)

    dequeue.cancel()

    await wait_for_blocked_clients(other_host, 0)
    other_host.lpush(workflow_key(waiting), "wf-1")
    assert await waiting.dequeue_work(QueueType.WORKFLOW) == "wf-1"


async def test_full_pool_falls_back_to_one_poll(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ValkeyQueueProvider.new(
        server_url, prefix, dequeue_wait=0.5, dequeue_connections=1
    )
    try:
        first = asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW))
        await wait_for_blocked_clients(other_host, 1)
        await provider.queue_work("event-1", QueueType.EVENT)

        second = await provider.dequeue_work(QueueType.EVENT)
        first_result = await first
    finally:
        await provider.close()

    assert second == "event-1"
    assert first_result is None


async def test_concurrent_waits_use_one_connection_each(
    waiting: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    dequeues = [asyncio.create_task(waiting.dequeue_work(queue_type)) for queue_type in QueueType]
    await wait_for_blocked_clients(other_host, 3)

    names = [client["name"] for client in other_host.client_list()]
    for queue_type in QueueType:
        await waiting.queue_work(f"{queue_type.value}-1", queue_type)
    async with asyncio.timeout(2):
        results = await asyncio.gather(*dequeues)

    assert names.count("wfe-valkey-queue-wait") == 3
    assert results == ["workflow-1", "event-1", "index-1"]


async def test_wait_longer_than_command_timeout(server_url: str, prefix: str) -> None:
    provider = await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait=0.6, timeout=0.2)
    try:
        result = await provider.dequeue_work(QueueType.WORKFLOW)
    finally:
        await provider.close()

    assert result is None


async def test_waiting_works_after_stop_and_start(
    waiting: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    await waiting.stop()
    await waiting.stop()
    await waiting.start()
    await waiting.start()
    await waiting.queue_work("wf-1", QueueType.WORKFLOW)

    assert await waiting.dequeue_work(QueueType.WORKFLOW) == "wf-1"


async def test_new_rejects_zero_dequeue_wait(server_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="dequeue_wait must be a positive number of seconds"):
        await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait=0)


async def test_new_rejects_text_dequeue_wait(server_url: str, prefix: str) -> None:
    with pytest.raises(TypeError, match="dequeue_wait must be seconds as a number, got str"):
        await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait="5")  # type: ignore[arg-type]


async def test_new_rejects_zero_dequeue_connections(server_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="dequeue_connections must be 1 or more, got 0"):
        await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait=1, dequeue_connections=0)


async def test_waiting_dequeue_on_a_cluster(prefix: str) -> None:
    from cluster_fixtures import start_cluster
    from valkey.cluster import ValkeyCluster

    from wfe_valkey.cluster import ClusterConnection

    cluster = start_cluster(primary_count=3)
    try:
        provider = await ValkeyQueueProvider.new(cluster.url, prefix, dequeue_wait=1.0)
        checker = ValkeyCluster(host="127.0.0.1", port=cluster.primaries[0].port)
        try:
            dequeue = asyncio.create_task(provider.dequeue_work(QueueType.EVENT))
            await asyncio.sleep(0.2)
            checker.lpush(f"{prefix}:queue:event", "event-1")
            async with asyncio.timeout(2):
                taken = await dequeue
            waiting_kind = type(provider._waiting._idle[0])  # type: ignore[union-attr]
            unblocks = provider._waiting.can_unblock  # type: ignore[union-attr]
            await provider.queue_work("wf-1", QueueType.WORKFLOW)
            second = await provider.dequeue_work(QueueType.WORKFLOW)
        finally:
            checker.close()
            await provider.close()
    finally:
        cluster.stop()

    assert taken == "event-1"
    assert second == "wf-1"
    assert waiting_kind is ClusterConnection
    assert unblocks is False


async def clients_named(other_host: valkey.Valkey, name: str, count: int) -> int:
    """Return how many clients are named `name`, waiting up to 2 s for it to be `count`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while True:
        found = [client["name"] for client in other_host.client_list()].count(name)
        if found == count or loop.time() >= deadline:
            return found
        await asyncio.sleep(0.01)


async def test_close_after_cancel_closes_connections(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ValkeyQueueProvider.new(server_url, prefix, dequeue_wait=2.0)
    dequeue = asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW))
    await wait_for_blocked_clients(other_host, 1)

    dequeue.cancel()
    await provider.close()

    with pytest.raises(asyncio.CancelledError):
        await dequeue
    assert await clients_named(other_host, "wfe-valkey-queue-wait", 0) == 0
    assert await clients_named(other_host, "wfe-valkey-queue", 0) == 0


async def test_close_gives_none_to_queued_dequeues(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ValkeyQueueProvider.new(
        server_url, prefix, dequeue_wait=5.0, dequeue_connections=1
    )
    dequeues = [asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW)) for _ in range(3)]
    await wait_for_blocked_clients(other_host, 1)

    async with asyncio.timeout(3):
        await provider.close()
        results = await asyncio.gather(*dequeues, return_exceptions=True)

    assert results == [None, None, None]


async def test_waiting_dequeue_on_a_stopped_provider_raises(
    waiting: ValkeyQueueProvider,
) -> None:
    await waiting.stop()

    with pytest.raises(ValkeyConnectionError, match=r"queue provider for .+ is closed"):
        await waiting.dequeue_work(QueueType.WORKFLOW)
