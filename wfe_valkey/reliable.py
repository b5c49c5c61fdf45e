"""At-least-once work queues: ids a crashed host took go back to the queue.

A plain dequeue (`RPOP`) removes the id from the server, so an id taken by
a host that crashes before finishing it is lost. `ReliableQueueProvider`
moves each dequeued id atomically (`LMOVE ... RIGHT LEFT`) into an
in-flight list of its own host, and the host removes it with `ack_work`
once the work is done. Each host refreshes a heartbeat key. When a host's
heartbeat has been missing for the visibility timeout, any live host moves
that host's in-flight ids back to the queue, where the next dequeue takes
them.

Keys, in addition to the contract's queue lists (which stay unchanged, so
Rust hosts may queue and dequeue on them as before):

- ``{prefix}:queue:{type}:inflight:{host_id}``: list of ids one host took
  from that queue and has not acknowledged, newest first.
- ``{prefix}:queue:host:{host_id}``: the host's heartbeat, a string with an
  expiry of the visibility timeout, refreshed every heartbeat interval.
- ``{prefix}:queue:hosts``: set of the host ids that may own in-flight ids.

Known limits: an id is delivered again whenever its host stops
heartbeating for the visibility timeout, including a host that was only
paused that long, so the work for an id must tolerate running twice. The
recovery script names keys it does not declare, so this mode needs a
standalone server or a primary with replicas, not a cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final, Self

from ._provider import check_prefix, open_connection, reject_id
from .connection import Connection
from .contracts import QueueType
from .errors import LoadingError, ReplyError, ValkeyError
from .queue import DEFAULT_DEQUEUE_CONNECTIONS, NO_CONNECTION, ValkeyQueueProvider
from .resp import CommandArg

logger = logging.getLogger(__name__)

# dequeue_work_many sends one LMOVE per id in one batch, so the batch is capped.
MAX_DEQUEUE_COUNT: Final = 10_000
DEFAULT_VISIBILITY_TIMEOUT: Final = 30.0

# Moves the in-flight ids of every host whose heartbeat key is gone back to
# the end of their queue that is dequeued next, keeping their order. A host
# leaves the set only once a run finds its in-flight lists already empty.
# KEYS[1]: the set of host ids. ARGV[1]: "{prefix}:queue:". ARGV[2...]: the
# queue type names.
RECOVER_SCRIPT: Final = """
local moved = 0
for _, host in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'host:' .. host) == 0 then
    local found = 0
    for i = 2, #ARGV do
      local queue = ARGV[1] .. ARGV[i]
      local inflight = queue .. ':inflight:' .. host
      while redis.call('LMOVE', inflight, queue, 'LEFT', 'RIGHT') do
        found = found + 1
      end
    end
    if found == 0 then
      redis.call('SREM', KEYS[1], host)
    end
    moved = moved + found
  end
end
return moved
"""

# Moves every id of one in-flight list (KEYS[1]) back to its queue
# (KEYS[2]), oldest to the end dequeued next.
REQUEUE_SCRIPT: Final = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
return moved
"""

# Moves one id (ARGV[1]) from an in-flight list (KEYS[1]) back to the end of
# its queue (KEYS[2]) that is dequeued next.
PUT_BACK_SCRIPT: Final = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


RECOVER_SHA: Final = _sha(RECOVER_SCRIPT)
REQUEUE_SHA: Final = _sha(REQUEUE_SCRIPT)
PUT_BACK_SHA: Final = _sha(PUT_BACK_SCRIPT)
SCRIPTS: Final = {
    RECOVER_SHA: RECOVER_SCRIPT,
    REQUEUE_SHA: REQUEUE_SCRIPT,
    PUT_BACK_SHA: PUT_BACK_SCRIPT,
}


