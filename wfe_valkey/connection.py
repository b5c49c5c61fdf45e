"""One multiplexed asyncio connection to a Valkey server.

Goals:

- Any number of concurrent callers share one socket. The commands issued
  during one event-loop turn are written in one `transport.write` (one per
  EARLY_FLUSH_BYTES when a turn issues more), and replies resolve their
  callers in the order the commands were written.
- Memory stays bounded when the server stops reading: above the write
  buffer's high-water mark, new commands wait (within their timeout)
  instead of piling up.
- A caller that is cancelled or times out never shifts replies: its entry
  stays in the queue of pending replies, and its reply is read and dropped.
- The connection outlives the socket. When the socket drops, commands
  already written fail with `ConnectionLostError` (they may or may not have
  been applied, so they are never sent again), and a background task
  reconnects with capped, jittered exponential backoff, repeating AUTH,
  SELECT, CLIENT SETNAME and SCRIPT LOAD. Commands issued meanwhile wait
  for the new socket, or fail when their timeout ends. A command that
  times out while nothing at all arrived during its timeout marks the
  server as hung, and the socket is dropped and opened again.

Plan: `_Wire` is the asyncio `Protocol` of one socket; it owns the write
buffer, the pending replies and the command timeouts. `Connection` owns the
current wire, opens new ones, and is what the providers call.

Known limits: the command timeout is one value per connection, which keeps
pending replies in deadline order so one timer serves them all. A command
rejected with LOADING is sent again until its timeout ends; any other error
reply goes to its caller.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import socket
import ssl
from asyncio import Future, InvalidStateError
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import hiredis

from .config import ConnectionSettings, TLSSettings
from .errors import (
    AuthenticationError,
    ConnectionLostError,
    LoadingError,
    NoReplyError,
    NoScriptError,
    ReadOnlyError,
    ReplyError,
    ValkeyConnectionError,
    ValkeyError,
    ValkeyTimeoutError,
)
from .resp import (
    ERROR_REPLY_CLASSES,
    NOT_ENOUGH_DATA,
    UNTYPED_CLASSES,
    CommandArg,
    encode_command,
    evalsha_as_eval,
    raw_reader,
    typed_reply,
)

logger = logging.getLogger(__name__)

ProtocolT = TypeVar("ProtocolT", bound=asyncio.Protocol)

# Reconnect backoff: the first retry comes after about BACKOFF_BASE seconds,
# each later one waits twice as long, up to BACKOFF_CAP, and every wait is
# scaled by a random factor from 0.5 to 1 so that many hosts do not retry
# in step after a server restart.
BACKOFF_BASE: Final = 0.025
BACKOFF_CAP: Final = 1.0

# While reconnecting, a WARNING repeats at most once per this many seconds.
RECONNECT_WARNING_INTERVAL: Final = 60.0

# A command rejected with LOADING is sent again after this many seconds.
LOADING_RETRY_DELAY: Final = 0.1

# Once the socket's write buffer holds more than this many bytes (the
# server is not reading), new commands wait until it drains below
# WRITE_LOW_WATER. Commands of one event-loop turn are written as soon as
# they add up to EARLY_FLUSH_BYTES, so the transport sees the high-water
# mark within the turn. The memory held per socket is thus at most the
# high-water mark plus two early-flush batches, however many callers there are.
# Seconds close() waits for the socket to close after the last reply.
CLOSE_WAIT: Final = 1.0

WRITE_HIGH_WATER: Final = 4 * 1024 * 1024
WRITE_LOW_WATER: Final = 1024 * 1024
EARLY_FLUSH_BYTES: Final = 256 * 1024


class State(enum.Enum):
    """Life-cycle state of a `Connection`."""

    CONNECTING = "connecting"
    READY = "ready"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


# The enum member as a module constant: the hot path compares against it
# without an attribute lookup on the class.
READY: Final = State.READY


class _Batch:
    """Collects the replies of several commands written together."""

    __slots__ = ("expected", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int) -> None:
        self.future = future
        self.replies: list[Any] = []
        self.expected = expected

    def done(self) -> bool:
        return self.future.done()

    def add(self, reply: Any) -> bool:
        """Store one reply; return `True` when it is the last one expected."""
        self.replies.append(reply)
        return len(self.replies) == self.expected

    def all_loading(self) -> bool:
        """Return whether the server rejected every command with LOADING, so that none ran."""
        return all(reply.__class__ is LoadingError for reply in self.replies)

    def resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.replies)

    def set_exception(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _WakeList:
    """Tasks waiting for one event, all woken at once by `wake_all`.

    Unlike `asyncio.Event`, a waiter that is cancelled (its caller timed
    out) costs O(1): its future stays in the list and is skipped at the
    next wake, and the list drops done futures whenever it has doubled.
    An event that thousands of timed-out callers left would cost O(n) each.
    """

    __slots__ = ("_loop", "_prune_at", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: list[asyncio.Future[None]] = []
        self._prune_at = 64

    def wait(self) -> asyncio.Future[None]:
        """Return a future that the next `wake_all` resolves.

        A future rather than a coroutine, so each of many waiting callers
        keeps one object less.
        """
        waiters = self._waiters
        if len(waiters) >= self._prune_at:
            waiters = self._waiters = [waiter for waiter in waiters if not waiter.done()]
            self._prune_at = max(64, 2 * len(waiters))
        waiter: asyncio.Future[None] = self._loop.create_future()
        waiters.append(waiter)
        return waiter

    def wake_all(self) -> None:
        """Wake every task waiting now."""
        waiters = self._waiters
        self._waiters = []
        self._prune_at = 64
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


# One entry per expected reply: who waits for it, when it times out, and
# the encoded command, kept so a LOADING rejection can send it again.
_Pending = tuple["asyncio.Future[Any] | _Batch", float, bytes]


class _Wire(asyncio.Protocol):
    """The protocol of one socket: buffered writes and ordered replies."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: ConnectionSettings,
        on_lost: Callable[[_Wire, str], None],
        scripts: dict[str, str] | None = None,
    ) -> None:
        self._loop = loop
        # SHA1 to source of the scripts the connection loads; an EVALSHA of
        # one of them that meets NOSCRIPT is sent again as EVAL.
        self._scripts = {} if scripts is None else scripts
        self._settings = settings
        self._on_lost = on_lost
        self._timeout = settings.timeout
        self._reader = raw_reader()
        self._transport: asyncio.Transport | None = None
        self._pending: deque[_Pending] = deque()
        self._buffer: list[bytes] = []
        # How many of the pending entries, counted from the first, were written.
        self._written = 0
        self._unsent_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._turn_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = 0
        self._last_received = loop.time()
        self._drained = _WakeList(loop)
        self._closing = False
        # False while the transport's buffer is above its high-water mark or
        # the socket is closing; read on every command, so a plain attribute.
        self.writable = True
        self._lost_reason: str | None = None
        self._server_hung = False
        self.lost = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        """Hand each complete reply to the caller first in line.

        It parses and hands over in one loop, so no list of replies is built
        per read. A plain reply for a single command costs two class tests.
        """
        self._last_received = self._loop.time()
        reader = self._reader
        reader.feed(data)
        next_pending = self._pending.popleft
        count = 0
        try:
            reply = reader.gets()
            while reply is not NOT_ENOUGH_DATA:
                count += 1
                try:
                    waiter, deadline, payload = next_pending()
                except IndexError:
                    self.abort("server sent a reply to no command")
                    return
                if waiter.__class__ is not Future or reply.__class__ in UNTYPED_CLASSES:
                    # The slow path may send commands again and flush them,
                    # which needs the counts of taken entries to be exact.
                    self._count_taken(count)
                    count = 0
                    self._deliver(waiter, deadline, payload, typed_reply(reply))
                else:
                    # Cheaper than a done() test: a try block costs nothing until it raises.
                    try:  # noqa: SIM105 - contextlib.suppress costs more on this path
                        waiter.set_result(reply)
                    except InvalidStateError:
                        pass  # the caller was cancelled or timed out
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self.abort(f"invalid RESP from server: {exc}")
        finally:
            self._count_taken(count)

    def _count_taken(self, count: int) -> None:
        """Account for `count` entries just taken off the front of the pending queue."""
        if self._timed_out:
            self._timed_out = max(0, self._timed_out - count)
        self._written -= count

    def eof_received(self) -> bool:
        """Stop taking commands at once; the transport closes after this."""
        self._closing = True
        self.writable = False
        return False

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        if not self._closing and not self.lost:
            self.writable = True
        self._drained.wake_all()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = self._lost_reason or (str(exc) if exc else "closed by the server")
        self._lost_reason = reason
        self._fail_pending(reason)
        self.writable = False
        self._drained.wake_all()
        if self._timer is not None:
            self._timer.cancel()
        self._on_lost(self, reason)

    # writing

    def wait_writable(self) -> asyncio.Future[None]:
        """Return a future resolved when the write buffer drains below its low-water mark.

        It is also resolved when the socket is lost.
        """
        return self._drained.wait()

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        """Queue one encoded command; return the future of its reply.

        This is `_enqueue` for one command with no earlier deadline, written
        out because every provider call takes this path.
        """
        future: asyncio.Future[Any] = Future(loop=self._loop)
        if self._flush_handle is None:
            self._start_turn()
        deadline = self._turn_deadline
        self._pending.append((future, deadline, payload))
        self._buffer.append(payload)
        unsent_bytes = self._unsent_bytes + len(payload)
        self._unsent_bytes = unsent_bytes
        if unsent_bytes >= EARLY_FLUSH_BYTES:
            self.flush_now()
        return future

    def send_batch(
        self, payloads: Sequence[bytes], deadline: float | None = None
    ) -> asyncio.Future[list[Any]]:
        """Queue several commands; return the future of all their replies.

        `deadline` (event-loop time) replaces the command timeout, for the
        handshake, which has the connect timeout instead.
        """
        future: asyncio.Future[list[Any]] = Future(loop=self._loop)
        batch = _Batch(future, len(payloads))
        self._enqueue(batch, b"".join(payloads), len(payloads), deadline)
        return future

    def _start_turn(self) -> None:
        """Schedule the write for the end of this event-loop turn; fix the turn's deadline.

        The commands of one turn share the deadline taken at the first of
        them, so the clock is read once per turn rather than per command,
        and a command may time out earlier by the time the turn has run.
        """
        loop = self._loop
        self._flush_handle = loop.call_soon(self._flush)
        timeout = self._timeout
        self._turn_deadline = loop.time() + timeout if timeout is not None else 0.0

    def _enqueue(
        self,
        waiter: asyncio.Future[Any] | _Batch,
        payload: bytes,
        replies: int,
        deadline: float | None,
    ) -> None:
        """Put the command in the write buffer and its waiters in line."""
        if self._flush_handle is None:
            self._start_turn()
        if deadline is None:
            deadline = self._turn_deadline
        entry = (waiter, deadline, payload)
        if replies == 1:
            self._pending.append(entry)
        else:
            self._pending.extend([entry] * replies)
        self._buffer.append(payload)
        self._unsent_bytes += len(payload)
        if self._unsent_bytes >= EARLY_FLUSH_BYTES:
            self.flush_now()

    def _flush(self) -> None:
        """Write everything issued during the last event-loop turn at once."""
        self._flush_handle = None
        transport = self._transport
        if transport is None or self.lost or transport.is_closing():
            # A closing transport drops writes, so these commands stay
            # counted as unsent and fail as "not sent".
            return
        buffer = self._buffer
        self._buffer = []
        self._written = len(self._pending)
        self._unsent_bytes = 0
        if len(buffer) == 1:
            transport.write(buffer[0])
        else:
            transport.write(b"".join(buffer))
        if self._timer is None and self._timeout is not None:
            self._arm_timer()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("wrote %d commands to %s", len(buffer), self._settings.address)

    # replies that need more than a hand-over

    def _deliver(
        self, waiter: asyncio.Future[Any] | _Batch, deadline: float, payload: bytes, reply: Any
    ) -> None:
        """Hand over a reply to a batch, an error reply, or an array.

        A batch whose every command met LOADING is sent again after
        LOADING_RETRY_DELAY, as a single command is. A batch with only some
        commands rejected goes to its caller, because the others ran.
        """
        if isinstance(waiter, _Batch):
            if not waiter.add(reply):
                return
            if waiter.all_loading() and self._may_retry_loading(deadline):
                waiter.replies = []
                self._loop.call_later(LOADING_RETRY_DELAY, self._resend, waiter, deadline, payload)
            else:
                waiter.resolve()
        elif waiter.done():
            return
        elif reply.__class__ in ERROR_REPLY_CLASSES:
            self._deliver_error(waiter, deadline, payload, reply)
        else:
            waiter.set_result(reply)

    def _deliver_error(
        self, future: asyncio.Future[Any], deadline: float, payload: bytes, error: ReplyError
    ) -> None:
        """Hand an error reply to its caller, or send the command again.

        A LOADING reply is retried after LOADING_RETRY_DELAY; an EVALSHA of a
        known script that meets NOSCRIPT (the script cache was flushed) is
        sent again at once as EVAL, which also puts the script back in the cache.
        """
        if isinstance(error, LoadingError) and self._may_retry_loading(deadline):
            self._loop.call_later(LOADING_RETRY_DELAY, self._resend, future, deadline, payload)
            return
        if isinstance(error, NoScriptError):
            as_eval = evalsha_as_eval(payload, self._scripts)
            if as_eval is not None:
                self._enqueue(future, as_eval, 1, deadline)
                return
        future.set_exception(error)
        if isinstance(error, ReadOnlyError):
            self.abort("the server is a read-only replica now")

    def _may_retry_loading(self, deadline: float) -> bool:
        """Return whether a command rejected with LOADING can be sent again before its deadline."""
        return self._timeout is None or self._loop.time() + LOADING_RETRY_DELAY < deadline

    def _resend(
        self, waiter: asyncio.Future[Any] | _Batch, deadline: float, payload: bytes
    ) -> None:
        """Send a command or batch again for the same caller, after a LOADING reply.

        NOTE: the resent entry keeps its first deadline but queues behind
        commands with later ones, so if the server then hangs, its timeout
        fires when theirs do, up to one timeout late.
        """
        if waiter.done():
            return
        if self.lost:
            waiter.set_exception(
                ValkeyConnectionError(
                    f"connection to {self._settings.address} lost while the server was loading"
                )
            )
            return
        replies = waiter.expected if isinstance(waiter, _Batch) else 1
        self._enqueue(waiter, payload, replies, deadline)

    # timeouts

    def _expire(self) -> None:
        """Fail every command whose deadline has passed; re-arm for the next one."""
        self._timer = None
        now = self._loop.time()
        index = self._timed_out
        first_new = index
        pending = self._pending
        while index < len(pending):
            waiter, deadline, _ = pending[index]
            if deadline > now:
                break
            if not waiter.done():
                waiter.set_exception(
                    ValkeyTimeoutError(
                        f"no reply from {self._settings.address} within {self._timeout} s"
                    )
                )
            index += 1
        self._timed_out = index

        # A command that waited its whole timeout while not one byte arrived
        # means that the server or the network hangs, so the socket is dropped
        # and a reconnect starts. Callers that were cancelled meanwhile count too.
        expired_any = index > first_new
        if expired_any and now - self._last_received >= (self._timeout or 0.0):
            self._server_hung = True
            self.abort(f"no reply for {self._timeout} s")
            return
        self._arm_timer()

    def cancel_timer(self) -> None:
        """Drop the timeout timer; the next write arms one for its own commands.

        The handshake calls this when it ends. Its timer was armed for the
        connect timeout, which may be later than the deadlines of the
        commands that follow.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm_timer(self) -> None:
        """Run `_expire` at the deadline of the first command not yet timed out, if any."""
        if self._timed_out < len(self._pending):
            deadline = self._pending[self._timed_out][1]
            self._timer = self._loop.call_at(deadline, self._expire)

    # closing

    def abort(self, reason: str) -> None:
        """Drop the socket at once; pending commands fail with `reason`.

        New commands stop going to this socket at once: callers wait until
        `connection_lost` runs and the connection starts to reconnect.
        """
        if self._lost_reason is None:
            self._lost_reason = reason
        self._closing = True
        self.writable = False
        if self._transport is not None:
            self._transport.abort()

    def flush_now(self) -> None:
        """Write the buffered commands without waiting for the turn to end."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def close(self) -> None:
        """Close the socket once the write buffer is sent; stop reading."""
        self.flush_now()
        self._lost_reason = self._lost_reason or "connection closed by the client"
        self._closing = True
        self.writable = False
        if self._transport is not None:
            self._transport.close()

    @property
    def lost_reason(self) -> str | None:
        """Why the socket dropped, once it has."""
        return self._lost_reason

    @property
    def pending_count(self) -> int:
        """How many replies this socket still expects."""
        return len(self._pending)

    def _fail_pending(self, reason: str) -> None:
        """Fail every waiting caller: written commands and unsent ones differ."""
        address = self._settings.address
        written = self._written
        for position, (waiter, _, _) in enumerate(self._pending):
            if waiter.done():
                continue
            if position < written and self._server_hung:
                waiter.set_exception(
                    NoReplyError(
                        f"no reply from {address} within {self._timeout} s, so the connection "
                        "was dropped after the command was written; it may or may not have "
                        "been applied"
                    )
                )
            elif position < written:
                waiter.set_exception(
                    ConnectionLostError(
                        f"connection to {address} lost ({reason}) after the command was "
                        "written; it may or may not have been applied"
                    )
                )
            else:
                waiter.set_exception(
                    ValkeyConnectionError(
                        f"connection to {address} lost ({reason}); the command was not sent"
                    )
                )
        self._pending.clear()
        self._buffer.clear()
        self._written = 0
        self._unsent_bytes = 0


