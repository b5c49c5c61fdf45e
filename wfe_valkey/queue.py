"""The work queue provider.

Each queue type is one list, ``{prefix}:queue:{workflow|event|index}``.
Ids go in with `LPUSH` and come out with `RPOP`, so the oldest comes first.

With `dequeue_wait`, `dequeue_work` waits up to that many seconds for an
id with `BRPOP`. A blocking command on the shared connection would stall
every caller on it, so each waiting dequeue borrows a connection of its
own from a small pool (`WaitingDequeues`), opened on first use and kept
for reuse. Ids still travel through the same list, so waiting and polling
hosts, Python or Rust, share one queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Self

from ._provider import ValkeyProvider, check_prefix, open_connection, reject_id
from .cluster import ClusterConnection
from .connection import Connection
from .contracts import QueueType
from .errors import ValkeyConnectionError, ValkeyError
from .resp import BETWEEN_PARTS, CommandArg, command_head, encode_command

logger = logging.getLogger(__name__)

# Four connections let one dequeue wait on each of the three queue types,
# with one to spare.
DEFAULT_DEQUEUE_CONNECTIONS: Final = 4

# RPOP takes its count as a signed 64-bit integer.
MAX_COUNT: Final = 2**63 - 1

# Returned by `WaitingDequeues.run` when no connection came free in time.
NO_CONNECTION: Final = object()


class WaitingDequeues:
    """A pool of connections that run blocking pops (BRPOP, BLMOVE).

    At most `size` blocking commands run at once. A caller beyond that
    waits up to `wait` seconds for a free connection. Each connection's
    command timeout is the shared one plus `wait`, so a pop that waits the
    full time does not time out.

    A caller cancelled while its pop waits leaves the pop running on the
    server. The pool then sends ``CLIENT UNBLOCK`` and, if the pop still
    took an id, hands the reply to `put_back` so the id is not lost.

    `open_connection` opens one pooled connection, of the same kind as the
    provider's (plain, Sentinel or cluster). On a cluster, `can_unblock` is
    `False`, because a CLIENT ID would come from any node rather than the
    node running the pop. Closing and cancelling then wait for the pop to
    end by itself, up to `wait`.
    """

    def __init__(
        self,
        open_connection: Callable[[], Awaitable[Connection]],
        wait: float,
        size: int,
        can_unblock: bool,
        address: str,
    ) -> None:
        self.wait = wait
        self.size = size
        self.can_unblock = can_unblock
        self._open_connection = open_connection
        self._address = address
        self._idle: list[Connection] = []
        self._busy: dict[Connection, asyncio.Future[Any] | None] = {}
        self._opened: set[Connection] = set()
        self._slots = asyncio.Semaphore(size)
        self._recoveries: set[asyncio.Task[None]] = set()
        self.closed = False

    async def run(
        self,
        command: tuple[CommandArg, ...],
        shared: Connection,
        put_back: Callable[[Any], Awaitable[object]],
    ) -> Any:
        """Run one blocking command on a pooled connection and return its reply.

        Returns `NO_CONNECTION` when every connection stayed busy for `wait`
        seconds, and `None`, the reply of an empty wait, when the pool is
        closed while the caller waits for a connection or for the reply.
        Raises `ValkeyConnectionError` when the pool was already closed.
        `shared` is the provider's own connection, used to unblock a pop
        whose caller was cancelled.
        """
        if self.closed:
            raise ValkeyConnectionError(f"queue provider for {self._address} is closed")
        try:
            async with asyncio.timeout(self.wait):
                await self._slots.acquire()
        except TimeoutError:
            return None if self.closed else NO_CONNECTION
        try:
            connection = await self._checkout()
        except BaseException:
            self._slots.release()
            raise
        if connection is None:
            self._slots.release()
            return None

        client_id: asyncio.Future[Any] | None = None
        if self.can_unblock:
            client_id = asyncio.ensure_future(connection.execute("CLIENT", "ID"))
            client_id.add_done_callback(_retrieve_failure)
        reply = asyncio.ensure_future(connection.execute(*command))
        self._busy[connection] = client_id
        try:
            result = await asyncio.shield(reply)
        except asyncio.CancelledError:
            recovery = asyncio.get_running_loop().create_task(
                self._recover(connection, client_id, reply, shared, put_back)
            )
            self._recoveries.add(recovery)
            recovery.add_done_callback(self._recoveries.discard)
            raise
        except BaseException:
            self._checkin(connection)
            raise
        self._checkin(connection)
        return result

    async def close(self, shared: Connection) -> None:
        """Unblock every waiting pop, then close every connection. Idempotent.

        The callers of unblocked pops get the reply of an empty wait. Every
        connection the pool opened is closed, including those of pops whose
        callers were cancelled and that are still being recovered.
        """
        self.closed = True
        for client_id in list(self._busy.values()):
            if client_id is not None:
                await _unblock(shared, client_id)
        while self._recoveries:
            await asyncio.gather(*self._recoveries, return_exceptions=True)
        connections = list(self._opened)
        self._opened.clear()
        self._idle = []
        await asyncio.gather(*(connection.close() for connection in connections))

    async def _checkout(self) -> Connection | None:
        """Take an idle connection, or open a new one; `None` once the pool is closed."""
        if self.closed:
            return None
        if self._idle:
            return self._idle.pop()
        connection = await self._open_connection()
        if self.closed:
            await connection.close()
            return None
        self._opened.add(connection)
        return connection

    def _checkin(self, connection: Connection) -> None:
        """Give a connection back after its pop finished, and free its slot."""
        self._busy.pop(connection, None)
        if not self.closed:
            self._idle.append(connection)
        self._slots.release()

    async def _recover(
        self,
        connection: Connection,
        client_id: asyncio.Future[Any] | None,
        reply: asyncio.Future[Any],
        shared: Connection,
        put_back: Callable[[Any], Awaitable[object]],
    ) -> None:
        """Unblock a pop whose caller was cancelled; put back an id it still took."""
        try:
            if not reply.done() and client_id is not None:
                await _unblock(shared, client_id)
            try:
                result = await reply
            except ValkeyError as error:
                logger.warning("waiting dequeue failed after its caller left: %s", error)
                return
            if result is not None:
                await put_back(result)
        except ValkeyError as error:
            logger.error("could not put back an id taken for a cancelled dequeue: %s", error)
        finally:
            self._checkin(connection)


def _retrieve_failure(future: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: the pop's own reply reports the same failure."""
    if not future.cancelled():
        future.exception()


