"""The clients under test, each behind the same five workload calls.

`Ours` drives the wfe_valkey providers. Each peer sends the same commands
through its own library:

- lock cycle: ``SET key token NX PX 30000``, then ``EVALSHA`` of the
  release script (the script that `ValkeyLockProvider` loads);
- queue cycle: ``LPUSH`` then ``RPOP`` on one list;
- publish: the event's JSON, ``PUBLISH``-ed on the workflow's channel and
  on the all-workflows channel in one round trip;
- host cycle: ``RPOP`` a workflow id, lock it, publish two events, release;
- batch cycle: ``LPUSH`` of many ids in one command, then ``RPOP key count``.

Keys and channels follow the providers' layout under each client's own
prefix, and every client builds its keys and event JSON per call, as the
providers do, so all clients do the same Python work outside the library.
Peers return replies in their default form (mostly `bytes`); only the
host cycle decodes the dequeued id, because it needs a `str`.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from wfe_valkey import (
    LifecycleEvent,
    QueueType,
    ValkeyLifecyclePublisher,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    parse_url,
)
from wfe_valkey.events import Completed, Started
from wfe_valkey.lock import RELEASE_SCRIPT, RELEASE_SHA

from .bare_loop import BareLoop

LOCK_DURATION_MS = 30_000
DEFINITION_ID = "bench-definition"
STARTED = Started()
COMPLETED = Completed()


class BenchClient:
    """One client object of one library, with the workload calls."""

    name: ClassVar[str]
    # The module that must import for this client to run. A peer whose
    # module does not import is left out and listed as missing.
    module: ClassVar[str]

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lock_prefix = f"{prefix}:lock:"
        self.queue_key = f"{prefix}:queue:workflow"
        self.channel_prefix = f"{prefix}:lifecycle:"
        self.all_channel = f"{prefix}:lifecycle:all"
        self.token = str(uuid.uuid4())

    async def connect(self, url: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def lock_cycle(self, resource: str) -> bool:
        """Acquire and release the lock on `resource`; `True` if it was acquired."""
        raise NotImplementedError

    async def queue_cycle(self, id: str) -> Any:
        """Queue `id` and dequeue one id."""
        raise NotImplementedError

    async def publish(self, event: LifecycleEvent) -> None:
        """Publish `event` on its workflow's channel and the all-workflows channel."""
        raise NotImplementedError

    async def host_cycle(self) -> bool:
        """Run one turn of a WFE host's loop; `True` if it found work and locked it."""
        raise NotImplementedError

    async def batch_cycle(self, ids: list[str]) -> int:
        """Queue `ids` in one command, then dequeue as many; return how many came out."""
        raise NotImplementedError

    async def fill_queue(self, ids: list[str]) -> None:
        """Put `ids` in the workflow queue for the host cycle, untimed."""
        raise NotImplementedError


class Ours(BenchClient):
    """wfe_valkey: one provider object of each kind."""

    name = "wfe-valkey"
    module = "wfe_valkey"

    async def connect(self, url: str) -> None:
        self.locks = await ValkeyLockProvider.new(url, self.prefix)
        self.queues = await ValkeyQueueProvider.new(url, self.prefix)
        self.publisher = await ValkeyLifecyclePublisher.new(url, self.prefix)

    async def close(self) -> None:
        await self.locks.close()
        await self.queues.close()
        await self.publisher.close()

    async def lock_cycle(self, resource: str) -> bool:
        acquired = await self.locks.acquire_lock(resource)
        await self.locks.release_lock(resource)
        return acquired

    async def queue_cycle(self, id: str) -> Any:
        await self.queues.queue_work(id, QueueType.WORKFLOW)
        return await self.queues.dequeue_work(QueueType.WORKFLOW)

    async def publish(self, event: LifecycleEvent) -> None:
        await self.publisher.publish(event)

    async def host_cycle(self) -> bool:
        id = await self.queues.dequeue_work(QueueType.WORKFLOW)
        if id is None or not await self.locks.acquire_lock(id):
            return False
        await self.publisher.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, STARTED))
        await self.publisher.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, COMPLETED))
        await self.locks.release_lock(id)
        return True

    async def batch_cycle(self, ids: list[str]) -> int:
        await self.queues.queue_work_many(ids, QueueType.WORKFLOW)
        return len(await self.queues.dequeue_work_many(QueueType.WORKFLOW, len(ids)))

    async def fill_queue(self, ids: list[str]) -> None:
        await self.queues.queue_work_many(ids, QueueType.WORKFLOW)


