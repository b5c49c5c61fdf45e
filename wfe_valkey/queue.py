"""The work queue provider.

Each queue type is one list, ``{prefix}:queue:{workflow|event|index}``.
Ids go in with `LPUSH` and come out with `RPOP`, so the oldest comes first.
"""

from __future__ import annotations

from typing import Any, Self

from .config import parse_url
from .connection import Connection
from .contracts import QueueType
from ._provider import ValkeyProvider, check_prefix, reject_id


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
        settings = parse_url(url, **options)
        connection = await Connection.open(settings, cls.client_name)
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

    def is_dequeue_blocking(self) -> bool:
        """`False`: `dequeue_work` returns at once, and hosts poll."""
        return False
