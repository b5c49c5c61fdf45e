"""The lifecycle publisher.

Each event is published twice, in one round trip: on its workflow's channel
``{prefix}:lifecycle:{workflow_instance_id}`` and on ``{prefix}:lifecycle:all``.
"""

from __future__ import annotations

import asyncio
from asyncio import Future
from typing import Any, Self

from ._provider import ValkeyProvider, check_prefix, open_connection
from .connection import Connection
from .events import LifecycleEvent
from .resp import BETWEEN_PARTS, command_head


class ValkeyLifecyclePublisher(ValkeyProvider):
    """Publishes lifecycle events as the Rust crate's JSON."""

    client_name = "wfe-valkey-lifecycle"

    def __init__(self, connection: Connection, prefix: str) -> None:
        super().__init__(connection, prefix)
        self._channel_prefix = f"{prefix}:lifecycle:"
        self.all_channel = f"{prefix}:lifecycle:all"
        # The two PUBLISH commands, encoded but for their channel or
        # payload (see `resp.BETWEEN_PARTS`).
        self._publish_head = command_head(3, "PUBLISH")
        self._publish_all_head = command_head(3, "PUBLISH", self.all_channel)

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
        json = event.to_json().encode()
        message = BETWEEN_PARTS % (b"", len(json), json, b"")
        channel = self.channel(event.workflow_instance_id).encode()
        to_workflow = BETWEEN_PARTS % (self._publish_head, len(channel), channel, message)
        to_all = self._publish_all_head + message
        # PUBLISH has no key: a cluster sends it to any node, and the cluster
        # bus delivers it to the subscribers of every node.
        first = self._connection.execute_encoded(to_workflow, None)
        second = self._connection.execute_encoded(to_all, None)
        if first.__class__ is not Future or second.__class__ is not Future:
            # Coroutines (a cluster, or a connection not ready yet) only run
            # when awaited, so they run as tasks to share one write.
            await asyncio.gather(first, second)
            return
        # Both commands are already in this turn's write.
        try:
            await first
        except BaseException:
            second.add_done_callback(_retrieve_error)
            raise
        await second


def _retrieve_error(future: Future[Any]) -> None:
    """Mark the error of a reply that no caller awaits as retrieved.

    Otherwise asyncio logs "exception was never retrieved" when the future
    is collected. The caller gets the first command's error instead.
    """
    if not future.cancelled():
        future.exception()
