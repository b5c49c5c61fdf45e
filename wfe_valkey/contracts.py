"""The three provider contracts WFE hosts program against.

These mirror the Rust crate's traits. Any object with these methods can
stand in for the Valkey providers, for example in a host's own tests.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

from .events import LifecycleEvent


class QueueType(enum.Enum):
    """The kind of work a queue carries; each kind is its own list."""

    WORKFLOW = "workflow"
    EVENT = "event"
    INDEX = "index"

    # Members are singletons compared by identity, so the identity hash is
    # consistent with equality; Enum's own __hash__ runs in Python on every
    # queue key lookup.
    __hash__ = object.__hash__


@runtime_checkable
class DistributedLockProvider(Protocol):
    """Keeps two hosts from working on the same resource at once."""

    async def acquire_lock(self, resource: str) -> bool:
        """Try once, without waiting; `True` if this provider now holds the lock.

        A resource already held, by anyone including this provider, gives
        `False`.
        """
        ...

    async def release_lock(self, resource: str) -> None:
        """Release the lock if this provider holds it; otherwise do nothing."""
        ...

    async def start(self) -> None:
        """Prepare the provider; idempotent."""
        ...

    async def stop(self) -> None:
        """Stop the provider; idempotent."""
        ...


@runtime_checkable
class QueueProvider(Protocol):
    """Distributes work ids across hosts, oldest first."""

    async def queue_work(self, id: str, queue_type: QueueType) -> None:
        """Append `id` to the queue of `queue_type`."""
        ...

    async def dequeue_work(self, queue_type: QueueType) -> str | None:
        """Take the oldest id of the queue, or `None` when it is empty."""
        ...

    def is_dequeue_blocking(self) -> bool:
        """Whether `dequeue_work` waits for work; fixed for one provider."""
        ...

    async def start(self) -> None:
        """Prepare the provider; idempotent."""
        ...

    async def stop(self) -> None:
        """Stop the provider; idempotent."""
        ...


@runtime_checkable
class LifecyclePublisher(Protocol):
    """Broadcasts workflow state changes."""

    async def publish(self, event: LifecycleEvent) -> None:
        """Publish `event` on its workflow's channel and on the all-workflows channel."""
        ...
