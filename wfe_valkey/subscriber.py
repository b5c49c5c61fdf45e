"""The lifecycle subscriber: lifecycle events as an async iterator.

A subscriber owns one socket in subscribe mode, separate from the
request/reply connection the providers share, because a socket in that
mode only accepts SUBSCRIBE, UNSUBSCRIBE and PING and receives messages
the server pushes at any time.

Goals:

- `subscribe()` returns only once the server has confirmed the channel, so
  a caller may publish right after it and still receive the event.
- After the socket drops, the subscriber reconnects with capped, jittered
  backoff, repeats AUTH, SELECT and CLIENT SETNAME, and subscribes to every
  channel again. A PING every `health_check_interval` seconds detects a
  server that stopped replying without closing the socket.
- A payload that is not a valid lifecycle event is logged and skipped.

Known limits: pub/sub delivers at most once. Events published while the
socket is down, or while a channel is being subscribed again, are lost.
Each subscription buffers up to `buffer_size` events for a slow reader and
drops newer events beyond that, logging how many.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final, Self

from ._provider import check_prefix, reject_id
from .cluster import take_cluster_option
from .config import DEFAULT_CONNECT_TIMEOUT, ConnectionSettings, parse_url
from .connection import BACKOFF_BASE, BACKOFF_CAP, handshake_commands, open_socket
from .errors import (
    AuthenticationError,
    ProtocolError,
    ReplyError,
    ValkeyConnectionError,
    ValkeyError,
    ValkeyTimeoutError,
)
from .events import InvalidEventError, LifecycleEvent
from .resp import CommandArg, ReplyParser, encode_command
from .sentinel import SentinelSettings, ask_for_primary, is_sentinel_url, parse_sentinel_url

logger = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE: Final = 10_000
DEFAULT_HEALTH_CHECK_INTERVAL: Final = 5.0

# Log a dropped event the first time, then once per this many drops.
DROP_LOG_EVERY: Final = 1000

# Marks the end of a subscription's events in its queue.
_END: Final = object()


class _Channel:
    """One channel: its subscriptions, and whether the server confirmed it."""

    __slots__ = ("confirmed", "error", "name", "subscriptions")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscriptions: set[LifecycleSubscription] = set()
        self.confirmed = False
        self.error: ReplyError | None = None


# The command each reply in subscribe mode belongs to, oldest first: the command's
# name, the channel it names (or None for PING), and who waits for it.
_Outstanding = tuple[str, "_Channel | None", "asyncio.Future[Any] | None"]


class _PubSubWire(asyncio.Protocol):
    """The protocol of one subscribe-mode socket.

    Replies to the handshake resolve futures in order. After the handshake,
    each reply is a pushed message or the reply to a SUBSCRIBE,
    UNSUBSCRIBE or PING, handed to `on_push` with the command it belongs to.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_push: Callable[[list[Any], _Outstanding | None], None],
        on_lost: Callable[[_PubSubWire, str], None],
    ) -> None:
        self._loop = loop
        self._on_push = on_push
        self._on_lost = on_lost
        self._parser = ReplyParser()
        self._transport: asyncio.Transport | None = None
        self._handshake: deque[asyncio.Future[Any]] = deque()
        self._outstanding: deque[_Outstanding] = deque()
        self._lost_reason: str | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.parse(data)
        except ProtocolError as exc:
            self.abort(str(exc))
            return
        for reply in replies:
            if self._handshake:
                future = self._handshake.popleft()
                if not future.done():
                    future.set_result(reply)
            else:
                self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        """Pair a subscribe-mode reply with its command, then pass it on."""
        kind = reply[0] if isinstance(reply, list) and reply else None
        if kind in (b"message", b"pmessage"):
            self._on_push(reply, None)
            return
        if not self._outstanding:
            self.abort("server sent a reply to no command")
            return
        self._on_push(reply if isinstance(reply, list) else [reply], self._outstanding.popleft())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = self._lost_reason or (str(exc) if exc else "closed by the server")
        for future in self._handshake:
            if not future.done():
                future.set_exception(ValkeyConnectionError(f"connection lost: {reason}"))
        self._handshake.clear()
        for _, _, waiter in self._outstanding:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ValkeyConnectionError(f"connection lost: {reason}"))
        self._outstanding.clear()
        self._on_lost(self, reason)

    def request(self, args: tuple[CommandArg, ...]) -> asyncio.Future[Any]:
        """Send a handshake command; return the future of its reply."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._handshake.append(future)
        self._write(encode_command(args))
        return future

    def send(
        self,
        args: tuple[CommandArg, ...],
        channel: _Channel | None,
        waiter: asyncio.Future[Any] | None = None,
    ) -> None:
        """Send a subscribe-mode command; `waiter` gets its reply."""
        self._outstanding.append((str(args[0]), channel, waiter))
        self._write(encode_command(args))

    def _write(self, payload: bytes) -> None:
        if self._transport is not None and not self.lost:
            self._transport.write(payload)

    def abort(self, reason: str) -> None:
        """Drop the socket at once."""
        if self._lost_reason is None:
            self._lost_reason = reason
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close the socket after sending what is buffered."""
        self._lost_reason = self._lost_reason or "subscriber closed"
        if self._transport is not None:
            self._transport.close()


