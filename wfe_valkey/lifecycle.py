"""The lifecycle publisher.

Each event is published twice, in one round trip: on its workflow's channel
``{prefix}:lifecycle:{workflow_instance_id}`` and on ``{prefix}:lifecycle:all``.
"""

from __future__ import annotations

from typing import Any, Self

from ._provider import ValkeyProvider, check_prefix, open_connection
from .connection import Connection
from .errors import ReplyError
from .events import LifecycleEvent


class ValkeyLifecyclePublisher(ValkeyProvider):
    """Publishes lifecycle events as the Rust crate's JSON."""

    client_name = "wfe-valkey-lifecycle"

    def __init__(self, connection: Connection, prefix: str) -> None:
        super().__init__(connection, prefix)
        self._channel_prefix = f"{prefix}:lifecycle:"
        self.all_channel = f"{prefix}:lifecycle:all"

    @classmethod
    async def new(cls, url: str, prefix: str, **options: Any) -> Self:
        """Connect to `url` and return a publisher for channels under `prefix`.

        `options` are connection options, as for `ValkeyLockProvider.new`.
        """
        prefix = check_prefix(prefix)
        connection = await open_connection(url, options, cls.client_name)
        return cls(connection, prefix)

    def channel(self, workflow_instance_id: str) -> str:
        """The channel that carries one workflow's events."""
        return self._channel_prefix + workflow_instance_id

    async def publish(self, event: LifecycleEvent) -> None:
        """Publish `event` on its workflow's channel and on the all-workflows channel."""
        if not isinstance(event, LifecycleEvent):
            raise TypeError(f"event must be a LifecycleEvent, got {type(event).__name__}")
        payload = event.to_json()
        replies = await self._connection.execute_many(
            [
                ("PUBLISH", self.channel(event.workflow_instance_id), payload),
                ("PUBLISH", self.all_channel, payload),
            ]
        )
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
