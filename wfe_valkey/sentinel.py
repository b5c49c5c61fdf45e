"""Valkey Sentinel: connect to the current primary of a service, and follow failovers.

URL form::

    redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/service-name[?option=value...]

``valkey+sentinel://`` is the same; ``rediss+sentinel://`` and
``valkeys+sentinel://`` use TLS to the sentinels and to the primary. A
sentinel's port defaults to 26379. The credentials and the query options
are those of plain URLs (``timeout``, ``db``, ...) and apply to the
primary. ``sentinel_username`` and ``sentinel_password`` (in the query or
as keyword arguments) are sent to the sentinels, which take no
credentials otherwise.

Plan: `SentinelConnection` is a `Connection` whose target is looked up
before every connect. It asks the sentinels in turn with SENTINEL
GET-MASTER-ADDR-BY-NAME, connects to the address returned, and checks with
ROLE that the node is a primary. Every reconnect asks the sentinels again.
The socket drops, and so the connection moves, in three cases: the server
goes away; it replies READONLY because it was demoted; or a sentinel
announces a new primary. The last case matters after ``SENTINEL FAILOVER``
without COORDINATED: the old primary keeps accepting writes until Sentinel
demotes it (about ten seconds later with Valkey 9.1), and those writes are
lost when it resynchronizes. One background task per sentinel stays
subscribed to two announcements: ``+failover-state-send-slaveof-noone``,
which the failover leader publishes as it promotes a replica, and
``+switch-master``, which every sentinel publishes once the failover ends.
After either, the next connect goes to the announced node for
`ANNOUNCEMENT_TRUST` seconds without asking the sentinels, which still
name the old primary until the switch.

Known limits: only the sentinels named in the URL are asked; sentinels
added later are not discovered. A sentinel that answers first is asked
first next time.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import unquote

from . import _probe
from .config import DEFAULT_CONNECT_TIMEOUT, ConnectionSettings, parse_url
from .connection import BACKOFF_BASE, BACKOFF_CAP, Connection, State, auth_commands
from .errors import InvalidURLError, LoadingError, ReplyError, ValkeyConnectionError, ValkeyError
from .resp import ReplyParser, encode_command

if TYPE_CHECKING:
    from .connection import _Wire

logger = logging.getLogger(__name__)

SENTINEL_SCHEMES: Final = {
    "redis+sentinel": "redis",
    "valkey+sentinel": "redis",
    "rediss+sentinel": "rediss",
    "valkeys+sentinel": "rediss",
}
DEFAULT_SENTINEL_PORT: Final = 26379
SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")

# While a failover is under way the sentinels may still name the old
# primary; opening retries this often, in seconds, until the connect
# timeout ends.
OPEN_RETRY_DELAY: Final = 0.1

# The channels on which a sentinel announces a new primary. Messages:
# "<service> <old host> <old port> <new host> <new port>" on the first, and
# "slave <host>:<port> <host> <port> @ <service> <old host> <old port>" on
# the second, published by the failover leader as it promotes the replica.
SWITCH_CHANNEL: Final = "+switch-master"
PROMOTION_CHANNEL: Final = "+failover-state-send-slaveof-noone"

# Time, in seconds, during which reconnects go to an announced primary
# without querying the sentinels. A failover that fails to promote the
# announced replica delays reconnects for at most this long.
ANNOUNCEMENT_TRUST: Final = 5.0

# A watched sentinel that sent nothing for this many seconds gets a PING;
# without a reply within as many seconds again, the next sentinel is
# watched instead.
WATCH_PING_INTERVAL: Final = 5.0

# While leaving a primary, how often to check whether every written command
# has its reply, in seconds.
DRAIN_POLL_INTERVAL: Final = 0.002
READ_SIZE: Final = 65536


@dataclass(frozen=True)
class SentinelSettings:
    """The sentinels to query, and the service they monitor."""

    service_name: str
    sentinels: tuple[ConnectionSettings, ...] = field(repr=False)

    @property
    def addresses(self) -> str:
        """The sentinels' addresses, comma-separated, for messages."""
        return ",".join(sentinel.address for sentinel in self.sentinels)