class LifecycleSubscription:
    """Lifecycle events from one channel, in the order the server sent them.

    Iterate with ``async for``; iteration ends when the subscription or its
    subscriber is closed. `dropped` counts events lost because the
    subscriber's `buffer_size` events were already waiting to be read.
    """

    def __init__(self, subscriber: ValkeyLifecycleSubscriber, channel: str) -> None:
        self._subscriber = subscriber
        self.channel = channel
        self.dropped = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    def __repr__(self) -> str:
        return f"<LifecycleSubscription channel={self.channel!r} closed={self.closed}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LifecycleEvent:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        event: LifecycleEvent = item
        return event

    async def close(self) -> None:
        """Stop receiving; unsubscribe the channel if no one else reads it. Idempotent."""
        if self.closed:
            return
        self._end()
        self._subscriber._detach(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _deliver(self, event: LifecycleEvent, buffer_size: int) -> None:
        """Queue one event for the reader, or drop it when the buffer is full."""
        if self._queue.qsize() >= buffer_size:
            self.dropped += 1
            if self.dropped % DROP_LOG_EVERY == 1:
                logger.warning(
                    "dropped %d lifecycle events on %s: the buffer of %d unread events is full",
                    self.dropped,
                    self.channel,
                    buffer_size,
                )
            return
        self._queue.put_nowait(event)

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_END)