class ReliableQueueProvider(ValkeyQueueProvider):
    """Work queues that deliver every id at least once, even if a host crashes.

    Use it as `ValkeyQueueProvider`, and call `ack_work(id, queue_type)`
    when the work for a dequeued id is done. Until then the id stays in
    this host's in-flight list. If this host stops heartbeating for
    `visibility_timeout` seconds, another host puts the id back in the
    queue. Work may take longer than the visibility timeout as long as the
    host keeps running: the heartbeat, not the age of the id, decides.

    `stop()` stops heartbeating and closes every connection; `start()`
    opens them again and resumes heartbeating. Ids still in flight at
    `stop()` go back to the queue at the first recovery by a live host
    after the heartbeat key expires, which takes up to
    `visibility_timeout` plus that host's heartbeat interval. Call
    `requeue_in_flight()` before stopping to put them back at once.
    """

    client_name = "wfe-valkey-reliable-queue"

    def __init__(
        self,
        connection: Connection,
        prefix: str,
        host_id: str,
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        heartbeat_interval: float | None = None,
        dequeue_wait: float | None = None,
        dequeue_connections: int = DEFAULT_DEQUEUE_CONNECTIONS,
    ) -> None:
        super().__init__(connection, prefix, dequeue_wait, dequeue_connections)
        self.host_id = host_id
        self.visibility_timeout = visibility_timeout
        self.heartbeat_interval = heartbeat_interval or visibility_timeout / 3
        self._queue_prefix = f"{prefix}:queue:"
        self.hosts_key = f"{prefix}:queue:hosts"
        self.heartbeat_key = f"{prefix}:queue:host:{host_id}"
        self._in_flight_keys = {
            queue_type: f"{prefix}:queue:{queue_type.value}:inflight:{host_id}"
            for queue_type in QueueType
        }
        self._heartbeat_task: asyncio.Task[None] | None = None

    @classmethod
    async def new(
        cls,
        url: str,
        prefix: str,
        *,
        host_id: str | None = None,
        visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        heartbeat_interval: float | None = None,
        dequeue_wait: float | None = None,
        dequeue_connections: int = DEFAULT_DEQUEUE_CONNECTIONS,
        **options: Any,
    ) -> Self:
        """Connect, send the first heartbeat, and return the provider.

        `host_id` names this host's in-flight lists and must be unique
        among live hosts. The default, made of the host name, the process
        id and a random part, is unique. `visibility_timeout` is the number of seconds
        without a heartbeat after which this host's in-flight ids go back
        to the queue. `heartbeat_interval` defaults to a third of it.
        `dequeue_wait`, `dequeue_connections` and the connection `options`
        are as for `ValkeyQueueProvider.new`.
        """
        prefix = check_prefix(prefix)
        if host_id is None:
            host_id = default_host_id()
        elif host_id.__class__ is not str or not host_id or not host_id.isascii():
            reject_id("host_id", host_id)
        visibility_timeout = _check_seconds("visibility_timeout", visibility_timeout)
        if heartbeat_interval is not None:
            heartbeat_interval = _check_seconds("heartbeat_interval", heartbeat_interval)
            if heartbeat_interval >= visibility_timeout:
                raise ValueError(
                    f"heartbeat_interval ({heartbeat_interval} s) must be shorter than "
                    f"visibility_timeout ({visibility_timeout} s)"
                )
        connection = await open_connection(url, options, cls.client_name, SCRIPTS.items())
        provider = cls(
            connection,
            prefix,
            host_id,
            visibility_timeout,
            heartbeat_interval,
            dequeue_wait,
            dequeue_connections,
        )
        provider._remember_url(url, options)
        try:
            await provider._start_heartbeat()
        except BaseException:
            await connection.close()
            raise
        return provider

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} prefix={self.prefix!r} host_id={self.host_id!r} "
            f"{self._connection!r}>"
        )

    def in_flight_key(self, queue_type: QueueType) -> str:
        """Return the list key of the ids this host took from `queue_type`'s queue."""
        key = self._in_flight_keys.get(queue_type)
        if key is None:
            raise TypeError(f"queue_type must be a QueueType, got {queue_type!r}")
        return key

    # the queue calls

    async def dequeue_work(self, queue_type: QueueType) -> str | None:
        """Move the oldest id into this host's in-flight list and return it.

        Returns `None` when the queue is empty, at once or after
        `dequeue_wait`, or when the provider is stopped during the wait.
        Acknowledge the id with `ack_work` once its work is done.
        """
        queue = self.queue_key(queue_type)
        in_flight = self._in_flight_keys[queue_type]
        if self._waiting is not None:
            return await self._dequeue_waiting_reliably(queue, in_flight)
        move = ("LMOVE", queue, in_flight, "RIGHT", "LEFT")
        registered, moved = await self._connection.execute_many(
            [("SADD", self.hosts_key, self.host_id), move]
        )
        # Loading can end between the two commands. Then one of them met
        # LOADING and did not run, so it is sent again alone, and the
        # connection waits until the load ends.
        if isinstance(moved, LoadingError):
            moved = await self._connection.execute(*move)
        registered = await self._resend_if_loading(registered)
        return _decode_id(_raise_errors([registered, moved])[1])

    async def dequeue_work_many(self, queue_type: QueueType, count: int) -> list[str]:
        """Move up to `count` of the oldest ids into the in-flight list; oldest first."""
        queue = self.queue_key(queue_type)
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"count must be an int, got {type(count).__name__}")
        if not 1 <= count <= MAX_DEQUEUE_COUNT:
            raise ValueError(f"count must be from 1 to {MAX_DEQUEUE_COUNT}, got {count}")
        in_flight = self._in_flight_keys[queue_type]
        commands: list[tuple[CommandArg, ...]] = [("SADD", self.hosts_key, self.host_id)]
        commands.extend(("LMOVE", queue, in_flight, "RIGHT", "LEFT") for _ in range(count))
        registered, *moves = await self._connection.execute_many(commands)
        registered = await self._resend_if_loading(registered)
        # An LMOVE that met LOADING moved nothing; those after the end of
        # loading did move their ids, so these are returned, fewer than count.
        moved = [reply for reply in moves if not isinstance(reply, LoadingError)]
        _raise_errors([registered, *moved])
        return [reply.decode() for reply in moved if reply is not None]

    async def ack_work(self, id: str, queue_type: QueueType) -> bool:
        """Mark the work for `id` done: remove one copy from the in-flight list.

        Returns `False` when `id` was not in flight on this host, for
        example because this host missed its heartbeats long enough that
        another host took the id back.
        """
        if id.__class__ is not str or not id or not id.isascii():
            reject_id("id", id)
        removed = await self._connection.execute("LREM", self.in_flight_key(queue_type), 1, id)
        return bool(removed)

    async def in_flight(self, queue_type: QueueType) -> list[str]:
        """Return the ids this host took from `queue_type`'s queue and has not acknowledged.

        Oldest first.
        """
        reply = await self._connection.execute("LRANGE", self.in_flight_key(queue_type), 0, -1)
        return [item.decode() for item in reversed(reply)]

    async def requeue_in_flight(self) -> int:
        """Put every id this host has in flight back in its queue; return how many.

        For a host that stops without finishing its work. The ids go to the
        end of the queue that is dequeued next, oldest first.
        """
        moved = 0
        for queue_type in QueueType:
            keys = (self._in_flight_keys[queue_type], self.queue_key(queue_type))
            moved += int(await self._run_script(REQUEUE_SHA, keys, ()))
        return moved

    async def recover(self) -> int:
        """Put back the in-flight ids of hosts whose heartbeat expired; return how many.

        Every live host runs this after each heartbeat; call it to recover
        at once.
        """
        names = tuple(queue_type.value for queue_type in QueueType)
        moved = int(
            await self._run_script(RECOVER_SHA, (self.hosts_key,), (self._queue_prefix, *names))
        )
        if moved:
            logger.warning("put %d ids of hosts without a heartbeat back in their queues", moved)
        return moved

    # life cycle

    async def _open(self) -> None:
        """Open the connection again if `stop()` closed it, and heartbeat."""
        await super()._open()
        if self._heartbeat_task is None:
            await self._start_heartbeat()

    async def _close(self) -> None:
        """Stop heartbeating and close every connection."""
        task = self._heartbeat_task
        self._heartbeat_task = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await super()._close()

    async def _start_heartbeat(self) -> None:
        await self._beat()
        await self.recover()
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _beat(self) -> None:
        """Refresh the heartbeat key and this host's place in the host set."""
        expiry_ms = max(1, math.ceil(self.visibility_timeout * 1000))
        now_ms = time.time_ns() // 1_000_000
        replies = await self._connection.execute_many(
            [
                ("SET", self.heartbeat_key, now_ms, "PX", expiry_ms),
                ("SADD", self.hosts_key, self.host_id),
            ]
        )
        _raise_errors(replies)

    async def _heartbeat(self) -> None:
        """Beat and recover every heartbeat interval until stopped."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._beat()
                await self.recover()
            except ValkeyError as error:
                logger.warning("heartbeat of host %r failed: %s", self.host_id, error)

    # helpers

    async def _dequeue_waiting_reliably(self, queue: str, in_flight: str) -> str | None:
        """Wait for an id with BLMOVE on a pooled connection."""
        assert self._waiting is not None and self.dequeue_wait is not None
        await self._connection.execute("SADD", self.hosts_key, self.host_id)

        async def put_back(reply: bytes) -> None:
            await self._run_script(PUT_BACK_SHA, (in_flight, queue), (reply,))

        command = ("BLMOVE", queue, in_flight, "RIGHT", "LEFT", self.dequeue_wait)
        reply = await self._waiting.run(command, self._connection, put_back)
        if reply is NO_CONNECTION:
            reply = await self._connection.execute("LMOVE", queue, in_flight, "RIGHT", "LEFT")
        return _decode_id(reply)

    async def _resend_if_loading(self, registered: Any) -> Any:
        """Return the reply of this host's SADD, sent again alone if it met LOADING.

        The wire resends a batch only when every command in it met LOADING,
        so an SADD rejected while the LMOVEs after it ran comes here.
        """
        if isinstance(registered, LoadingError):
            return await self._connection.execute("SADD", self.hosts_key, self.host_id)
        return registered

    async def _run_script(
        self, sha: str, keys: Sequence[str], arguments: Sequence[CommandArg]
    ) -> Any:
        """Run a script by EVALSHA; the connection sends its source when the server lacks it."""
        return await self._connection.execute("EVALSHA", sha, len(keys), *keys, *arguments)

    def _scripts(self) -> list[tuple[str, str]]:
        return list(SCRIPTS.items())


def default_host_id() -> str:
    """Return a host id unique to this process: host name, process id, random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _decode_id(reply: Any) -> str | None:
    return None if reply is None else str(reply.decode())


def _raise_errors(replies: list[Any]) -> list[Any]:
    """Raise the first error reply of a batch; return the replies otherwise."""
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise reply
    return replies


def _check_seconds(name: str, value: object) -> float:
    """Return a positive, finite number of seconds; raise otherwise."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be seconds as a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return float(value)
