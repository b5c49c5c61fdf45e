"""The work queue provider.

Each queue type is one list, ``{prefix}:queue:{workflow|event|index}``.
Ids go in with `LPUSH` and come out with `RPOP`, so the oldest comes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

from ._provider import ValkeyProvider, check_prefix, open_connection, reject_id
from .connection import Connection
from .contracts import QueueType


class ValkeyQueueProvider(ValkeyProvider):
    """FIFO work queues for workflow, event and index ids."""

    client_name = "wfe-valkey-queue"

    def __init__(self, connection: Connection, prefix: str) -> None:
        super().__init__(connection, prefix)
        self._keys = {queue_type: f"{prefix}:queue:{queue_type.value}" for queue_type in QueueType}

    @classmethod
    async def new(cls, url: str, prefix: str, **options: Any) -> Self:
        """Connect to `url` and return a provider for queues under `prefix`.

        `options` are connection options, as for `ValkeyLockProvider.new`.
        """
        prefix = check_prefix(prefix)
        connection = await open_connection(url, options, cls.client_name)
        return cls(connection, prefix)

    def queue_key(self, queue_type: QueueType) -> str:
        """The list key that holds the queue of `queue_type`."""
        key = self._keys.get(queue_type)
        if key is None:
            raise TypeError(f"queue_type must be a QueueType, got {queue_type!r}")
        return key

    async def queue_work(self, id: str, queue_type: QueueType) -> None:
        """Append `id` to the queue; the same id may be queued more than once."""
        if id.__class__ is not str or not id:
            reject_id("id", id)
        await self._connection.execute("LPUSH", self.queue_key(queue_type), id)

    async def dequeue_work(self, queue_type: QueueType) -> str | None:
        """Take the oldest id of the queue, or `None` at once when it is empty."""
        reply = await self._connection.execute("RPOP", self.queue_key(queue_type))
        return None if reply is None else reply.decode()

    async def queue_work_many(self, ids: Sequence[str], queue_type: QueueType) -> None:
        """Append several ids in one `LPUSH`; they come out in the order given.

        Every id is checked before anything is sent, so a bad id queues none.
        """
        key = self.queue_key(queue_type)
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be a sequence of str, not a single string")
        for id in ids:
            if id.__class__ is not str or not id:
                reject_id("each id", id)
        if not ids:
            return
        await self._connection.execute("LPUSH", key, *ids)

    async def dequeue_work_many(self, queue_type: QueueType, count: int) -> list[str]:
        """Take up to `count` of the oldest ids, oldest first; `[]` when empty."""
        key = self.queue_key(queue_type)
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"count must be an int, got {type(count).__name__}")
        if count < 1:
            raise ValueError(f"count must be 1 or more, got {count}")
        reply = await self._connection.execute("RPOP", key, count)
        return [] if reply is None else [item.decode() for item in reply]

    def is_dequeue_blocking(self) -> bool:
        """`False`: `dequeue_work` returns at once, and hosts poll."""
        return False