def is_sentinel_url(url: object) -> bool:
    """Return whether `url` has one of the Sentinel schemes."""
    if not isinstance(url, str) or "://" not in url:
        return False
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str, **overrides: Any) -> tuple[ConnectionSettings, SentinelSettings]:
    """Parse a Sentinel URL into the primary's settings and the sentinels'.

    The primary's settings carry the first sentinel's address until the
    sentinels are asked. Raises `InvalidURLError` naming the part that is
    wrong; the message never contains a password.
    """
    scheme, _, rest = url.partition("://")
    plain_scheme = SENTINEL_SCHEMES[scheme.lower()]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts_part = netloc.rpartition("@")

    addresses = [_parse_host(part, url) for part in hosts_part.split(",")]
    service_name = _parse_service_name(path, url)
    query, sentinel_options = _take_sentinel_options(query)
    for name in SENTINEL_OPTIONS:
        if name in overrides:
            sentinel_options[name] = overrides.pop(name)

    first_host, first_port = addresses[0]
    plain_url = f"{plain_scheme}://{credentials}{at}{_format_host(first_host)}:{first_port}/"
    if query:
        plain_url += "?" + query
    settings = parse_url(plain_url, **overrides)

    sentinels = tuple(
        ConnectionSettings(
            host=host,
            port=port,
            username=sentinel_options.get("sentinel_username"),
            password=sentinel_options.get("sentinel_password"),
            timeout=settings.timeout,
            connect_timeout=settings.connect_timeout,
            tls=settings.tls,
        )
        for host, port in addresses
    )
    return settings, SentinelSettings(service_name, sentinels)


def _parse_host(part: str, url: str) -> tuple[str, int]:
    """Read one ``host[:port]`` or ``[ipv6][:port]`` of the sentinel list."""
    part = part.strip()
    if part.startswith("["):
        host, bracket, after = part[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise InvalidURLError(f"invalid sentinel address {part!r} in URL {_redact(url)!r}")
        port_word = after[1:]
    else:
        host, _, port_word = part.partition(":")
    if not host:
        raise InvalidURLError(f"missing sentinel host in URL {_redact(url)!r}")
    if not port_word:
        return host, DEFAULT_SENTINEL_PORT
    if not port_word.isdigit() or not 0 < int(port_word) < 65536:
        raise InvalidURLError(
            f"invalid sentinel port {port_word!r} in URL {_redact(url)!r}; "
            "expected a number from 1 to 65535"
        )
    return host, int(port_word)


def _parse_service_name(path: str, url: str) -> str:
    """Read the service name, the one path segment of a Sentinel URL."""
    name = unquote(path.rstrip("/"))
    if not name:
        raise InvalidURLError(
            f"missing service name in URL {_redact(url)!r}; "
            "expected for example redis+sentinel://127.0.0.1:26379/mymaster"
        )
    if "/" in name:
        raise InvalidURLError(
            f"invalid service name {name!r} in URL {_redact(url)!r}; give the database with ?db=N"
        )
    return name


def _take_sentinel_options(query: str) -> tuple[str, dict[str, Any]]:
    """Split the sentinels' own options off the query string."""
    kept: list[str] = []
    taken: dict[str, Any] = {}
    for pair in query.split("&") if query else []:
        name, _, value = pair.partition("=")
        if unquote(name) in SENTINEL_OPTIONS:
            taken[unquote(name)] = unquote(value)
        else:
            kept.append(pair)
    return "&".join(kept), taken


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _redact(url: str) -> str:
    """Return the URL without its query, and with any password replaced by ``***``."""
    scheme, _, rest = url.partition("://")
    rest = rest.partition("?")[0]
    netloc, slash, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if at:
        user = credentials.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}"
    return f"{scheme}://{netloc}{slash}{path}"


