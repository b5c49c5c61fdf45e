"""A connection to Valkey Cluster that routes each command to its slot's primary.

Goals:

- The providers call `execute` and `execute_many` as on a plain
  `Connection` and need not know that the keys live on several primaries.
- Each command goes to the primary that owns its key's slot (see
  `wfe_valkey.slots`), over one multiplexed `Connection` per primary, so
  the hot path adds one slot computation and one list lookup.
- The slot map follows the cluster. MOVED updates the slot and the command
  is sent again where the reply points; ASK sends ASKING and the command
  in one write to the importing node, once; TRYAGAIN and CLUSTERDOWN are
  retried with backoff until the command timeout ends. While a primary
  cannot be reached, commands for its slots wait and the slot map is
  fetched again, at most once per `REFRESH_INTERVAL`, so they go to the
  replica that takes over. They fail when the command timeout ends first;
  with the timeout off, retries stop after `DEFAULT_TIMEOUT` seconds.

Plan: `ClusterConnection` keeps the slot map as two lists of 16384
entries (owner address, and that owner's connection) and a dictionary of
node connections. A background task refreshes the map with CLUSTER SLOTS,
asking a connected primary first and any other known node after it.

Known limits: a command that was written before its node dropped fails
with `ConnectionLostError` and is not sent again, as on a plain
connection, because it may have been applied. Commands of one
`execute_many` call that belong to different primaries are sent to each
primary in parallel, so their order across primaries is not kept. Reads go
to primaries only; replicas are used for nothing but discovery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from typing import Any, Final, Self
from urllib.parse import unquote

from . import _probe
from .config import DEFAULT_TIMEOUT, FALSE_WORDS, TRUE_WORDS, ConnectionSettings
from .connection import Connection, State
from .errors import (
    ConnectionLostError,
    InvalidURLError,
    NoScriptError,
    ReplyError,
    ValkeyConnectionError,
    ValkeyError,
    ValkeyTimeoutError,
)
from .resp import CommandArg, encode_command, evalsha_as_eval
from .slots import SLOT_COUNT, Target, cached_key_slot, route

logger = logging.getLogger(__name__)

Address = tuple[str, int]

# The slot map is fetched again at most this often, in seconds, however
# many commands find their primary unreachable.
REFRESH_INTERVAL: Final = 0.1

# How long one node may take to return the slot map before the next known
# node is asked, in seconds.
REFRESH_QUERY_TIMEOUT: Final = 1.0

# A MOVED or ASK chain longer than this means the cluster is being
# reconfigured in a loop; the last redirect is raised to the caller.
MAX_REDIRECTS: Final = 16

# TRYAGAIN, CLUSTERDOWN and unreachable primaries are retried after this
# many seconds, doubling each time up to RETRY_DELAY_CAP.
RETRY_DELAY: Final = 0.01
RETRY_DELAY_CAP: Final = 0.2

REDIRECT_CODES: Final = frozenset({"MOVED", "ASK"})
RETRY_CODES: Final = frozenset({"TRYAGAIN", "CLUSTERDOWN"})
CLUSTER_CODES: Final = REDIRECT_CODES | RETRY_CODES

ASKING: Final = encode_command(("ASKING",))


class ClusterConnection(Connection):
    """Routes commands to the primaries of a Valkey Cluster.

    Offers what the providers use of `Connection`: `execute`,
    `execute_many`, `register_script`, `close`, `state` and `settings`,
    where `settings` are those of the node first connected to. The socket
    machinery inherited from `Connection` is not used: every node has a
    `Connection` of its own.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        client_name: str,
        scripts: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(settings, client_name)
        self._scripts.update(scripts)
        self._nodes: dict[Address, Connection] = {}
        self._opening: dict[Address, asyncio.Task[Connection]] = {}
        self._slot_owners: list[Address | None] = [None] * SLOT_COUNT
        self._slot_connections: list[Connection | None] = [None] * SLOT_COUNT
        self._primaries: list[Address] = []
        self._replicas: set[Address] = set()
        self._refresh_task: asyncio.Task[None] | None = None
        self._last_refresh = float("-inf")
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        settings: ConnectionSettings,
        client_name: str = "wfe-valkey",
        scripts: Iterable[tuple[str, str]] = (),
    ) -> Self:
        """Connect to the cluster that the node at `settings` belongs to.

        Raises `ValkeyConnectionError` when that node cannot be asked for
        the slot map or is not a cluster node.
        """
        connection = cls(settings, client_name, scripts)
        timeout = settings.connect_timeout or REFRESH_QUERY_TIMEOUT
        [reply] = await _probe.query(settings, [("CLUSTER", "SLOTS")], timeout)
        if isinstance(reply, ReplyError):
            raise ValkeyConnectionError(f"{settings.address} is not a cluster node: {reply}")
        await connection._start(reply, settings.host, seed=None)
        return connection

    @classmethod
    async def adopt(
        cls,
        seed: Connection,
        slots_reply: list[Any],
        client_name: str,
        scripts: Iterable[tuple[str, str]] = (),
    ) -> Self:
        """Build a cluster connection from an open connection to one node.

        `slots_reply` is that node's reply to CLUSTER SLOTS. The seed
        connection is kept as a node connection when the node is a
        primary, and closed otherwise.
        """
        connection = cls(seed.settings, client_name, scripts)
        await connection._start(slots_reply, seed.settings.host, seed=seed)
        return connection

    async def reopen(self, client_name: str, scripts: Iterable[tuple[str, str]]) -> Self:
        """Open a new cluster connection through the same first node."""
        return await type(self).open(self.settings, client_name, scripts)

    async def _start(self, slots_reply: Any, reporter_host: str, seed: Connection | None) -> None:
        """Apply the first slot map and connect to every primary in it."""
        if not isinstance(slots_reply, list) or not slots_reply:
            if seed is not None:
                await seed.close()
            raise ValkeyConnectionError(
                f"the cluster at {self.settings.address} has no slots assigned yet"
            )
        if seed is not None and seed.settings.unix_path is None:
            self._nodes[(seed.settings.host, seed.settings.port)] = seed
        elif seed is not None:
            self._close_in_background(seed)
        self._apply_slot_map(slots_reply, reporter_host)
        await self._connect_primaries()
        self._retire_stale_nodes(keep_unlisted=False)
        if not any(self._is_ready(address) for address in self._primaries):
            await self.close()
            raise ValkeyConnectionError(
                f"no primary of the cluster at {self.settings.address} could be reached"
            )
        self.state = State.READY
        logger.info(
            "connected to cluster through %s: %d primaries",
            self.settings.address,
            len(self._primaries),
        )

    def __repr__(self) -> str:
        return (
            f"<ClusterConnection {len(self._primaries)} primaries via "
            f"{self.settings.address} {self.state.value}>"
        )

    # commands

    def execute(self, *args: CommandArg) -> Awaitable[Any]:
        """Send one command to the primary of its key's slot; await the reply.

        Raises `ValueError` at once, before anything is sent, when the
        command cannot be routed or encoded.
        """
        target = route(args)
        return self._execute(encode_command(args), target)

    def execute_encoded(self, payload: bytes, key: bytes | None) -> Awaitable[Any]:
        """Send one encoded command to the primary of `key`'s slot, or to any primary."""
        return self._execute(payload, Target.ANY_NODE if key is None else cached_key_slot(key))

    def execute_many_encoded(
        self, payloads: list[bytes], keys: Sequence[bytes | None]
    ) -> Awaitable[list[Any]]:
        """`execute_many` for encoded commands, each routed by its key in `keys`."""
        if len(keys) != len(payloads):
            raise ValueError(
                f"keys must hold one key (or None) per command: {len(payloads)} commands, "
                f"{len(keys)} keys"
            )
        targets: list[int | Target] = [
            Target.ANY_NODE if key is None else cached_key_slot(key) for key in keys
        ]
        return self._execute_many(list(payloads), targets)

    async def _execute(self, payload: bytes, target: int | Target) -> Any:
        """Send on the current map; anything but a plain reply takes the slow path."""
        if isinstance(target, Target):
            if target is Target.EVERY_PRIMARY:
                return await self._execute_on_every_primary(payload)
            return await self._execute_slow(payload, target, None, None)

        connection = self._slot_connections[target]
        if connection is None or connection.state is not State.READY:
            return await self._execute_slow(payload, target, None, None)
        try:
            return await connection.execute_encoded(payload, None)
        except ReplyError as exc:
            if exc.code not in CLUSTER_CODES:
                raise
            return await self._execute_slow(payload, target, exc, connection)
        except ConnectionLostError:
            self._request_refresh()
            raise
        except ValkeyTimeoutError:
            self._request_refresh()
            raise
        except ValkeyConnectionError as exc:
            return await self._execute_slow(payload, target, exc, connection)

    async def _execute_slow(
        self,
        payload: bytes,
        target: int | Target,
        error: ValkeyError | None,
        sent_to: Connection | None,
    ) -> Any:
        """Follow redirects and wait out failovers until the retry budget ends."""
        deadline = self._loop.time() + (self.settings.timeout or DEFAULT_TIMEOUT)
        ask_address: Address | None = None
        redirects = 0
        delay = RETRY_DELAY
        while True:
            if error is not None:
                if isinstance(error, ReplyError) and error.code in REDIRECT_CODES:
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise error
                    ask_address = self._follow_redirect(error, sent_to)
                else:
                    await self._pause(error, delay, deadline)
                    delay = min(delay * 2, RETRY_DELAY_CAP)
                error = None

            try:
                if ask_address is not None:
                    sent_to = await self._node_connection(ask_address, deadline)
                    ask_address = None
                    return await self._execute_asking(sent_to, payload)
                sent_to = await self._connection_for(target, deadline)
                return await sent_to.execute_encoded(payload, None)
            except ReplyError as exc:
                if exc.code not in CLUSTER_CODES:
                    raise
                error = exc
            except (ConnectionLostError, ValkeyTimeoutError):
                self._request_refresh()
                raise
            except ValkeyConnectionError as exc:
                error = exc

    async def _execute_asking(self, connection: Connection, payload: bytes) -> Any:
        """Send ASKING and the command in one write; return or raise its reply.

        An EVALSHA of a registered script that meets NOSCRIPT on the
        importing node is sent again as EVAL, as a plain connection does.
        """
        replies = await connection.execute_many_encoded([ASKING, payload], [None, None])
        reply = replies[1]
        if isinstance(reply, NoScriptError):
            as_eval = evalsha_as_eval(payload, self._scripts)
            if as_eval is not None:
                replies = await connection.execute_many_encoded([ASKING, as_eval], [None, None])
                reply = replies[1]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def _follow_redirect(self, error: ReplyError, sent_to: Connection | None) -> Address | None:
        """Apply a MOVED to the slot map; return the node an ASK points to."""
        replied_host = sent_to.settings.host if sent_to is not None else self.settings.host
        slot, address = _parse_redirect(str(error), replied_host)
        if error.code == "ASK":
            logger.debug("slot %d is migrating; asking %s:%d", slot, *address)
            return address
        logger.debug("slot %d moved to %s:%d", slot, *address)
        self._slot_owners[slot] = address
        self._slot_connections[slot] = self._live_node(address)
        self._request_refresh()
        return None

    async def _pause(self, error: ValkeyError, delay: float, deadline: float) -> None:
        """Wait before a retry, or raise `error` when the budget would run out."""
        if self._loop.time() + delay >= deadline:
            raise error
        if not isinstance(error, ReplyError) or error.code == "CLUSTERDOWN":
            self._request_refresh()
        logger.debug("retrying in %.3f s after: %s", delay, error)
        await asyncio.sleep(delay)

    def execute_many(self, commands: Sequence[tuple[CommandArg, ...]]) -> Awaitable[list[Any]]:
        """Send several commands; the awaitable gives all replies in order.

        Commands for one primary go in one write. Error replies are
        returned in the list, in the position of their command, after
        redirects and retries have been followed.
        """
        batch = list(commands)
        targets = [route(args) for args in batch]
        return self._execute_many([encode_command(args) for args in batch], targets)

    async def _execute_many(self, payloads: list[bytes], targets: list[int | Target]) -> list[Any]:
        """Send per-primary batches, then redo each command that needs redirecting."""
        replies: list[Any] = [None] * len(payloads)
        groups: dict[Connection, list[int]] = {}
        later: list[tuple[int, ValkeyError | None, Connection | None]] = []
        for index, target in enumerate(targets):
            connection = self._ready_connection_for(target)
            if connection is None:
                later.append((index, None, None))
            else:
                groups.setdefault(connection, []).append(index)

        results = await asyncio.gather(
            *(
                connection.execute_many_encoded(
                    [payloads[index] for index in indexes], [None] * len(indexes)
                )
                for connection, indexes in groups.items()
            ),
            return_exceptions=True,
        )
        for (connection, indexes), result in zip(groups.items(), results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, (ConnectionLostError, ValkeyTimeoutError)):
                    self._request_refresh()
                    raise result
                if not isinstance(result, ValkeyConnectionError):
                    raise result
                later.extend((index, result, connection) for index in indexes)
                continue
            for index, reply in zip(indexes, result, strict=True):
                if isinstance(reply, ReplyError) and reply.code in CLUSTER_CODES:
                    later.append((index, reply, connection))
                else:
                    replies[index] = reply

        for index, error, sent_to in sorted(later, key=lambda item: item[0]):
            try:
                if targets[index] is Target.EVERY_PRIMARY:
                    replies[index] = await self._execute_on_every_primary(payloads[index])
                else:
                    replies[index] = await self._execute_slow(
                        payloads[index], targets[index], error, sent_to
                    )
            except ReplyError as exc:
                replies[index] = exc
        return replies

    async def primary_connections(self) -> list[Connection]:
        """Return a connection to every primary, for commands such as SCAN that run per node."""
        deadline = self._loop.time() + (self.settings.timeout or DEFAULT_TIMEOUT)
        return [await self._node_connection(address, deadline) for address in list(self._primaries)]

    async def _execute_on_every_primary(self, payload: bytes) -> Any:
        """Run a command on every primary; return the first reply."""
        connections = await self.primary_connections()
        results = await asyncio.gather(
            *(connection.execute_encoded(payload, None) for connection in connections),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results[0]

    def register_script(self, sha: str, source: str) -> None:
        """Load `source` on every node connection, now and on every reconnect."""
        self._scripts[sha] = source
        for connection in self._nodes.values():
            connection.register_script(sha, source)

    # finding the connection for a command

    def _ready_connection_for(self, target: int | Target) -> Connection | None:
        """Return a ready connection for `target` on the current map, or `None`."""
        if isinstance(target, int):
            connection = self._slot_connections[target]
        elif target is Target.ANY_NODE:
            connection = self._any_ready_primary()
        else:
            return None
        if connection is not None and connection.state is State.READY:
            return connection
        return None

    def _any_ready_primary(self) -> Connection | None:
        """Return the connection of the first primary that is ready."""
        for address in self._primaries:
            connection = self._nodes.get(address)
            if connection is not None and connection.state is State.READY:
                return connection
        return None

    async def _connection_for(self, target: int | Target, deadline: float) -> Connection:
        """Wait until the primary for `target` has a ready connection.

        While the owner cannot be reached the slot map is fetched again,
        so a replica promoted in its place is found. Raises
        `ValkeyConnectionError` (the command was not sent) at `deadline`.
        """
        delay = RETRY_DELAY
        while True:
            if self.state is State.CLOSED:
                raise ValkeyConnectionError(
                    f"cluster connection via {self.settings.address} is closed"
                )
            connection = self._ready_connection_for(target)
            if connection is not None:
                return connection

            owner = self._slot_owners[target] if isinstance(target, int) else None
            if owner is not None and self._live_node(owner) is None:
                try:
                    await self._node_connection(owner, deadline)
                    continue
                except (ValkeyError, OSError) as exc:
                    logger.debug("cannot connect to %s:%d: %s", *owner, exc)

            self._request_refresh()
            if self._loop.time() + delay >= deadline:
                raise ValkeyConnectionError(_unreachable_message(target, owner))
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_DELAY_CAP)

    async def _node_connection(self, address: Address, deadline: float) -> Connection:
        """Return the connection to one node, opening it if there is none."""
        connection = self._live_node(address)
        if connection is not None:
            return connection
        task = self._opening.get(address)
        if task is None:
            task = self._loop.create_task(self._open_node(address))
            self._opening[address] = task
            task.add_done_callback(lambda _: self._opening.pop(address, None))
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            raise ValkeyConnectionError(
                f"cannot connect to {_format_address(address)} in time; the command was not sent"
            ) from None

    async def _open_node(self, address: Address) -> Connection:
        """Open a connection to one node and put it into the slot map."""
        settings = self.settings.with_address(*address)
        try:
            connection = await Connection.open(settings, self._client_name, self._scripts.items())
        except ValkeyTimeoutError as exc:
            raise ValkeyConnectionError(str(exc)) from None
        if self.state is State.CLOSED:
            await connection.close()
            raise ValkeyConnectionError(f"cluster connection via {self.settings.address} is closed")
        previous = self._nodes.get(address)
        self._nodes[address] = connection
        if previous is not None:
            self._close_in_background(previous)
        self._link_slots()
        return connection

    def _live_node(self, address: Address) -> Connection | None:
        """Return the node's connection unless it is missing or closed."""
        connection = self._nodes.get(address)
        if connection is None or connection.state is State.CLOSED:
            return None
        return connection

    def _is_ready(self, address: Address) -> bool:
        connection = self._nodes.get(address)
        return connection is not None and connection.state is State.READY

    # the slot map

    def _request_refresh(self) -> None:
        """Start fetching the slot map, unless a fetch is running or just ran."""
        if self.state is State.CLOSED:
            return
        task = self._refresh_task
        if task is not None and not task.done():
            return
        now = self._loop.time()
        if now - self._last_refresh < REFRESH_INTERVAL:
            return
        self._last_refresh = now
        self._refresh_task = self._loop.create_task(self._refresh())

    async def _refresh(self) -> None:
        """Fetch the slot map from the first node that returns it, and apply it."""
        failures: list[str] = []
        for settings, reply in self._fetch_slot_maps():
            try:
                slots = await reply
            except (ValkeyError, OSError, TimeoutError) as exc:
                failures.append(f"{settings.address}: {exc}")
                continue
            if isinstance(slots, ReplyError) or not isinstance(slots, list) or not slots:
                failures.append(f"{settings.address}: no slot map ({slots!r})")
                continue
            if self._apply_slot_map(slots, settings.host):
                await self._connect_primaries()
                self._retire_stale_nodes(keep_unlisted=True)
            return
        logger.warning("cannot fetch the cluster slot map: %s", "; ".join(failures))

    def _fetch_slot_maps(self) -> Iterator[tuple[ConnectionSettings, Awaitable[Any]]]:
        """Yield the nodes to ask for CLUSTER SLOTS, connected primaries first.

        Each item is the node's settings and the awaitable of its reply;
        the awaitable is only created when the caller asks for the item.
        """
        asked: set[Address] = set()
        for address in self._primaries:
            connection = self._nodes.get(address)
            if connection is not None and connection.state is State.READY:
                asked.add(address)
                reply = connection.execute("CLUSTER", "SLOTS")
                yield connection.settings, asyncio.wait_for(reply, REFRESH_QUERY_TIMEOUT)
        for address in [*self._primaries, *sorted(self._replicas)]:
            if address not in asked:
                asked.add(address)
                settings = self.settings.with_address(*address)
                yield settings, self._probe_slots(settings)
        yield self.settings, self._probe_slots(self.settings)

    async def _probe_slots(self, settings: ConnectionSettings) -> Any:
        [reply] = await _probe.query(settings, [("CLUSTER", "SLOTS")], REFRESH_QUERY_TIMEOUT)
        return reply

    def _apply_slot_map(self, slots_reply: list[Any], reporter_host: str) -> bool:
        """Replace the slot map with a CLUSTER SLOTS reply; return whether it changed."""
        owners: list[Address | None] = [None] * SLOT_COUNT
        primaries: list[Address] = []
        replicas: set[Address] = set()
        for entry in slots_reply:
            start, end = int(entry[0]), int(entry[1])
            primary = _node_address(entry[2], reporter_host)
            if primary is None:
                continue
            owners[start : end + 1] = [primary] * (end - start + 1)
            if primary not in primaries:
                primaries.append(primary)
            for replica_entry in entry[3:]:
                replica = _node_address(replica_entry, reporter_host)
                if replica is not None:
                    replicas.add(replica)

        changed = owners != self._slot_owners or primaries != self._primaries
        self._slot_owners = owners
        self._primaries = primaries
        self._replicas = replicas - set(primaries)
        if changed:
            self._link_slots()
            logger.info(
                "cluster slot map: %d primaries (%s), %d replicas",
                len(primaries),
                ", ".join(_format_address(address) for address in primaries),
                len(self._replicas),
            )
        return changed

    def _link_slots(self) -> None:
        """Point every slot at its owner's connection, where one is open."""
        by_owner = {address: self._live_node(address) for address in self._primaries}
        self._slot_connections = [
            by_owner.get(owner) if owner is not None else None for owner in self._slot_owners
        ]

    async def _connect_primaries(self) -> None:
        """Open a connection to every primary that has none; log the ones that fail."""
        missing = [address for address in self._primaries if self._live_node(address) is None]
        if not missing:
            return
        deadline = self._loop.time() + (self.settings.connect_timeout or DEFAULT_TIMEOUT)
        results = await asyncio.gather(
            *(self._node_connection(address, deadline) for address in missing),
            return_exceptions=True,
        )
        for address, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("cannot connect to primary %s: %s", _format_address(address), result)

    def _retire_stale_nodes(self, keep_unlisted: bool) -> None:
        """Close connections to nodes that are not primaries now.

        With `keep_unlisted`, a ready connection to a node that the map
        does not list at all is kept: it may be a primary that owns no
        slot yet and is importing one.
        """
        primaries = set(self._primaries)
        for address, connection in list(self._nodes.items()):
            if address in primaries:
                continue
            unlisted = address not in self._replicas
            if not keep_unlisted or not unlisted or connection.state is not State.READY:
                del self._nodes[address]
                logger.info(
                    "closing connection to %s: no longer a primary", connection.settings.address
                )
                self._close_in_background(connection)

    def _close_in_background(self, connection: Connection) -> None:
        task = self._loop.create_task(connection.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # closing

    async def close(self) -> None:
        """Close every node connection; idempotent."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        for task in [self._refresh_task, *self._opening.values()]:
            if task is not None:
                task.cancel()
        connections = list(self._nodes.values())
        self._nodes.clear()
        self._slot_connections = [None] * SLOT_COUNT
        await asyncio.gather(*(connection.close() for connection in connections))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        logger.info("closed cluster connection via %s", self.settings.address)


async def adopt_if_cluster(
    seed: Connection,
    client_name: str,
    scripts: Iterable[tuple[str, str]],
    required: bool,
) -> Connection:
    """Return `seed` unless its server is a cluster node; then a `ClusterConnection`.

    The server is asked CLUSTER SLOTS: an error reply means cluster mode is
    off (or the command is not allowed), and `seed` is returned as it is,
    unless `required` is true, which raises `ValkeyConnectionError`.
    """
    try:
        slots = await seed.execute("CLUSTER", "SLOTS")
    except ReplyError as exc:
        if required:
            await seed.close()
            raise ValkeyConnectionError(
                f"cluster mode was requested, but {seed.settings.address} is not a cluster node: "
                f"{exc}"
            ) from None
        return seed
    except BaseException:
        await seed.close()
        raise
    return await ClusterConnection.adopt(seed, slots, client_name, scripts)


def take_cluster_option(
    url: str, options: dict[str, Any]
) -> tuple[str, dict[str, Any], bool | None]:
    """Remove the ``cluster`` option from the URL's query and the keywords.

    Returns the URL and keywords without it, and the mode: `True` (``yes``)
    requires cluster mode, `False` (``no``) forces a single-node connection,
    and `None` (``auto``, the default) follows the server. The keyword wins
    over the URL. Raises `InvalidURLError` for any other value.
    """
    mode: bool | None = None
    if isinstance(url, str) and "?" in url:
        base, _, query = url.partition("?")
        kept: list[str] = []
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if unquote(name) == "cluster":
                mode = _parse_cluster_mode(unquote(value))
            else:
                kept.append(pair)
        url = f"{base}?{'&'.join(kept)}" if kept else base
    if "cluster" in options:
        options = dict(options)
        mode = _parse_cluster_mode(options.pop("cluster"))
    return url, options, mode


def _parse_cluster_mode(value: object) -> bool | None:
    """Read ``cluster`` as yes, no or auto (also as a bool, or `None` for auto)."""
    if value is None or isinstance(value, bool):
        return value
    word = str(value).lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    if word == "auto":
        return None
    raise InvalidURLError(f"invalid cluster option {value!r}; expected yes, no or auto")


def _node_address(entry: Any, reporter_host: str) -> Address | None:
    """Return a node's address from a CLUSTER SLOTS node entry.

    An empty host means the node that sent the map; ``?`` means the node's
    address is unknown, and the entry is skipped.
    """
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    if host == "?":
        return None
    return (host or reporter_host, int(entry[1]))


def _parse_redirect(message: str, replied_host: str) -> tuple[int, Address]:
    """Read the slot and address of ``MOVED 3999 127.0.0.1:6381`` (or ASK)."""
    try:
        _, slot_word, address = message.split(" ", 2)
        host, _, port_word = address.strip().rpartition(":")
        host = host.strip("[]") or replied_host
        return int(slot_word), (host, int(port_word))
    except ValueError:
        raise ValkeyConnectionError(f"invalid redirect from the server: {message!r}") from None


def _format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unreachable_message(target: int | Target, owner: Address | None) -> str:
    if isinstance(target, int):
        where = _format_address(owner) if owner is not None else "no known node"
        return f"the primary for slot {target} ({where}) is not reachable; the command was not sent"
    return "no primary of the cluster is reachable; the command was not sent"