class RedisPy(BenchClient):
    """redis-py asyncio: one client object with its default connection pool."""

    name = "redis-py"
    module = "redis.asyncio"

    async def connect(self, url: str) -> None:
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url)
        await self.client.script_load(RELEASE_SCRIPT)

    async def close(self) -> None:
        await self.client.aclose()

    async def lock_cycle(self, resource: str) -> bool:
        key = self.lock_prefix + resource
        acquired = await self.client.set(key, self.token, nx=True, px=LOCK_DURATION_MS)
        await self.client.evalsha(RELEASE_SHA, 1, key, self.token)
        return bool(acquired)

    async def queue_cycle(self, id: str) -> Any:
        await self.client.lpush(self.queue_key, id)
        return await self.client.rpop(self.queue_key)

    async def publish(self, event: LifecycleEvent) -> None:
        payload = event.to_json()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.publish(self.channel_prefix + event.workflow_instance_id, payload)
            pipe.publish(self.all_channel, payload)
            await pipe.execute()

    async def host_cycle(self) -> bool:
        reply = await self.client.rpop(self.queue_key)
        if reply is None:
            return False
        id = reply.decode()
        key = self.lock_prefix + id
        if not await self.client.set(key, self.token, nx=True, px=LOCK_DURATION_MS):
            return False
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, STARTED))
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, COMPLETED))
        await self.client.evalsha(RELEASE_SHA, 1, key, self.token)
        return True

    async def batch_cycle(self, ids: list[str]) -> int:
        await self.client.lpush(self.queue_key, *ids)
        return len(await self.client.rpop(self.queue_key, len(ids)) or [])

    async def fill_queue(self, ids: list[str]) -> None:
        await self.client.lpush(self.queue_key, *ids)


class Glide(BenchClient):
    """valkey-glide: one `GlideClient` (a Rust core multiplexing one connection)."""

    name = "valkey-glide"
    module = "glide"

    async def connect(self, url: str) -> None:
        from glide import (
            ConditionalChange,
            ExpirySet,
            ExpiryType,
            GlideClient,
            GlideClientConfiguration,
            NodeAddress,
            ServerCredentials,
        )

        settings = parse_url(url)
        credentials = None
        if settings.password is not None:
            credentials = ServerCredentials(settings.password, settings.username)
        config = GlideClientConfiguration(
            [NodeAddress(settings.host, settings.port)],
            credentials=credentials,
            database_id=settings.db or None,
            request_timeout=10_000,
        )
        self.client = await GlideClient.create(config)
        self.only_if_absent = ConditionalChange.ONLY_IF_DOES_NOT_EXIST
        self.expiry = ExpirySet(ExpiryType.MILLSEC, LOCK_DURATION_MS)
        await self.client.custom_command(["SCRIPT", "LOAD", RELEASE_SCRIPT])

    async def close(self) -> None:
        await self.client.close()

    async def lock_cycle(self, resource: str) -> bool:
        key = self.lock_prefix + resource
        acquired = await self.client.set(
            key, self.token, conditional_set=self.only_if_absent, expiry=self.expiry
        )
        await self.client.custom_command(["EVALSHA", RELEASE_SHA, "1", key, self.token])
        return acquired is not None

    async def queue_cycle(self, id: str) -> Any:
        await self.client.lpush(self.queue_key, [id])
        return await self.client.rpop(self.queue_key)

    async def publish(self, event: LifecycleEvent) -> None:
        from glide import Batch

        payload = event.to_json()
        batch = Batch(is_atomic=False)
        batch.publish(payload, self.channel_prefix + event.workflow_instance_id)
        batch.publish(payload, self.all_channel)
        await self.client.exec(batch, raise_on_error=True)

    async def host_cycle(self) -> bool:
        reply = await self.client.rpop(self.queue_key)
        if reply is None:
            return False
        id = reply.decode()
        key = self.lock_prefix + id
        acquired = await self.client.set(
            key, self.token, conditional_set=self.only_if_absent, expiry=self.expiry
        )
        if acquired is None:
            return False
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, STARTED))
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, COMPLETED))
        await self.client.custom_command(["EVALSHA", RELEASE_SHA, "1", key, self.token])
        return True

    async def batch_cycle(self, ids: list[str]) -> int:
        await self.client.lpush(self.queue_key, ids)
        return len(await self.client.rpop_count(self.queue_key, len(ids)) or [])

    async def fill_queue(self, ids: list[str]) -> None:
        await self.client.lpush(self.queue_key, ids)


