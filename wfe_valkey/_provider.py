"""What the three providers share: the connection's life and argument checks."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

from .cluster import ClusterConnection, adopt_if_cluster, take_cluster_option
from .config import ConnectionSettings, parse_url
from .connection import Connection, State
from .errors import InvalidURLError
from .sentinel import SentinelConnection, is_sentinel_url, open_sentinel_connection

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _coroutine_function(function: _Function) -> _Function:
    """Mark a function that returns a coroutine so that `inspect` sees a coroutine function.

    Python 3.11 has no such mark; there `inspect.iscoroutinefunction` says
    `False` for these methods, though awaiting them works the same.
    """
    mark = getattr(inspect, "markcoroutinefunction", None)
    return function if mark is None else mark(function)


class ValkeyProvider:
    """Owns one multiplexed connection, opened by `new()`.

    `start()` and `stop()` may be called any number of times in any order,
    also concurrently: `stop()` closes the connection and `start()` opens
    it again. They run one at a time, and the provider ends in the state
    of the last call made, counted from when `start()` or `stop()` is
    called, not from when its coroutine first runs. `close()` is `stop()`,
    and `async with provider:` closes it on exit.
    """

    client_name = "wfe-valkey"

    def __init__(self, connection: Connection, prefix: str) -> None:
        self._connection = connection
        self.prefix = prefix
        self._open_requested = True
        self._life_lock = asyncio.Lock()
        # Also on a connection opened by the caller: its socket then loads
        # the scripts on reconnect, and resends an EVALSHA that meets NOSCRIPT as EVAL.
        for sha, source in self._scripts():
            connection.register_script(sha, source)

    @property
    def settings(self) -> ConnectionSettings:
        """The connection settings (the password is hidden from `repr`)."""
        return self._connection.settings

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.prefix!r} {self._connection!r}>"

    @_coroutine_function
    def start(self) -> Coroutine[Any, Any, None]:
        """Open the connection again if `stop()` closed it; idempotent.

        Returns once the provider is open, or stopped again by a `stop()`
        called after this `start()`.
        """
        self._open_requested = True
        return self._settle()

    @_coroutine_function
    def stop(self) -> Coroutine[Any, Any, None]:
        """Close the connection; idempotent.

        A `start()` called before this one and still running is undone.
        """
        self._open_requested = False
        return self._settle()

    @_coroutine_function
    def close(self) -> Coroutine[Any, Any, None]:
        """Close the connection; the same as `stop()`."""
        return self.stop()

    async def _settle(self) -> None:
        """Open or close the provider, as the last `start()` or `stop()` asked."""
        async with self._life_lock:
            if self._open_requested:
                await self._open()
            else:
                await self._close()

    async def _open(self) -> None:
        """Open what `_close()` closed; called only under the life lock."""
        if self._connection.state is State.CLOSED:
            self._connection = await reopen_connection(
                self._connection, self.client_name, self._scripts()
            )

    async def _close(self) -> None:
        """Close the connection; called only under the life lock."""
        await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _scripts(self) -> list[tuple[str, str]]:
        """Scripts to load on every connect, as (SHA1, source) pairs."""
        return []


async def open_connection(
    url: str,
    options: dict[str, Any],
    client_name: str,
    scripts: Iterable[tuple[str, str]] = (),
) -> Connection:
    """Parse `url` with keyword `options` and open the connection it names.

    A Sentinel URL gives a `SentinelConnection` to the service's primary. A
    server in cluster mode gives a `ClusterConnection` that routes each
    command to its slot's primary, unless the ``cluster`` option (in the
    URL or as a keyword) is ``no``. With ``cluster=yes``, a server that is
    not a cluster node raises `ValkeyConnectionError`. Any other server
    gives a plain `Connection`.
    """
    scripts = list(scripts)
    url, options, cluster = take_cluster_option(url, options)
    if is_sentinel_url(url):
        if cluster:
            raise InvalidURLError("cluster mode cannot be combined with a Sentinel URL")
        return await open_sentinel_connection(url, options, client_name, scripts)

    settings = parse_url(url, **options)
    connection = await Connection.open(settings, client_name, scripts)
    if cluster is False:
        return connection
    return await adopt_if_cluster(connection, client_name, scripts, required=cluster is True)


async def reopen_connection(
    connection: Connection, client_name: str, scripts: Iterable[tuple[str, str]]
) -> Connection:
    """Open a new connection of the same kind, to the same place, as a closed one."""
    if isinstance(connection, (ClusterConnection, SentinelConnection)):
        return await connection.reopen(client_name, scripts)
    return await Connection.open(connection.settings, client_name, scripts)


def check_prefix(prefix: object) -> str:
    """Return the prefix if it is a non-empty string; raise otherwise."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    if not prefix:
        raise ValueError("prefix must not be empty")
    _check_encodable("prefix", prefix)
    return prefix


def reject_id(name: str, value: Any) -> None:
    """Raise the error that says why `value` is not a valid id; return if it is valid.

    Callers test the common case inline (a non-empty ASCII `str`) and call
    this for everything else, including valid non-ASCII ids.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    _check_encodable(name, value)


def _check_encodable(name: str, value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} is not encodable as UTF-8: {exc.reason}") from None
