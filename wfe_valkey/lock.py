"""The distributed lock provider.

A lock is the key ``{prefix}:lock:{resource}`` holding this provider's
token, set with ``SET key token NX PX ms``. Release runs a script that
deletes the key only while it still holds the token, so a provider never
deletes a lock that expired and was taken by another host.

Beyond the contract, `acquire_lock(resource, wait=seconds)` retries until
the lock is free or the wait ends, `extend_lock` renews a held lock with a
script that checks the token, and `hold()` keeps a lock renewed while a
block of code runs. The keys and values stay those of the contract.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import random
import uuid
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, Self

from ._provider import ValkeyProvider, check_prefix, open_connection, reject_id
from .connection import Connection
from .errors import ValkeyError
from .resp import BETWEEN_PARTS, command_head, encode_arguments

logger = logging.getLogger(__name__)

DEFAULT_LOCK_DURATION: Final = timedelta(seconds=30)

RELEASE_SCRIPT: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)
RELEASE_SHA: Final = hashlib.sha1(RELEASE_SCRIPT.encode()).hexdigest()

EXTEND_SCRIPT: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
EXTEND_SHA: Final = hashlib.sha1(EXTEND_SCRIPT.encode()).hexdigest()

# Waiting acquires retry after about RETRY_BASE seconds, doubling up to
# RETRY_CAP, each wait scaled by a random factor from 0.5 to 1 so that
# hosts waiting for the same lock do not retry in step.
RETRY_BASE: Final = 0.005
RETRY_CAP: Final = 0.25


class LockNotAcquired(Exception):
    """`hold()` could not acquire the lock: another holder kept it.

    `resource` is the resource, and `wait` the seconds spent trying
    (`None` when it tried once).
    """

    def __init__(self, resource: str, wait: float | None) -> None:
        if wait is None:
            message = f"lock {resource!r} is held by another holder"
        else:
            message = f"lock {resource!r} still held by another holder after waiting {wait} s"
        super().__init__(message)
        self.resource = resource
        self.wait = wait


class ValkeyLockProvider(ValkeyProvider):
    """Distributed locks with an expiry, one token per provider instance."""

    client_name = "wfe-valkey-lock"

    def __init__(self, connection: Connection, prefix: str) -> None:
        super().__init__(connection, prefix)
        self._token = str(uuid.uuid4())
        self._key_prefix = f"{prefix}:lock:"
        self._duration_ms = _to_milliseconds(DEFAULT_LOCK_DURATION)
        # The hot commands, encoded but for their key (see `resp.BETWEEN_PARTS`).
        self._acquire_head = command_head(6, "SET")
        self._acquire_tail = self._acquire_arguments()
        self._release_head = command_head(5, "EVALSHA", RELEASE_SHA, 1)
        self._release_tail = encode_arguments(self._token)

    @property
    def token(self) -> str:
        """The value this provider stores in the locks it holds; unique per provider."""
        return self._token

    def _acquire_arguments(self) -> bytes:
        """Encode the arguments of the acquire's SET that follow its key."""
        return encode_arguments(self._token, "NX", "PX", self._duration_ms)

    @classmethod
    async def new(cls, url: str, prefix: str, **options: Any) -> Self:
        """Connect to `url` and return a provider for keys under `prefix`.

        `options` are connection options (`timeout`, `connect_timeout`,
        `username`, `password`, `db`, `client_name` and the ``ssl_*`` ones);
        they override the URL's query options.
        """
        prefix = check_prefix(prefix)
        scripts = [(RELEASE_SHA, RELEASE_SCRIPT), (EXTEND_SHA, EXTEND_SCRIPT)]
        connection = await open_connection(url, options, cls.client_name, scripts)
        return cls(connection, prefix)

    def with_lock_duration(self, duration: timedelta | float) -> Self:
        """Set how long a lock lives unless released; return the provider.

        Takes a `timedelta` or seconds as a number. Durations under a second
        work: the expiry is sent in milliseconds, rounded up.
        """
        self._duration_ms = _to_milliseconds(duration)
        self._acquire_tail = self._acquire_arguments()
        return self

    @property
    def lock_duration(self) -> timedelta:
        """How long a lock lives unless released."""
        return timedelta(milliseconds=self._duration_ms)

    async def acquire_lock(self, resource: str, wait: float | None = None) -> bool:
        """Try to take the lock; `True` if this provider now holds it.

        A resource already held, by anyone including this provider, gives
        `False`. With `wait=None`, the contract's behaviour, it tries once
        without waiting. With `wait` in seconds, it retries with jittered
        backoff until the lock is taken or `wait` seconds have passed.
        """
        if resource.__class__ is not str or not resource or not resource.isascii():
            reject_id("resource", resource)
        if wait is not None:
            return await self._acquire_waiting(resource, wait)
        key = (self._key_prefix + resource).encode()
        payload = BETWEEN_PARTS % (self._acquire_head, len(key), key, self._acquire_tail)
        return await self._connection.execute_encoded(payload, key) is not None

    async def _acquire_waiting(self, resource: str, wait: float) -> bool:
        """Retry the acquire with jittered exponential backoff until `wait` ends."""
        _check_wait(wait)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        attempt = 0
        while True:
            if await self.acquire_lock(resource):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            delay = min(RETRY_CAP, RETRY_BASE * 2**attempt) * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(delay, remaining))
            attempt += 1

    async def extend_lock(self, resource: str) -> bool:
        """Reset the lock's expiry to the full lock duration, if this provider holds it.

        Returns `False`, changing nothing, when the lock expired or another
        holder took it.
        """
        if resource.__class__ is not str or not resource or not resource.isascii():
            reject_id("resource", resource)
        key = self._key_prefix + resource
        reply = await self._connection.execute(
            "EVALSHA", EXTEND_SHA, 1, key, self._token, self._duration_ms
        )
        return bool(reply == 1)

    def hold(self, resource: str, wait: float | None = None) -> LockLease:
        """Hold the lock on `resource` for an ``async with`` block.

        Entering the block acquires the lock, as `acquire_lock(resource,
        wait)` does, and raises `LockNotAcquired` when it cannot. While the
        block runs, the lock's expiry is renewed every third of the lock
        duration. If a renewal finds the lock expired or taken,
        `lease.lost` is set and a warning is logged; the block is not
        interrupted. Leaving the block releases the lock. The lease returned
        is single-use: entering it a second time raises `RuntimeError`.
        """
        if resource.__class__ is not str or not resource or not resource.isascii():
            reject_id("resource", resource)
        if wait is not None:
            _check_wait(wait)
        return LockLease(self, resource, wait)

    async def release_lock(self, resource: str) -> None:
        """Release the lock if this provider holds it; otherwise do nothing."""
        if resource.__class__ is not str or not resource or not resource.isascii():
            reject_id("resource", resource)
        key = (self._key_prefix + resource).encode()
        payload = BETWEEN_PARTS % (self._release_head, len(key), key, self._release_tail)
        await self._connection.execute_encoded(payload, key)

    def _scripts(self) -> list[tuple[str, str]]:
        return [(RELEASE_SHA, RELEASE_SCRIPT), (EXTEND_SHA, EXTEND_SCRIPT)]