async def _unblock(shared: Connection, client_id: asyncio.Future[Any]) -> None:
    """Send CLIENT UNBLOCK for the connection whose CLIENT ID is `client_id`."""
    try:
        await shared.execute("CLIENT", "UNBLOCK", await client_id)
    except ValkeyError as error:
        # NOTE: without CLIENT UNBLOCK (an ACL may forbid it), closing waits
        # for the pop to end by itself, up to the dequeue wait.
        logger.warning("could not unblock a waiting dequeue: %s", error)


class ValkeyQueueProvider(ValkeyProvider):
    """FIFO work queues for workflow, event and index ids."""

    client_name = "wfe-valkey-queue"

    def __init__(
        self,
        connection: Connection,
        prefix: str,
        dequeue_wait: float | None = None,
        dequeue_connections: int = DEFAULT_DEQUEUE_CONNECTIONS,
    ) -> None:
        super().__init__(connection, prefix)
        self._keys = {queue_type: f"{prefix}:queue:{queue_type.value}" for queue_type in QueueType}
        # Per queue type: the key, the LPUSH encoded but for its id, and the
        # whole RPOP (see `resp.BETWEEN_PARTS`).
        self._commands = {
            queue_type: (key.encode(), command_head(3, "LPUSH", key), encode_command(("RPOP", key)))
            for queue_type, key in self._keys.items()
        }
        self.dequeue_wait = _check_dequeue_wait(dequeue_wait)
        self.dequeue_connections = _check_connection_count(dequeue_connections)
        self._url: str | None = None
        self._options: dict[str, Any] = {}
        self._waiting = self._new_pool()

    @classmethod
    async def new(
        cls,
        url: str,
        prefix: str,
        *,
        dequeue_wait: float | None = None,
        dequeue_connections: int = DEFAULT_DEQUEUE_CONNECTIONS,
        **options: Any,
    ) -> Self:
        """Connect to `url` and return a provider for queues under `prefix`.

        With `dequeue_wait` in seconds, `dequeue_work` waits up to that long
        for an id, on connections of its own: at most `dequeue_connections`
        dequeues wait at once, and a further one first waits for a free
        connection, then polls once. Other `options` are connection
        options, as for `ValkeyLockProvider.new`.
        """
        prefix = check_prefix(prefix)
        _check_dequeue_wait(dequeue_wait)
        _check_connection_count(dequeue_connections)
        connection = await open_connection(url, options, cls.client_name)
        provider = cls(connection, prefix, dequeue_wait, dequeue_connections)
        provider._remember_url(url, options)
        return provider

    async def _open(self) -> None:
        """Open the connection again if `stop()` closed it, with a new dequeue pool."""
        await super()._open()
        if self._waiting is not None and self._waiting.closed:
            self._waiting = self._new_pool()

    async def _close(self) -> None:
        """End waiting dequeues and close every connection."""
        if self._waiting is not None:
            await self._waiting.close(self._connection)
        await super()._close()

    def _remember_url(self, url: str, options: dict[str, Any]) -> None:
        """Keep what `new()` connected with, to open waiting connections alike."""
        self._url = url
        self._options = dict(options)

    def _new_pool(self) -> WaitingDequeues | None:
        if self.dequeue_wait is None:
            return None
        return WaitingDequeues(
            self._open_waiting_connection,
            self.dequeue_wait,
            self.dequeue_connections,
            can_unblock=not isinstance(self._connection, ClusterConnection),
            address=self.settings.address,
        )

    async def _open_waiting_connection(self) -> Connection:
        """Open a connection like the shared one, with a timeout longer by the wait."""
        assert self.dequeue_wait is not None
        timeout = self.settings.timeout
        longer = None if timeout is None else timeout + self.dequeue_wait
        client_name = f"{self.client_name}-wait"
        if self._url is None:
            settings = dataclasses.replace(self.settings, timeout=longer)
            return await Connection.open(settings, client_name)
        options = {**self._options, "timeout": longer}
        return await open_connection(self._url, options, client_name)

    def queue_key(self, queue_type: QueueType) -> str:
        """The list key that contains the queue of `queue_type`."""
        try:
            return self._keys[queue_type]
        except (KeyError, TypeError):
            raise _not_a_queue_type(queue_type) from None

    async def queue_work(self, id: str, queue_type: QueueType) -> None:
        """Append `id` to the queue; the same id may be queued more than once."""
        if id.__class__ is not str or not id or not id.isascii():
            reject_id("id", id)
        try:
            key, push_head, _ = self._commands[queue_type]
        except (KeyError, TypeError):
            raise _not_a_queue_type(queue_type) from None
        raw = id.encode()
        payload = BETWEEN_PARTS % (push_head, len(raw), raw, b"")
        await self._connection.execute_encoded(payload, key)

    async def dequeue_work(self, queue_type: QueueType) -> str | None:
        """Take the oldest id of the queue, or `None` when it is empty.

        Without `dequeue_wait` this returns at once. With it, this waits up
        to `dequeue_wait` seconds for an id, and gives `None` also when the
        provider is stopped during the wait, including while the dequeue
        waits for a free connection. On a provider already stopped it
        raises `ValkeyConnectionError`.
        """
        if self._waiting is not None:
            return await self._dequeue_waiting(queue_type)
        try:
            key, _, pop = self._commands[queue_type]
        except (KeyError, TypeError):
            raise _not_a_queue_type(queue_type) from None
        reply = await self._connection.execute_encoded(pop, key)
        return None if reply is None else reply.decode()

    async def _dequeue_waiting(self, queue_type: QueueType) -> str | None:
        """Wait for an id with BRPOP on a pooled connection."""
        key = self.queue_key(queue_type)
        assert self._waiting is not None and self.dequeue_wait is not None

        async def put_back(reply: list[bytes]) -> None:
            await self._connection.execute("RPUSH", key, reply[1])

        reply = await self._waiting.run(
            ("BRPOP", key, self.dequeue_wait), self._connection, put_back
        )
        if reply is NO_CONNECTION:
            reply = await self._connection.execute("RPOP", key)
            return None if reply is None else str(reply.decode())
        return None if reply is None else str(reply[1].decode())

    async def queue_work_many(self, ids: Iterable[str], queue_type: QueueType) -> None:
        """Append several ids in one `LPUSH`; they come out in the order given.

        Every id is checked before anything is sent, so a bad id queues none.
        """
        key = self.queue_key(queue_type)
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be an iterable of str, not a single string")
        if not isinstance(ids, (list, tuple)):
            ids = list(ids)
        if not _all_plain_ids(ids):
            for id in ids:
                reject_id("each id", id)
        if not ids:
            return
        await self._connection.execute("LPUSH", key, *ids)

    async def dequeue_work_many(self, queue_type: QueueType, count: int) -> list[str]:
        """Take up to `count` of the oldest ids, oldest first; `[]` when empty."""
        key = self.queue_key(queue_type)
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"count must be an int, got {type(count).__name__}")
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"count must be from 1 to {MAX_COUNT}, got {count}")
        reply = await self._connection.execute("RPOP", key, count)
        return [] if reply is None else list(map(bytes.decode, reply))

    def is_dequeue_blocking(self) -> bool:
        """`True` when `dequeue_work` waits for work (`dequeue_wait` set), else `False`."""
        return self.dequeue_wait is not None


def _all_plain_ids(ids: list[str] | tuple[str, ...]) -> bool:
    """Return whether every id is a non-empty ASCII `str`, tested in C rather than per id.

    `False` means only that some id needs `reject_id`, which also accepts
    non-empty ids that are not ASCII but encode as UTF-8.
    """
    try:
        return "".join(ids).isascii() and all(ids)
    except TypeError:
        return False


def _not_a_queue_type(queue_type: object) -> TypeError:
    return TypeError(f"queue_type must be a QueueType, got {queue_type!r}")


def _check_dequeue_wait(wait: object) -> float | None:
    """Return the dequeue wait in seconds if it is positive and finite, or `None`."""
    if wait is None:
        return None
    if not isinstance(wait, (int, float)) or isinstance(wait, bool):
        raise TypeError(f"dequeue_wait must be seconds as a number, got {type(wait).__name__}")
    if not math.isfinite(wait) or wait <= 0:
        raise ValueError(f"dequeue_wait must be a positive number of seconds, got {wait}")
    return float(wait)


def _check_connection_count(count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"dequeue_connections must be an int, got {type(count).__name__}")
    if count < 1:
        raise ValueError(f"dequeue_connections must be 1 or more, got {count}")
    return count
