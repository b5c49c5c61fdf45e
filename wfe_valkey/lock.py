"""The distributed lock provider.

A lock is the key ``{prefix}:lock:{resource}`` holding this provider's
token, set with ``SET key token NX PX ms``. Release runs a script that
deletes the key only while it still holds the token, so a provider never
deletes a lock that expired and was taken by another host.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import timedelta
from typing import Any, Final, Self

from ._provider import ValkeyProvider, check_prefix, open_connection, reject_id
from .connection import Connection
from .errors import NoScriptError

DEFAULT_LOCK_DURATION: Final = timedelta(seconds=30)

RELEASE_SCRIPT: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)
RELEASE_SHA: Final = hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest()


class ValkeyLockProvider(ValkeyProvider):
    """Distributed locks with an expiry, one token per provider instance."""

    client_name = "wfe-valkey-lock"

    def __init__(self, connection: Connection, prefix: str) -> None:
        super().__init__(connection, prefix)
        self.token = str(uuid.uuid4())
        self._key_prefix = f"{prefix}:lock:"
        self._duration_ms = _to_milliseconds(DEFAULT_LOCK_DURATION)

    @classmethod
    async def new(cls, url: str, prefix: str, **options: Any) -> Self:
        """Connect to `url` and return a provider for keys under `prefix`.

        `options` are connection options (`timeout`, `connect_timeout`,
        `username`, `password`, `db`, `client_name` and the ``ssl_*`` ones);
        they override the URL's query options.
        """
        prefix = check_prefix(prefix)
        scripts = [(RELEASE_SHA, RELEASE_SCRIPT)]
        connection = await open_connection(url, options, cls.client_name, scripts)
        return cls(connection, prefix)

    def with_lock_duration(self, duration: timedelta | float) -> Self:
        """Set how long a lock lives unless released; return the provider.

        Takes a `timedelta` or seconds as a number. Durations under a second
        work: the expiry is sent in milliseconds, rounded up.
        """
        self._duration_ms = _to_milliseconds(duration)
        return self

    @property
    def lock_duration(self) -> timedelta:
        """How long a lock lives unless released."""
        return timedelta(milliseconds=self._duration_ms)

    async def acquire_lock(self, resource: str) -> bool:
        """Try once, without waiting; `True` if this provider now holds the lock.

        A resource already held, by anyone including this provider, gives
        `False`.
        """
        if resource.__class__ is not str or not resource:
            reject_id("resource", resource)
        reply = await self._connection.execute(
            "SET", self._key_prefix + resource, self.token, "NX", "PX", self._duration_ms
        )
        return reply is not None

    async def release_lock(self, resource: str) -> None:
        """Release the lock if this provider holds it; otherwise do nothing."""
        if resource.__class__ is not str or not resource:
            reject_id("resource", resource)
        key = self._key_prefix + resource
        try:
            await self._connection.execute("EVALSHA", RELEASE_SHA, 1, key, self.token)
        except NoScriptError:
            await self._connection.execute("EVAL", RELEASE_SCRIPT, 1, key, self.token)

    def _scripts(self) -> list[tuple[str, str]]:
        return [(RELEASE_SHA, RELEASE_SCRIPT)]


def _to_milliseconds(duration: timedelta | float) -> int:
    """Convert a positive duration to whole milliseconds, rounding up."""
    if isinstance(duration, timedelta):
        seconds = duration.total_seconds()
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool):
        seconds = float(duration)
    else:
        raise TypeError(
            f"lock duration must be a timedelta or seconds, got {type(duration).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"lock duration must be positive, got {seconds} s")
    return max(1, math.ceil(seconds * 1000))
