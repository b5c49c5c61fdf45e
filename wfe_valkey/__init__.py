"""Valkey providers for Python WFE hosts: locks, work queues, lifecycle events.

Drop-in equivalents of the Rust crate ``wfe-valkey``: the same key layout
and the same JSON, so Python and Rust hosts can share one Valkey.
"""

from . import events
from .config import ConnectionSettings, TLSSettings, parse_url
from .contracts import DistributedLockProvider, LifecyclePublisher, QueueProvider, QueueType
from .errors import (
    AuthenticationError,
    BusyError,
    ConnectionLostError,
    InvalidURLError,
    LoadingError,
    NoReplyError,
    NoScriptError,
    ProtocolError,
    ReadOnlyError,
    ReplyError,
    ValkeyConnectionError,
    ValkeyError,
    ValkeyTimeoutError,
    WrongTypeError,
)
from .events import InvalidEventError, LifecycleEvent, LifecycleEventType
from .lifecycle import ValkeyLifecyclePublisher
from .lock import LockLease, LockNotAcquired, ValkeyLockProvider
from .queue import ValkeyQueueProvider
from .reliable import ReliableQueueProvider
from .subscriber import LifecycleSubscription, ValkeyLifecycleSubscriber

__all__ = [
    "AuthenticationError",
    "BusyError",
    "ConnectionLostError",
    "ConnectionSettings",
    "DistributedLockProvider",
    "InvalidEventError",
    "InvalidURLError",
    "LifecycleEvent",
    "LifecycleEventType",
    "LifecyclePublisher",
    "LifecycleSubscription",
    "LoadingError",
    "LockLease",
    "LockNotAcquired",
    "NoReplyError",
    "NoScriptError",
    "ProtocolError",
    "QueueProvider",
    "QueueType",
    "ReadOnlyError",
    "ReliableQueueProvider",
    "ReplyError",
    "TLSSettings",
    "ValkeyConnectionError",
    "ValkeyError",
    "ValkeyLifecyclePublisher",
    "ValkeyLifecycleSubscriber",
    "ValkeyLockProvider",
    "ValkeyQueueProvider",
    "ValkeyTimeoutError",
    "WrongTypeError",
    "events",
    "parse_url",
]

__version__ = "0.1.0"