class NotPrimaryError(ValkeyConnectionError):
    """The node the sentinels named is not a primary (yet, or any more)."""


class SentinelConnection(Connection):
    """A connection to the primary of a Sentinel service that follows failovers.

    `settings` is the address of the primary in use (or last tried).
    """

    def __init__(
        self, settings: ConnectionSettings, client_name: str, sentinel: SentinelSettings
    ) -> None:
        super().__init__(settings, client_name)
        self.sentinel = sentinel
        self._template = settings
        self._sentinels = list(sentinel.sentinels)
        self._announced: tuple[ConnectionSettings, float] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._leaving: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        settings: ConnectionSettings,
        client_name: str = "wfe-valkey",
        scripts: Iterable[tuple[str, str]] = (),
        *,
        sentinel: SentinelSettings | None = None,
    ) -> Self:
        """Ask the sentinels for the primary, connect and check its role.

        `sentinel` is required. While a failover is under way the node
        named may not be a primary yet; opening tries again until the
        connect timeout ends. Raises `ValkeyConnectionError` when no
        sentinel names a primary that can be reached.
        """
        if sentinel is None:
            raise TypeError("SentinelConnection.open needs sentinel settings")
        connection = cls(settings, client_name, sentinel)
        connection._scripts.update(scripts)
        await connection._connect_until_primary()
        connection._watchers = [
            connection._loop.create_task(connection._watch(sentinel))
            for sentinel in sentinel.sentinels
        ]
        logger.info(
            "connected to %s, primary of %r, as %s",
            connection.settings.address,
            sentinel.service_name,
            connection._client_name,
        )
        return connection

    async def reopen(self, client_name: str, scripts: Iterable[tuple[str, str]]) -> Self:
        """Open a new connection to the same service through the same sentinels."""
        return await type(self).open(self._template, client_name, scripts, sentinel=self.sentinel)

    def __repr__(self) -> str:
        return (
            f"<SentinelConnection {self.sentinel.service_name!r} at "
            f"{self.settings.address} {self.state.value}>"
        )

    async def _connect_until_primary(self) -> None:
        """Connect; while the node named is not a primary or still loading, retry.

        Retries stop when the connect timeout ends, and the last error is raised.
        """
        timeout = self.settings.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        deadline = self._loop.time() + timeout
        while True:
            try:
                await self._connect_once()
                return
            except (NotPrimaryError, LoadingError):
                if self._loop.time() + OPEN_RETRY_DELAY >= deadline:
                    raise
            await asyncio.sleep(OPEN_RETRY_DELAY)

    async def _resolve_target(self) -> ConnectionSettings:
        """Return the announced primary, or ask the sentinels; it becomes `settings`."""
        announced = self._announced
        if announced is not None and self._loop.time() < announced[1]:
            target = announced[0]
        else:
            self._announced = None
            target = await self._ask_sentinels()
        if target.address != self.settings.address:
            logger.info("primary of %r is %s", self.sentinel.service_name, target.address)
        self.settings = target
        return target

    async def _ask_sentinels(self) -> ConnectionSettings:
        """Query the sentinels in turn for the primary's address; the first reply wins."""
        timeout = self.settings.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        return await ask_for_primary(
            self._sentinels, self.sentinel.service_name, self._template, timeout
        )

    async def _handshake(self, wire: _Wire) -> None:
        """Run the usual handshake, then check with ROLE that the node is a primary."""
        await super()._handshake(wire)
        timeout = self.settings.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                role = await wire.send(encode_command(("ROLE",)))
        except TimeoutError:
            raise ValkeyConnectionError(
                f"ROLE got no reply from {self.settings.address} within {timeout} s"
            ) from None
        except ReplyError as exc:
            logger.warning(
                "cannot check the role of %s (%s); trusting the sentinels",
                self.settings.address,
                exc,
            )
            return
        if not isinstance(role, list) or not role or role[0] != b"master":
            found = _role_name(role)
            raise NotPrimaryError(
                f"{self.settings.address}, named by the sentinels as primary of "
                f"{self.sentinel.service_name!r}, is a {found}; asking again"
            )

    # following announcements

    async def _watch(self, sentinel: ConnectionSettings) -> None:
        """Listen for new-primary announcements of one sentinel until closed."""
        failures = 0
        while self.state is not State.CLOSED:
            started = self._loop.time()
            try:
                await self._listen(sentinel)
            except (ValkeyError, OSError, TimeoutError) as exc:
                logger.debug("stopped listening to sentinel %s: %s", sentinel.address, exc)
            except Exception:
                # A defect, but giving up would stop following failovers.
                logger.exception("listening to sentinel %s failed", sentinel.address)
            # A subscription that lasted a while was a success: back off from
            # the start again.
            if self._loop.time() - started > BACKOFF_CAP:
                failures = 0
            failures += 1
            exponent = min(failures, 10)
            await asyncio.sleep(
                min(BACKOFF_CAP, BACKOFF_BASE * 2**exponent) * random.uniform(0.5, 1.0)
            )

    async def _listen(self, sentinel: ConnectionSettings) -> None:
        """Subscribe to the announcements on `sentinel` and act on every message."""
        timeout = sentinel.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        async with asyncio.timeout(timeout):
            reader, writer = await _probe.open_stream(sentinel)
        try:
            parser = ReplyParser()
            commands = [
                *auth_commands(sentinel),
                ("SUBSCRIBE", SWITCH_CHANNEL, PROMOTION_CHANNEL),
            ]
            writer.write(b"".join(encode_command(command) for command in commands))
            confirmed = 0
            async with asyncio.timeout(timeout):
                while confirmed < 2:
                    confirmed += self._feed(parser, await reader.read(READ_SIZE), sentinel)
            await self._check_primary(sentinel)
            while True:
                self._feed(parser, await self._read_or_ping(reader, writer), sentinel)
        finally:
            writer.close()

    async def _read_or_ping(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        """Read what the sentinel sends; PING it after WATCH_PING_INTERVAL of silence."""
        try:
            async with asyncio.timeout(WATCH_PING_INTERVAL):
                return await reader.read(READ_SIZE)
        except TimeoutError:
            writer.write(encode_command(("PING",)))
        async with asyncio.timeout(WATCH_PING_INTERVAL):
            return await reader.read(READ_SIZE)

    def _feed(self, parser: ReplyParser, data: bytes, sentinel: ConnectionSettings) -> int:
        """Act on the replies in `data`; return how many subscriptions they confirm."""
        if not data:
            raise ValkeyConnectionError(f"sentinel {sentinel.address} closed the socket")
        confirmed = 0
        for reply in parser.parse(data):
            if isinstance(reply, ReplyError):
                raise reply
            if not isinstance(reply, list) or len(reply) < 3:
                continue
            if reply[0] == b"subscribe":
                confirmed += 1
            elif reply[0] == b"message" and isinstance(reply[2], bytes):
                self._on_announcement(reply[1], reply[2].decode(errors="replace"), sentinel)
        return confirmed

    def _on_announcement(self, channel: bytes, message: str, sentinel: ConnectionSettings) -> None:
        """Move to the primary that a switch or promotion names, if it is our service's."""
        fields = message.split()
        service = self.sentinel.service_name
        if channel == SWITCH_CHANNEL.encode() and len(fields) == 5 and fields[0] == service:
            host, port_word = fields[3], fields[4]
        elif channel == PROMOTION_CHANNEL.encode() and len(fields) == 8 and fields[5] == service:
            host, port_word = fields[2], fields[3]
        else:
            return
        target = self._template.with_address(host, int(port_word))
        self._announced = (target, self._loop.time() + ANNOUNCEMENT_TRUST)
        if target.address != self.settings.address:
            logger.info(
                "sentinel %s announced %s as primary of %r; leaving %s",
                sentinel.address,
                target.address,
                service,
                self.settings.address,
            )
            self._drop_socket(f"{target.address} is the primary now")

    async def _check_primary(self, sentinel: ConnectionSettings) -> None:
        """Ask `sentinel` once; drop the socket if it names another primary.

        This catches a switch announced while no subscription was active.
        """
        timeout = sentinel.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        name = self.sentinel.service_name
        [reply] = await _probe.query(
            sentinel, [("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)], timeout
        )
        if not isinstance(reply, list) or len(reply) != 2 or self._announced is not None:
            return
        host = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        address = self._template.with_address(host, int(reply[1])).address
        if address != self.settings.address:
            self._drop_socket(f"sentinel {sentinel.address} names {address} as primary now")

    def _drop_socket(self, reason: str) -> None:
        """Leave the current socket, so that the connection reconnects to the new primary.

        Commands issued from now on wait for the next socket. Commands
        already written get their replies first: aborting them would fail
        them with `ConnectionLostError`, and a lost RPOP reply loses an id.
        """
        wire = self._wire
        if wire is None or self.state is not State.READY:
            return
        self.state = State.RECONNECTING
        task = self._loop.create_task(self._abort_when_answered(wire, reason))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _abort_when_answered(self, wire: _Wire, reason: str) -> None:
        """Abort `wire` once it has no reply pending, or when the command timeout ends."""
        deadline = self._loop.time() + (self.settings.timeout or DEFAULT_CONNECT_TIMEOUT)
        while wire.pending_count and not wire.lost and self._loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_INTERVAL)
        wire.abort(reason)

    async def close(self) -> None:
        """Stop listening to the sentinels and close the connection; idempotent."""
        for watcher in self._watchers:
            watcher.cancel()
        await super().close()


async def ask_for_primary(
    sentinels: list[ConnectionSettings],
    service_name: str,
    template: ConnectionSettings,
    timeout: float,
) -> ConnectionSettings:
    """Ask the sentinels in turn for the primary of `service_name`.

    Returns `template` with the primary's address. The sentinel that
    answered moves to the front of `sentinels`, so it is asked first next
    time. Raises `ValkeyConnectionError` listing each sentinel's failure.
    """
    failures: list[str] = []
    for index, sentinel in enumerate(sentinels):
        try:
            [reply] = await _probe.query(
                sentinel, [("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service_name)], timeout
            )
        except ValkeyError as exc:
            failures.append(f"{sentinel.address}: {exc}")
            continue
        if isinstance(reply, ReplyError) or not isinstance(reply, list) or len(reply) != 2:
            failures.append(f"{sentinel.address}: does not monitor {service_name!r} ({reply})")
            continue

        if index:
            sentinels.insert(0, sentinels.pop(index))
        host = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return template.with_address(host, int(reply[1]))
    raise ValkeyConnectionError(
        f"no sentinel returned the primary of {service_name!r}: " + "; ".join(failures)
    )


def _role_name(role: Any) -> str:
    """Name the role in a ROLE reply in today's terms (``slave`` is a replica)."""
    if not isinstance(role, list) or not role or not isinstance(role[0], bytes):
        return f"node that replied {role!r} to ROLE"
    name = role[0].decode(errors="replace")
    return "replica" if name == "slave" else name


async def open_sentinel_connection(
    url: str,
    options: dict[str, Any],
    client_name: str,
    scripts: Iterable[tuple[str, str]] = (),
) -> SentinelConnection:
    """Parse a Sentinel URL with keyword `options` and connect to the primary."""
    settings, sentinel = parse_sentinel_url(url, **options)
    return await SentinelConnection.open(settings, client_name, scripts, sentinel=sentinel)