class LeaseState(enum.Enum):
    """State of a `LockLease` in its single use."""

    NOT_ENTERED = "not entered"
    ACQUIRING = "acquiring"
    NOT_ACQUIRED = "not acquired"
    HELD = "held"
    RELEASED = "released"
    RELEASE_FAILED = "release failed"


class LockLease:
    """A lock kept alive while an ``async with`` block runs; see `hold()`.

    A lease is single-use. Entering it a second time, during or after its
    block, raises `RuntimeError`, so call `hold()` again for a new lease.
    `state` is where the lease is in its use. `lost` is set when a
    renewal found the lock expired or taken by another holder, or when no
    renewal succeeded for a whole lock duration (for example while the
    server was unreachable). `renewals` counts the successful renewals.
    """

    def __init__(self, provider: ValkeyLockProvider, resource: str, wait: float | None) -> None:
        self.provider = provider
        self.resource = resource
        self.wait = wait
        self.lost = asyncio.Event()
        self.renewals = 0
        self.state = LeaseState.NOT_ENTERED
        self._renewer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = self.state.value
        if self.lost.is_set():
            state = f"lost, {state}" if self.state is not LeaseState.HELD else "lost"
        return f"<LockLease resource={self.resource!r} {state} renewals={self.renewals}>"

    async def __aenter__(self) -> Self:
        if self.state is not LeaseState.NOT_ENTERED:
            raise RuntimeError(
                f"the lease on {self.resource!r} was already entered ({self.state.value}); "
                "a lease is single-use, call hold() again for a new one"
            )
        self.state = LeaseState.ACQUIRING
        try:
            acquired = await self.provider.acquire_lock(self.resource, self.wait)
        except BaseException:
            self.state = LeaseState.NOT_ACQUIRED
            raise
        if not acquired:
            self.state = LeaseState.NOT_ACQUIRED
            raise LockNotAcquired(self.resource, self.wait)
        self.state = LeaseState.HELD
        self._renewer = asyncio.create_task(self._renew())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        renewer = self._renewer
        if renewer is not None:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        try:
            await self.provider.release_lock(self.resource)
        except ValkeyError as error:
            # The lock then expires by itself within one lock duration.
            self.state = LeaseState.RELEASE_FAILED
            logger.warning("failed to release lock %r: %s", self.resource, error)
            return
        except BaseException:
            self.state = LeaseState.RELEASE_FAILED
            raise
        self.state = LeaseState.RELEASED

    async def _renew(self) -> None:
        """Extend the lock every third of its duration until cancelled or lost."""
        loop = asyncio.get_running_loop()
        duration = self.provider.lock_duration.total_seconds()
        interval = duration / 3
        expires_at = loop.time() + duration
        while True:
            await asyncio.sleep(interval)
            sent_at = loop.time()
            try:
                extended = await self.provider.extend_lock(self.resource)
            except ValkeyError as error:
                if loop.time() < expires_at:
                    logger.warning("failed to renew lock %r, retrying: %s", self.resource, error)
                    continue
                self._mark_lost(f"no renewal succeeded for {duration} s ({error})")
                return
            if not extended:
                self._mark_lost("it expired or another holder took it")
                return
            self.renewals += 1
            expires_at = sent_at + duration

    def _mark_lost(self, reason: str) -> None:
        logger.warning("lost lock %r: %s", self.resource, reason)
        self.lost.set()


def _check_wait(wait: object) -> None:
    """Reject a wait that is not a non-negative, finite number of seconds."""
    if not isinstance(wait, (int, float)) or isinstance(wait, bool):
        raise TypeError(f"wait must be seconds as a number or None, got {type(wait).__name__}")
    if not math.isfinite(wait) or wait < 0:
        raise ValueError(f"wait must be 0 or more seconds, got {wait}")


# The server adds the expiry to its clock in a signed 64-bit count of
# milliseconds; 2**53 ms keeps clear of that limit and is exact in a float.
MAX_LOCK_DURATION_MS: Final = 2**53


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
    milliseconds = max(1, math.ceil(seconds * 1000))
    if milliseconds > MAX_LOCK_DURATION_MS:
        raise ValueError(
            f"lock duration must be at most {MAX_LOCK_DURATION_MS} ms (about 285,000 years), "
            f"got {seconds} s"
        )
    return milliseconds