class AioRedis(BenchClient):
    """aioredis 1.3.1: `create_redis`, one multiplexed connection."""

    name = "aioredis-1.3.1"
    module = "aioredis"

    async def connect(self, url: str) -> None:
        import aioredis

        self.client = await aioredis.create_redis(url)
        self.if_absent = self.client.SET_IF_NOT_EXIST
        await self.client.script_load(RELEASE_SCRIPT)

    async def close(self) -> None:
        self.client.close()
        await self.client.wait_closed()

    async def lock_cycle(self, resource: str) -> bool:
        key = self.lock_prefix + resource
        acquired = await self.client.set(
            key, self.token, pexpire=LOCK_DURATION_MS, exist=self.if_absent
        )
        await self.client.evalsha(RELEASE_SHA, keys=[key], args=[self.token])
        return bool(acquired)

    async def queue_cycle(self, id: str) -> Any:
        await self.client.lpush(self.queue_key, id)
        return await self.client.rpop(self.queue_key)

    async def publish(self, event: LifecycleEvent) -> None:
        payload = event.to_json()
        # Both futures are created before either is awaited, so the one
        # connection writes both commands in the same event-loop turn.
        first = self.client.publish(self.channel_prefix + event.workflow_instance_id, payload)
        second = self.client.publish(self.all_channel, payload)
        await first
        await second

    async def host_cycle(self) -> bool:
        reply = await self.client.rpop(self.queue_key)
        if reply is None:
            return False
        id = reply.decode()
        key = self.lock_prefix + id
        if not await self.client.set(
            key, self.token, pexpire=LOCK_DURATION_MS, exist=self.if_absent
        ):
            return False
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, STARTED))
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, COMPLETED))
        await self.client.evalsha(RELEASE_SHA, keys=[key], args=[self.token])
        return True

    async def batch_cycle(self, ids: list[str]) -> int:
        await self.client.lpush(self.queue_key, *ids)
        # aioredis 1.3.1 predates RPOP's count argument, so the raw command is sent.
        return len(await self.client.execute(b"RPOP", self.queue_key, len(ids)) or [])

    async def fill_queue(self, ids: list[str]) -> None:
        await self.client.lpush(self.queue_key, *ids)


class Bare(BenchClient):
    """The bare auto-pipelined loop of `bare_loop.py`: the ceiling reference."""

    name = "bare-loop"
    module = "hiredis"

    async def connect(self, url: str) -> None:
        settings = parse_url(url)
        self.client = await BareLoop.open(settings.host, settings.port)
        if settings.password is not None:
            await self.client.execute("AUTH", settings.username or "default", settings.password)
        if settings.db:
            await self.client.execute("SELECT", settings.db)
        await self.client.execute("SCRIPT", "LOAD", RELEASE_SCRIPT)

    async def close(self) -> None:
        self.client.close()

    async def lock_cycle(self, resource: str) -> bool:
        key = self.lock_prefix + resource
        acquired = await self.client.execute("SET", key, self.token, "NX", "PX", LOCK_DURATION_MS)
        await self.client.execute("EVALSHA", RELEASE_SHA, 1, key, self.token)
        return acquired is not None

    async def queue_cycle(self, id: str) -> Any:
        await self.client.execute("LPUSH", self.queue_key, id)
        return await self.client.execute("RPOP", self.queue_key)

    async def publish(self, event: LifecycleEvent) -> None:
        payload = event.to_json()
        first = self.client.execute(
            "PUBLISH", self.channel_prefix + event.workflow_instance_id, payload
        )
        second = self.client.execute("PUBLISH", self.all_channel, payload)
        await first
        await second

    async def host_cycle(self) -> bool:
        reply = await self.client.execute("RPOP", self.queue_key)
        if reply is None:
            return False
        id = reply.decode()
        key = self.lock_prefix + id
        if await self.client.execute("SET", key, self.token, "NX", "PX", LOCK_DURATION_MS) is None:
            return False
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, STARTED))
        await self.publish(LifecycleEvent.new(id, DEFINITION_ID, 1, COMPLETED))
        await self.client.execute("EVALSHA", RELEASE_SHA, 1, key, self.token)
        return True

    async def batch_cycle(self, ids: list[str]) -> int:
        await self.client.execute("LPUSH", self.queue_key, *ids)
        return len(await self.client.execute("RPOP", self.queue_key, len(ids)) or [])

    async def fill_queue(self, ids: list[str]) -> None:
        await self.client.execute("LPUSH", self.queue_key, *ids)


CLIENTS: dict[str, type[BenchClient]] = {
    cls.name: cls for cls in (Ours, RedisPy, Glide, AioRedis, Bare)
}
OURS_NAME = Ours.name


async def open_client(name: str, url: str, prefix: str) -> BenchClient:
    """Connect the client called `name` under `prefix`."""
    client = CLIENTS[name](prefix)
    await client.connect(url)
    return client