class ValkeyLifecycleSubscriber:
    """Receives lifecycle events that any host, Rust or Python, publishes.

    Open with `await ValkeyLifecycleSubscriber.new(url, prefix)`. Subscribe
    with `await subscriber.subscribe(workflow_id)` (returns once the server
    confirmed the channel) and iterate the subscription, or iterate
    `subscriber.events(workflow_id)` directly. `None` as the workflow id
    means every workflow. `close()` ends every iteration. `reconnect_count`
    counts the times the socket was opened again after a drop.
    """

    client_name = "wfe-valkey-subscriber"

    def __init__(
        self,
        settings: ConnectionSettings,
        prefix: str,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        health_check_interval: float | None = DEFAULT_HEALTH_CHECK_INTERVAL,
    ) -> None:
        self.settings = settings
        self.prefix = prefix
        self.buffer_size = buffer_size
        self.health_check_interval = health_check_interval
        self._client_name = settings.client_name or self.client_name
        self._loop = asyncio.get_running_loop()
        self._channels: dict[str, _Channel] = {}
        self._wire: _PubSubWire | None = None
        self._changed = asyncio.Event()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._sentinel: SentinelSettings | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self.closed = False
        self.reconnect_count = 0

    @classmethod
    async def new(
        cls,
        url: str,
        prefix: str,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        health_check_interval: float | None = DEFAULT_HEALTH_CHECK_INTERVAL,
        **options: Any,
    ) -> Self:
        """Connect to `url` and return a subscriber for channels under `prefix`.

        `buffer_size` is how many events each subscription holds for a slow
        reader. `health_check_interval` is the number of seconds between
        PINGs that check the server still replies (`None` turns them off).
        Other `options` are connection options, as for
        `ValkeyLockProvider.new`. Raises `ValkeyConnectionError`,
        `ValkeyTimeoutError` or `AuthenticationError` when the connect fails.
        """
        prefix = check_prefix(prefix)
        _check_positive_int("buffer_size", buffer_size)
        if health_check_interval is not None:
            _check_positive_seconds("health_check_interval", health_check_interval)
        url, options, _ = take_cluster_option(url, options)
        sentinel: SentinelSettings | None = None
        if is_sentinel_url(url):
            settings, sentinel = parse_sentinel_url(url, **options)
        else:
            settings = parse_url(url, **options)
        subscriber = cls(settings, prefix, buffer_size, health_check_interval)
        subscriber._sentinel = sentinel
        subscriber._wire = await subscriber._connect()
        if health_check_interval is not None:
            subscriber._health_task = subscriber._loop.create_task(subscriber._check_health())
        return subscriber

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._channels)} channels"
        return (
            f"<{type(self).__name__} prefix={self.prefix!r} "
            f"address={self.settings.address!r} {state}>"
        )

    def channel(self, workflow_id: str | None = None) -> str:
        """Return the channel of one workflow's events, or of every workflow's for `None`."""
        if workflow_id is None:
            return f"{self.prefix}:lifecycle:all"
        if workflow_id.__class__ is not str or not workflow_id or not workflow_id.isascii():
            reject_id("workflow_id", workflow_id)
        return f"{self.prefix}:lifecycle:{workflow_id}"

    async def subscribe(self, workflow_id: str | None = None) -> LifecycleSubscription:
        """Subscribe to one workflow's events, or to every workflow's for `None`.

        Returns once the server has confirmed the channel: events published
        after that reach the subscription. Raises `ValkeyTimeoutError` when
        no confirmation comes within the command timeout, for example while
        the server is unreachable.
        """
        if self.closed:
            raise ValkeyConnectionError(f"subscriber for {self.settings.address} is closed")
        subscription = LifecycleSubscription(self, self.channel(workflow_id))
        channel = self._attach(subscription)
        try:
            await self._wait_confirmed(channel)
        except BaseException:
            subscription._end()
            self._detach(subscription)
            raise
        return subscription

    async def events(self, workflow_id: str | None = None) -> AsyncIterator[LifecycleEvent]:
        """Yield lifecycle events of one workflow, or of every workflow for `None`.

        Subscribes on the first iteration; `wait_subscribed()` returns once
        the subscription is active. Unsubscribes when the iteration stops.
        """
        subscription = await self.subscribe(workflow_id)
        try:
            async for event in subscription:
                yield event
        finally:
            await subscription.close()

    async def wait_subscribed(self, workflow_id: str | None = None) -> None:
        """Wait until the server has confirmed the channel of `workflow_id`.

        Use it with `events()` running in another task, before publishing.
        Waits without limit; wrap it in `asyncio.timeout` to bound it.
        """
        name = self.channel(workflow_id)
        while True:
            if self.closed:
                raise ValkeyConnectionError(f"subscriber for {self.settings.address} is closed")
            channel = self._channels.get(name)
            if channel is not None and channel.confirmed:
                return
            changed = self._changed
            await changed.wait()

    async def close(self) -> None:
        """Close the socket and end every subscription's iteration. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for channel in self._channels.values():
            for subscription in list(channel.subscriptions):
                subscription._end()
        self._channels.clear()
        self._notify()
        for task in (self._reconnect_task, self._health_task):
            if task is not None:
                task.cancel()
        wire = self._wire
        self._wire = None
        if wire is not None:
            wire.close()
            for _ in range(1000):
                if wire.lost:
                    break
                await asyncio.sleep(0.001)
        logger.info("closed lifecycle subscriber to %s", self.settings.address)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # subscriptions

    def _attach(self, subscription: LifecycleSubscription) -> _Channel:
        """Register a subscription; send SUBSCRIBE if its channel is new."""
        channel = self._channels.get(subscription.channel)
        if channel is None:
            channel = _Channel(subscription.channel)
            self._channels[channel.name] = channel
            wire = self._wire
            if wire is not None and not wire.lost:
                wire.send(("SUBSCRIBE", channel.name), channel)
        channel.subscriptions.add(subscription)
        return channel

    def _detach(self, subscription: LifecycleSubscription) -> None:
        """Forget a subscription; send UNSUBSCRIBE if it was its channel's last."""
        channel = self._channels.get(subscription.channel)
        if channel is None:
            return
        channel.subscriptions.discard(subscription)
        if channel.subscriptions:
            return
        del self._channels[channel.name]
        self._notify()
        wire = self._wire
        if wire is not None and not wire.lost and not self.closed:
            wire.send(("UNSUBSCRIBE", channel.name), None)

    async def _wait_confirmed(self, channel: _Channel) -> None:
        """Wait for the server to confirm `channel`, within the command timeout."""
        timeout = self.settings.timeout
        try:
            async with asyncio.timeout(timeout):
                while not channel.confirmed:
                    if channel.error is not None:
                        raise channel.error
                    if self.closed:
                        raise ValkeyConnectionError(
                            f"subscriber for {self.settings.address} is closed"
                        )
                    changed = self._changed
                    await changed.wait()
        except TimeoutError:
            raise ValkeyTimeoutError(
                f"SUBSCRIBE {channel.name} not confirmed by {self.settings.address} "
                f"within {timeout} s"
            ) from None

    def _notify(self) -> None:
        """Wake everyone waiting for a change of confirmations."""
        self._changed.set()
        self._changed = asyncio.Event()

    # pushed replies

    def _on_push(self, reply: list[Any], command: _Outstanding | None) -> None:
        """Route a message to its subscriptions, or record a command's reply."""
        if command is None:
            self._on_message(reply)
            return
        name, channel, waiter = command
        first = reply[0]
        if isinstance(first, ReplyError):
            logger.error(
                "%s %s rejected by %s: %s",
                name,
                channel.name if channel else "",
                self.settings.address,
                first,
            )
            if channel is not None and name == "SUBSCRIBE":
                channel.error = first
                self._notify()
            if waiter is not None and not waiter.done():
                waiter.set_exception(first)
            return
        if name == "SUBSCRIBE" and channel is not None:
            channel.confirmed = True
            self._notify()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _on_message(self, reply: list[Any]) -> None:
        """Parse one published payload and hand it to the channel's subscriptions."""
        channel_name = reply[-2].decode(errors="replace")
        payload: bytes = reply[-1]
        channel = self._channels.get(channel_name)
        if channel is None or not channel.confirmed:
            return
        try:
            event = LifecycleEvent.from_json(payload)
        except InvalidEventError as exc:
            logger.warning(
                "skipped a %d-byte message on %s that is not a lifecycle event: %s",
                len(payload),
                channel_name,
                exc,
            )
            return
        for subscription in channel.subscriptions:
            subscription._deliver(event, self.buffer_size)

    # connecting

    async def _connect(self) -> _PubSubWire:
        """Open a socket, run the handshake, and subscribe every channel."""
        wire = await self._open_socket()
        try:
            await self._handshake(wire)
        except BaseException:
            wire.abort("handshake failed")
            raise
        for channel in self._channels.values():
            wire.send(("SUBSCRIBE", channel.name), channel)
        return wire

    async def _resolve_target(self) -> ConnectionSettings:
        """Return where to connect: the URL's address, or the primary Sentinel names.

        A primary passes every message published on it to its replicas, so
        any node of a cluster or of a Sentinel deployment would do; the
        primary is used because it is the node Sentinel can name.
        """
        if self._sentinel is None:
            return self.settings
        timeout = self.settings.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        self.settings = await ask_for_primary(
            list(self._sentinel.sentinels), self._sentinel.service_name, self.settings, timeout
        )
        return self.settings

    async def _open_socket(self) -> _PubSubWire:
        """Open the socket (TCP, TLS or Unix) within the connect timeout."""
        settings = await self._resolve_target()

        def factory() -> _PubSubWire:
            return _PubSubWire(self._loop, self._on_push, self._on_wire_lost)

        if settings.tls is not None and self._ssl_context is None:
            self._ssl_context = settings.tls.create_context()
        return await open_socket(settings, factory, self._ssl_context)

    async def _handshake(self, wire: _PubSubWire) -> None:
        """Authenticate, select the database and name the client."""
        settings = self.settings
        commands = handshake_commands(settings, self._client_name)

        futures = [wire.request(command) for command in commands]
        try:
            async with asyncio.timeout(settings.connect_timeout):
                replies = await asyncio.gather(*futures)
        except TimeoutError:
            raise ValkeyTimeoutError(
                f"handshake with {settings.address} timed out after {settings.connect_timeout} s"
            ) from None
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, ReplyError):
                raise self._handshake_error(command, reply)

    def _handshake_error(self, command: tuple[CommandArg, ...], reply: ReplyError) -> ValkeyError:
        """Describe a failed handshake step without revealing the password."""
        address = self.settings.address
        if command[0] == "AUTH" or isinstance(reply, AuthenticationError):
            user = self.settings.username or "default"
            return AuthenticationError(
                f"authentication as user {user!r} failed at {address}: {reply}"
            )
        return type(reply)(f"{command[0]!s} {command[1]!s} failed at {address}: {reply}")

    def _on_wire_lost(self, wire: _PubSubWire, reason: str) -> None:
        """Mark every channel unconfirmed and start reconnecting."""
        if wire is not self._wire or self.closed:
            return
        logger.warning(
            "lifecycle subscriber connection to %s lost: %s", self.settings.address, reason
        )
        self._wire = None
        for channel in self._channels.values():
            channel.confirmed = False
        self._notify()
        self._reconnect_task = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Connect again with capped, jittered exponential backoff, then resubscribe."""
        attempt = 0
        while not self.closed:
            try:
                wire = await self._connect()
            except (ValkeyError, OSError) as exc:
                attempt += 1
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
                logger.debug(
                    "reconnect attempt %d to %s failed (%s); next in %.3f s",
                    attempt,
                    self.settings.address,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if self.closed:
                wire.close()
                return
            self._wire = wire
            self.reconnect_count += 1
            logger.info(
                "lifecycle subscriber reconnected to %s after %d failed attempts; "
                "subscribing to %d channels again",
                self.settings.address,
                attempt,
                len(self._channels),
            )
            return

    async def _check_health(self) -> None:
        """PING the server periodically; drop the socket when no reply comes."""
        interval = self.health_check_interval
        assert interval is not None
        timeout = self.settings.timeout or interval
        while not self.closed:
            await asyncio.sleep(interval)
            wire = self._wire
            if wire is None or wire.lost:
                continue
            pong: asyncio.Future[Any] = self._loop.create_future()
            wire.send(("PING",), None, pong)
            try:
                async with asyncio.timeout(timeout):
                    await pong
            except TimeoutError:
                wire.abort(f"no reply to PING within {timeout} s")
            except ValkeyError:
                continue


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be 1 or more, got {value}")


def _check_positive_seconds(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be seconds as a number, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, got {value}")