class Connection:
    """A multiplexed connection that reconnects by itself.

    `execute` and `execute_many` may be called by any number of concurrent
    tasks. Open one with `await Connection.open(settings)`; close it with
    `await connection.close()`.
    """

    def __init__(self, settings: ConnectionSettings, client_name: str) -> None:
        self.settings = settings
        self._client_name = settings.client_name or client_name
        self._loop = asyncio.get_running_loop()
        self._wire: _Wire | None = None
        self._ready = _WakeList(self._loop)
        self._scripts: dict[str, str] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._ssl_context_source: TLSSettings | None = None
        self.state = State.CONNECTING

    @classmethod
    async def open(
        cls,
        settings: ConnectionSettings,
        client_name: str = "wfe-valkey",
        scripts: Iterable[tuple[str, str]] = (),
    ) -> Connection:
        """Connect, authenticate and load `scripts` (pairs of SHA1 and source).

        Raises `ValkeyConnectionError`, `ValkeyTimeoutError` or
        `AuthenticationError` when the first connect fails; later drops are
        repaired in the background. A server still loading its dataset is
        asked again until the connect timeout ends, then `LoadingError`.
        """
        connection = cls(settings, client_name)
        connection._scripts.update(scripts)
        await connection._connect_first()
        logger.info("connected to %s as %s", settings.address, connection._client_name)
        return connection

    def __repr__(self) -> str:
        return f"<Connection {self.settings.address} {self.state.value}>"

    # commands

    def execute(self, *args: CommandArg) -> Awaitable[Any]:
        """Send one command; the awaitable gives its reply or raises its error.

        Raises `ValueError` at once, before anything is sent, when an
        argument cannot be encoded.
        """
        return self.execute_encoded(encode_command(args), None)

    def execute_encoded(self, payload: bytes, key: bytes | None) -> Awaitable[Any]:
        """Send one command already encoded as RESP; await its reply as from `execute`.

        `key` is the key that routes the command on a cluster, or `None`
        for a command without keys; a single server ignores it. The
        providers build the bytes of their few commands from parts encoded
        once, which costs a fraction of encoding every argument again.
        """
        wire = self._wire
        if wire is not None and wire.writable and self.state is READY:
            return wire.send(payload)
        return self._send_when_ready([payload], single=True)

    def execute_many(self, commands: Sequence[tuple[CommandArg, ...]]) -> Awaitable[list[Any]]:
        """Send several commands in one write; the awaitable gives all replies.

        Error replies are returned in the list as `ReplyError` instances,
        in the position of their command, not raised.
        """
        payloads = [encode_command(args) for args in commands]
        return self.execute_many_encoded(payloads, [None] * len(payloads))

    def execute_many_encoded(
        self, payloads: list[bytes], keys: Sequence[bytes | None]
    ) -> Awaitable[list[Any]]:
        """`execute_many` for commands already encoded as RESP.

        `keys` gives each command's routing key, as for `execute_encoded`;
        a single server ignores them.
        """
        if len(keys) != len(payloads):
            raise ValueError(
                f"keys must hold one key (or None) per command: {len(payloads)} commands, "
                f"{len(keys)} keys"
            )
        wire = self._wire
        if wire is not None and wire.writable and self.state is READY:
            return wire.send_batch(payloads)
        return self._send_when_ready(payloads, single=False)

    async def _send_when_ready(self, payloads: list[bytes], single: bool) -> Any:
        """Wait for a usable socket, then send; the whole call has one timeout.

        The timeout counts from the call, so a command that waited for a
        reconnect has only the rest of it left for its reply.
        """
        timeout = self.settings.timeout
        deadline = None if timeout is None else self._loop.time() + timeout
        sent = False
        try:
            async with asyncio.timeout_at(deadline):
                wire = await self._usable_wire()
                sent = True
                if single:
                    return await wire.send(payloads[0])
                return await wire.send_batch(payloads)
        except ValkeyTimeoutError:
            raise
        except TimeoutError:
            raise self._timeout_error(timeout, sent) from None

    async def _usable_wire(self) -> _Wire:
        """Return the current socket once it is connected and below its high-water mark."""
        while True:
            if self.state is State.CLOSED:
                raise ValkeyConnectionError(f"connection to {self.settings.address} is closed")
            wire = self._wire
            if wire is not None and self.state is State.READY:
                if wire.writable:
                    return wire
                await wire.wait_writable()
            else:
                await self._ready.wait()

    def _timeout_error(self, timeout: float | None, sent: bool) -> ValkeyTimeoutError:
        """Describe a command timeout: no reply, no connection, or a full write buffer."""
        address = self.settings.address
        if sent:
            return ValkeyTimeoutError(f"no reply from {address} within {timeout} s")
        if self.state is State.READY:
            return ValkeyTimeoutError(
                f"{address} did not read the commands already sent within {timeout} s"
            )
        reason = f"; last attempt: {self._last_error}" if self._last_error else ""
        return ValkeyTimeoutError(f"{address} not reachable within {timeout} s{reason}")

    def register_script(self, sha: str, source: str) -> None:
        """Load `source` on every future connect.

        It is not loaded now, but an EVALSHA of it that meets NOSCRIPT is
        sent again as EVAL, so callers may use EVALSHA at once.
        """
        self._scripts[sha] = source

    # connecting

    async def _connect_once(self) -> None:
        """Open a socket, run the handshake and make it the current wire."""
        wire = await self._open_wire()
        try:
            await self._handshake(wire)
        except BaseException:
            wire.abort("handshake failed")
            raise
        self._wire = wire
        self.state = State.READY
        self._ready.wake_all()

    async def _connect_first(self) -> None:
        """Connect once, retrying while the server replies LOADING, up to the connect timeout."""
        connect_timeout = self.settings.connect_timeout
        deadline = None if connect_timeout is None else self._loop.time() + connect_timeout
        while True:
            try:
                await self._connect_once()
                return
            except LoadingError:
                if deadline is not None and self._loop.time() + LOADING_RETRY_DELAY >= deadline:
                    raise
            await asyncio.sleep(LOADING_RETRY_DELAY)

    async def _resolve_target(self) -> ConnectionSettings:
        """Return the settings of the server to connect to now.

        A plain connection always goes to its configured address; a subclass
        may ask a discovery service (Sentinel) first.
        """
        return self.settings

    async def _open_wire(self) -> _Wire:
        """Open the socket (TCP, TLS or Unix) within the connect timeout."""
        settings = await self._resolve_target()

        def factory() -> _Wire:
            return _Wire(self._loop, settings, self._on_wire_lost, self._scripts)

        return await open_socket(settings, factory, self._ssl_context_for(settings.tls))

    def _ssl_context_for(self, tls: TLSSettings | None) -> ssl.SSLContext | None:
        """Return the SSL context for `tls`, built once and reused on every reconnect.

        Raises `InvalidURLError` naming the option when a certificate or key
        file cannot be loaded.
        """
        if tls is None:
            return None
        if self._ssl_context is None or self._ssl_context_source is not tls:
            self._ssl_context = tls.create_context()
            self._ssl_context_source = tls
        return self._ssl_context

    async def _handshake(self, wire: _Wire) -> None:
        """Authenticate, select the database, name the client, load scripts."""
        settings = self.settings
        commands = handshake_commands(settings, self._client_name)
        commands.extend(("SCRIPT", "LOAD", source) for source in self._scripts.values())

        # The wire's own deadline for these commands is the connect timeout
        # too, rather than the shorter command timeout.
        connect_timeout = settings.connect_timeout
        deadline = math.inf if connect_timeout is None else self._loop.time() + connect_timeout
        try:
            async with asyncio.timeout(connect_timeout):
                replies = await wire.send_batch([encode_command(c) for c in commands], deadline)
        except TimeoutError:
            raise ValkeyTimeoutError(
                f"handshake with {settings.address} timed out after {settings.connect_timeout} s"
            ) from None
        except ValkeyConnectionError:
            raise ValkeyConnectionError(self._lost_in_handshake(wire.lost_reason)) from None
        wire.cancel_timer()
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, ReplyError):
                raise self._handshake_error(command, reply)

    def _lost_in_handshake(self, reason: str | None) -> str:
        """Describe a socket that dropped during the handshake, with a hint for TLS."""
        message = f"handshake with {self.settings.address} failed: connection lost ({reason})"
        hint = _client_certificate_hint(reason or "")
        tls = self.settings.tls
        if not hint and tls is not None and tls.certfile is None:
            # Under TLS 1.3 a server that rejects the missing client
            # certificate may only reset the socket, after the TLS handshake.
            hint = "; if the server requires a client certificate, set ssl_certfile and ssl_keyfile"
        return message + hint

    def _handshake_error(self, command: tuple[CommandArg, ...], reply: ReplyError) -> ValkeyError:
        """Describe a failed handshake step without revealing the password."""
        address = self.settings.address
        if command[0] == "AUTH" or isinstance(reply, AuthenticationError):
            user = self.settings.username or "default"
            return AuthenticationError(
                f"authentication as user {user!r} failed at {address}: {reply}", code=reply.code
            )
        return type(reply)(
            f"{command[0]!s} {command[1]!s} failed at {address}: {reply}", code=reply.code
        )

    def _on_wire_lost(self, wire: _Wire, reason: str) -> None:
        """Start reconnecting when the current socket drops."""
        if wire is not self._wire or self.state is State.CLOSED:
            return
        logger.warning("connection to %s lost: %s", self.settings.address, reason)
        self.state = State.RECONNECTING
        self._reconnect_task = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Connect again with capped, jittered exponential backoff.

        Failed attempts are logged at DEBUG, and at WARNING at most once
        every RECONNECT_WARNING_INTERVAL seconds while the outage lasts.
        """
        attempt = 0
        started = self._loop.time()
        last_warning = started
        while self.state is State.RECONNECTING:
            try:
                await self._connect_once()
            except (ValkeyError, OSError) as exc:
                self._last_error = str(exc)
            except Exception as exc:
                # Anything else is a defect, but giving up would leave every
                # caller waiting for a connection that never comes back.
                logger.exception("reconnect attempt to %s failed", self.settings.address)
                self._last_error = f"{type(exc).__name__}: {exc}"
            else:
                logger.info(
                    "reconnected to %s after %d failed attempts", self.settings.address, attempt
                )
                self._last_error = None
                return

            attempt += 1
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
            logger.debug(
                "reconnect attempt %d to %s failed (%s); next in %.3f s",
                attempt,
                self.settings.address,
                self._last_error,
                delay,
            )
            now = self._loop.time()
            if now - last_warning >= RECONNECT_WARNING_INTERVAL:
                last_warning = now
                logger.warning(
                    "still reconnecting to %s after %d attempts in %.0f s: %s",
                    self.settings.address,
                    attempt,
                    now - started,
                    self._last_error,
                )
            await asyncio.sleep(delay)

    # closing

    async def close(self) -> None:
        """Close the connection; waits up to the timeout for pending replies.

        Idempotent. Commands issued after this raise `ValkeyConnectionError`.
        """
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._ready.wake_all()
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        wire = self._wire
        if wire is None:
            return
        wire.flush_now()
        await self._wait_for_replies(wire)
        wire.close()
        await self._wait_for_socket_closed(wire)
        logger.info("closed connection to %s", self.settings.address)

    async def _wait_for_socket_closed(self, wire: _Wire) -> None:
        """Wait for the socket to close; abort it if that takes over CLOSE_WAIT seconds.

        A TLS close waits for the server's reply to its close_notify, which
        a hung server never sends.
        """
        deadline = self._loop.time() + CLOSE_WAIT
        while not wire.lost:
            if self._loop.time() >= deadline:
                wire.abort("close timed out")
                deadline = float("inf")
            await asyncio.sleep(0.001)

    async def _wait_for_replies(self, wire: _Wire) -> None:
        """Wait until every written command has its reply, up to the timeout."""
        timeout = self.settings.timeout
        deadline = self._loop.time() + (timeout if timeout is not None else 5.0)
        while wire.pending_count and not wire.lost:
            if self._loop.time() >= deadline:
                wire.abort("close timed out waiting for replies")
                return
            await asyncio.sleep(0.002)


async def open_socket(
    settings: ConnectionSettings,
    factory: Callable[[], ProtocolT],
    ssl_context: ssl.SSLContext | None,
) -> ProtocolT:
    """Open a TCP, TLS or Unix socket within the connect timeout; return its protocol.

    Failures become `ValkeyTimeoutError` or `ValkeyConnectionError` naming
    the address, with a hint for the TLS option to check.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(settings.connect_timeout):
            if settings.unix_path is not None:
                _, protocol = await loop.create_unix_connection(factory, settings.unix_path)
            else:
                _, protocol = await loop.create_connection(
                    factory, settings.host, settings.port, ssl=ssl_context
                )
    except TimeoutError:
        raise ValkeyTimeoutError(
            f"connect to {settings.address} timed out after {settings.connect_timeout} s"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise ValkeyConnectionError(
            f"TLS handshake with {settings.address} failed: certificate verify failed: "
            f"{exc.verify_message}; check ssl_ca_certs (the CA that signed the server's "
            "certificate), or ssl_check_hostname when the host name differs"
        ) from None
    except ssl.SSLError as exc:
        raise ValkeyConnectionError(
            f"TLS handshake with {settings.address} failed: {exc.reason or exc}"
            + _client_certificate_hint(str(exc))
        ) from None
    except OSError as exc:
        raise ValkeyConnectionError(
            f"cannot connect to {settings.address}: {exc.strerror or exc}"
        ) from None
    return protocol


def handshake_commands(
    settings: ConnectionSettings, client_name: str
) -> list[tuple[CommandArg, ...]]:
    """Return the commands every new socket sends first: AUTH, SELECT, CLIENT SETNAME."""
    commands = auth_commands(settings)
    if settings.db:
        commands.append(("SELECT", settings.db))
    commands.append(("CLIENT", "SETNAME", client_name))
    return commands


def auth_commands(settings: ConnectionSettings) -> list[tuple[CommandArg, ...]]:
    """Return the AUTH command for the settings' credentials, if any."""
    if settings.password is None:
        return []
    if settings.username is not None:
        return [("AUTH", settings.username, settings.password)]
    return [("AUTH", settings.password)]


def _client_certificate_hint(reason: str) -> str:
    """Return a hint to add to a TLS failure caused by a missing client certificate."""
    if "CERTIFICATE_REQUIRED" in reason:
        return "; the server requires a client certificate (ssl_certfile, ssl_keyfile)"
    return ""
