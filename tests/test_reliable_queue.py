"""Reliable queues: in-flight lists, acknowledgements and recovery after a crash."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
import valkey

from wfe_valkey import QueueType, ReliableQueueProvider

# A host that takes one id and never acknowledges it; the test kills it.
CRASHING_HOST = """
import asyncio, sys
from wfe_valkey import QueueType, ReliableQueueProvider

async def main():
    queues = await ReliableQueueProvider.new(
        sys.argv[1], sys.argv[2], host_id=sys.argv[3], visibility_timeout=1.0
    )
    print(await queues.dequeue_work(QueueType.WORKFLOW), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.fixture
async def reliable(server_url: str, prefix: str) -> AsyncIterator[ReliableQueueProvider]:
    provider = await ReliableQueueProvider.new(server_url, prefix, host_id="host-a")
    yield provider
    await provider.close()


def queue_key(prefix: str) -> str:
    return f"{prefix}:queue:workflow"


def in_flight_key(prefix: str, host_id: str) -> str:
    return f"{prefix}:queue:workflow:inflight:{host_id}"


async def start_crashing_host(
    server_url: str, prefix: str, host_id: str
) -> tuple[asyncio.subprocess.Process, str]:
    """Start a host process that takes one id; return it and the id it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_HOST,
        server_url,
        prefix,
        host_id,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(20):
        line = await process.stdout.readline()
    return process, line.decode().strip()


async def dequeue_within(
    provider: ReliableQueueProvider, seconds: float, queue_type: QueueType = QueueType.WORKFLOW
) -> str | None:
    """Poll `provider` until it gives an id, for up to `seconds`."""
    async with asyncio.timeout(seconds):
        while True:
            id = await provider.dequeue_work(queue_type)
            if id is not None:
                return id
            await asyncio.sleep(0.02)


async def test_dequeue_moves_the_id_in_flight(
    reliable: ReliableQueueProvider, other_host: valkey.Valkey
) -> None:
    await reliable.queue_work("wf-1", QueueType.WORKFLOW)

    assert await reliable.dequeue_work(QueueType.WORKFLOW) == "wf-1"

    assert other_host.llen(queue_key(reliable.prefix)) == 0
    assert other_host.lrange(in_flight_key(reliable.prefix, "host-a"), 0, -1) == [b"wf-1"]


async def test_ack_removes_the_id(
    reliable: ReliableQueueProvider, other_host: valkey.Valkey
) -> None:
    await reliable.queue_work("wf-1", QueueType.WORKFLOW)
    await reliable.dequeue_work(QueueType.WORKFLOW)

    assert await reliable.ack_work("wf-1", QueueType.WORKFLOW) is True

    assert other_host.exists(in_flight_key(reliable.prefix, "host-a")) == 0


async def test_second_ack_is_false(reliable: ReliableQueueProvider) -> None:
    await reliable.queue_work("wf-1", QueueType.WORKFLOW)
    await reliable.dequeue_work(QueueType.WORKFLOW)
    await reliable.ack_work("wf-1", QueueType.WORKFLOW)

    assert await reliable.ack_work("wf-1", QueueType.WORKFLOW) is False


async def test_ack_removes_one_copy_of_a_duplicate(reliable: ReliableQueueProvider) -> None:
    await reliable.queue_work_many(["wf-1", "wf-1"], QueueType.WORKFLOW)
    await reliable.dequeue_work(QueueType.WORKFLOW)
    await reliable.dequeue_work(QueueType.WORKFLOW)

    await reliable.ack_work("wf-1", QueueType.WORKFLOW)

    assert await reliable.in_flight(QueueType.WORKFLOW) == ["wf-1"]


async def test_rust_queued_ids_come_out_fifo(
    reliable: ReliableQueueProvider, other_host: valkey.Valkey
) -> None:
    for id in ("wf-1", "wf-2", "wf-3"):
        other_host.lpush(queue_key(reliable.prefix), id)

    taken = [await reliable.dequeue_work(QueueType.WORKFLOW) for _ in range(4)]

    assert taken == ["wf-1", "wf-2", "wf-3", None]
    assert await reliable.in_flight(QueueType.WORKFLOW) == ["wf-1", "wf-2", "wf-3"]


async def test_queue_work_uses_the_contract_list(
    reliable: ReliableQueueProvider, other_host: valkey.Valkey
) -> None:
    await reliable.queue_work("wf-1", QueueType.EVENT)

    assert other_host.rpop(f"{reliable.prefix}:queue:event") == b"wf-1"


async def test_queue_types_keep_separate_in_flight_lists(
    reliable: ReliableQueueProvider,
) -> None:
    await reliable.queue_work("event-1", QueueType.EVENT)
    await reliable.queue_work("index-1", QueueType.INDEX)

    await reliable.dequeue_work(QueueType.EVENT)
    await reliable.dequeue_work(QueueType.INDEX)

    assert await reliable.in_flight(QueueType.EVENT) == ["event-1"]
    assert await reliable.in_flight(QueueType.INDEX) == ["index-1"]
    assert await reliable.in_flight(QueueType.WORKFLOW) == []


async def test_dequeue_many_tracks_every_id(reliable: ReliableQueueProvider) -> None:
    await reliable.queue_work_many(["wf-1", "wf-2", "wf-3"], QueueType.WORKFLOW)

    taken = await reliable.dequeue_work_many(QueueType.WORKFLOW, 5)

    assert taken == ["wf-1", "wf-2", "wf-3"]
    assert await reliable.in_flight(QueueType.WORKFLOW) == ["wf-1", "wf-2", "wf-3"]


async def test_heartbeat_key_and_host_set(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ReliableQueueProvider.new(
        server_url, prefix, host_id="host-a", visibility_timeout=5.0
    )
    try:
        ttl = other_host.pttl(f"{prefix}:queue:host:host-a")
        members = set(other_host.smembers(f"{prefix}:queue:hosts"))
    finally:
        await provider.close()

    assert 0 < ttl <= 5000
    assert members == {b"host-a"}


async def test_requeue_in_flight_returns_ids_in_order(
    reliable: ReliableQueueProvider,
) -> None:
    await reliable.queue_work_many(["wf-1", "wf-2", "wf-3"], QueueType.WORKFLOW)
    await reliable.dequeue_work(QueueType.WORKFLOW)
    await reliable.dequeue_work(QueueType.WORKFLOW)
    await reliable.queue_work("event-1", QueueType.EVENT)
    await reliable.dequeue_work(QueueType.EVENT)

    assert await reliable.requeue_in_flight() == 3

    taken = [await reliable.dequeue_work(QueueType.WORKFLOW) for _ in range(4)]
    assert taken == ["wf-1", "wf-2", "wf-3", None]
    assert await reliable.dequeue_work(QueueType.EVENT) == "event-1"


async def test_live_host_keeps_its_in_flight_ids(server_url: str, prefix: str) -> None:
    busy = await ReliableQueueProvider.new(
        server_url, prefix, host_id="busy", visibility_timeout=0.5, heartbeat_interval=0.1
    )
    other = await ReliableQueueProvider.new(
        server_url, prefix, host_id="other", visibility_timeout=0.5, heartbeat_interval=0.1
    )
    try:
        await busy.queue_work("wf-1", QueueType.WORKFLOW)
        await busy.dequeue_work(QueueType.WORKFLOW)

        await asyncio.sleep(1.2)
        recovered = await other.recover()
        taken = await other.dequeue_work(QueueType.WORKFLOW)
        kept = await busy.in_flight(QueueType.WORKFLOW)
        acked = await busy.ack_work("wf-1", QueueType.WORKFLOW)
    finally:
        await busy.close()
        await other.close()

    assert recovered == 0
    assert taken is None
    assert kept == ["wf-1"]
    assert acked is True


async def test_stopped_host_ids_return_in_order(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    stopped = await ReliableQueueProvider.new(
        server_url, prefix, host_id="stopped", visibility_timeout=0.3
    )
    await stopped.queue_work_many(["wf-1", "wf-2", "wf-3"], QueueType.WORKFLOW)
    for _ in range(3):
        await stopped.dequeue_work(QueueType.WORKFLOW)
    await stopped.close()
    survivor = await ReliableQueueProvider.new(server_url, prefix, host_id="survivor")
    try:
        async with asyncio.timeout(5):
            while other_host.exists(f"{prefix}:queue:host:stopped"):
                await asyncio.sleep(0.02)

        assert await survivor.recover() == 3
        taken = [await survivor.dequeue_work(QueueType.WORKFLOW) for _ in range(4)]
        assert await survivor.recover() == 0
        members = set(other_host.smembers(f"{prefix}:queue:hosts"))
    finally:
        await survivor.close()

    assert taken == ["wf-1", "wf-2", "wf-3", None]
    assert members == {b"survivor"}
    assert other_host.exists(in_flight_key(prefix, "stopped")) == 0


async def test_killed_host_id_is_delivered_again_once(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    other_host.lpush(queue_key(prefix), "wf-crash")
    process, taken_by_crashed = await start_crashing_host(server_url, prefix, "doomed")
    assert taken_by_crashed == "wf-crash"
    assert other_host.lrange(in_flight_key(prefix, "doomed"), 0, -1) == [b"wf-crash"]

    process.kill()
    await process.wait()

    survivors = [
        await ReliableQueueProvider.new(
            server_url,
            prefix,
            host_id=f"survivor-{n}",
            visibility_timeout=1.0,
            heartbeat_interval=0.1,
        )
        for n in range(2)
    ]
    deliveries: list[tuple[str, str]] = []
    try:

        async def consume(provider: ReliableQueueProvider, seconds: float) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while loop.time() < deadline:
                id = await provider.dequeue_work(QueueType.WORKFLOW)
                if id is None:
                    await asyncio.sleep(0.02)
                    continue
                deliveries.append((provider.host_id, id))
                await provider.ack_work(id, QueueType.WORKFLOW)

        await asyncio.gather(*(consume(provider, 4.0) for provider in survivors))
    finally:
        for provider in survivors:
            await provider.close()

    assert process.returncode == -9
    assert [id for _, id in deliveries] == ["wf-crash"]
    assert other_host.llen(queue_key(prefix)) == 0
    assert other_host.exists(in_flight_key(prefix, "doomed")) == 0
    assert other_host.exists(in_flight_key(prefix, deliveries[0][0])) == 0


async def test_waiting_reliable_dequeue_tracks_the_id(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ReliableQueueProvider.new(
        server_url, prefix, host_id="host-a", dequeue_wait=5.0
    )
    try:
        dequeue = asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW))
        await asyncio.sleep(0.1)
        other_host.lpush(queue_key(prefix), "wf-1")
        async with asyncio.timeout(2):
            taken = await dequeue
        in_flight = await provider.in_flight(QueueType.WORKFLOW)
    finally:
        await provider.close()

    assert provider.is_dequeue_blocking() is True
    assert taken == "wf-1"
    assert in_flight == ["wf-1"]


async def test_cancelled_reliable_wait_puts_the_id_back(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ReliableQueueProvider.new(
        server_url, prefix, host_id="host-a", dequeue_wait=5.0
    )
    try:
        dequeue = asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW))
        await asyncio.sleep(0.1)
        other_host.lpush(queue_key(prefix), "wf-1")
        dequeue.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dequeue
        async with asyncio.timeout(5):
            while other_host.llen(queue_key(prefix)) != 1:
                await asyncio.sleep(0.01)
        in_flight = await provider.in_flight(QueueType.WORKFLOW)
    finally:
        await provider.close()

    assert in_flight == []
    assert other_host.lrange(queue_key(prefix), 0, -1) == [b"wf-1"]


async def test_default_host_id_is_unique(server_url: str, prefix: str) -> None:
    first = await ReliableQueueProvider.new(server_url, prefix)
    second = await ReliableQueueProvider.new(server_url, prefix)
    try:
        ids = {first.host_id, second.host_id}
    finally:
        await first.close()
        await second.close()

    assert len(ids) == 2


async def test_new_rejects_heartbeat_as_long_as_visibility(server_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="must be shorter than visibility_timeout"):
        await ReliableQueueProvider.new(
            server_url, prefix, visibility_timeout=1.0, heartbeat_interval=1.0
        )


async def test_new_rejects_zero_visibility_timeout(server_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="visibility_timeout must be a positive number"):
        await ReliableQueueProvider.new(server_url, prefix, visibility_timeout=0)


async def test_new_rejects_empty_host_id(server_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="host_id must not be empty"):
        await ReliableQueueProvider.new(server_url, prefix, host_id="")


async def test_ack_rejects_empty_id(reliable: ReliableQueueProvider) -> None:
    with pytest.raises(ValueError, match="id must not be empty"):
        await reliable.ack_work("", QueueType.WORKFLOW)


async def test_stop_and_start_twice_each(
    reliable: ReliableQueueProvider, other_host: valkey.Valkey
) -> None:
    await reliable.stop()
    await reliable.stop()
    await reliable.start()
    await reliable.start()
    await reliable.queue_work("wf-1", QueueType.WORKFLOW)

    assert await reliable.dequeue_work(QueueType.WORKFLOW) == "wf-1"
    assert other_host.exists(f"{reliable.prefix}:queue:host:host-a") == 1


def clients_named(other_host: valkey.Valkey, name: str, command: str | None = None) -> int:
    """Count the clients named `name` (running `command`, if given)."""
    return sum(
        1
        for client in other_host.client_list()
        if client["name"] == name and command in (None, client["cmd"])
    )


async def test_close_after_cancel_closes_connections(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ReliableQueueProvider.new(
        server_url, prefix, host_id="host-a", dequeue_wait=2.0, client_name=prefix
    )
    dequeue = asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW))
    async with asyncio.timeout(5):
        while clients_named(other_host, prefix, "blmove") != 1:
            await asyncio.sleep(0.005)

    dequeue.cancel()
    await provider.close()

    with pytest.raises(asyncio.CancelledError):
        await dequeue
    for _ in range(200):
        if clients_named(other_host, prefix) == 0:
            break
        await asyncio.sleep(0.01)
    assert clients_named(other_host, prefix) == 0


async def test_close_gives_none_to_queued_dequeues(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ReliableQueueProvider.new(
        server_url,
        prefix,
        host_id="host-a",
        dequeue_wait=5.0,
        dequeue_connections=1,
        client_name=prefix,
    )
    dequeues = [asyncio.create_task(provider.dequeue_work(QueueType.WORKFLOW)) for _ in range(3)]
    async with asyncio.timeout(5):
        while clients_named(other_host, prefix, "blmove") != 1:
            await asyncio.sleep(0.005)

    async with asyncio.timeout(3):
        await provider.close()
        results = await asyncio.gather(*dequeues, return_exceptions=True)

    assert results == [None, None, None]


async def test_concurrent_starts_open_one_connection(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    provider = await ReliableQueueProvider.new(
        server_url, prefix, host_id="host-a", client_name=prefix
    )
    await provider.stop()

    await asyncio.gather(provider.start(), provider.start(), provider.start())
    opened = clients_named(other_host, prefix)
    await provider.stop()
    for _ in range(200):
        if clients_named(other_host, prefix) == 0:
            break
        await asyncio.sleep(0.01)

    assert opened == 1
    assert clients_named(other_host, prefix) == 0
