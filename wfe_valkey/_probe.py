"""Ask one server a few commands on a socket of its own, then close it.

Discovery needs this: a Sentinel is asked where the primary is, and a
cluster node that has no connection yet is asked for the slot map. A full
`Connection` would keep reconnecting to a server that is down, which is
not wanted here, so this module opens a plain stream, authenticates,
sends the commands in one write, reads their replies and closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .config import ConnectionSettings
from .connection import auth_commands
from .errors import AuthenticationError, ReplyError, ValkeyConnectionError, ValkeyTimeoutError
from .resp import CommandArg, ReplyParser, encode_command

READ_SIZE = 65536


async def query(
    settings: ConnectionSettings,
    commands: Sequence[tuple[CommandArg, ...]],
    timeout: float,
) -> list[Any]:
    """Send `commands` to the server of `settings` and return their replies.

    The settings' credentials are sent first with AUTH. Error replies come
    back in the list as `ReplyError` instances, except a failed AUTH, which
    raises `AuthenticationError`. Raises `ValkeyConnectionError` when the
    server cannot be reached or drops the socket, and `ValkeyTimeoutError`
    when everything takes longer than `timeout` seconds.
    """
    auth = auth_commands(settings)
    to_send = [*auth, *commands]
    try:
        async with asyncio.timeout(timeout):
            replies = await _exchange(settings, to_send)
    except TimeoutError:
        raise ValkeyTimeoutError(f"no reply from {settings.address} within {timeout} s") from None
    except OSError as exc:
        raise ValkeyConnectionError(
            f"cannot query {settings.address}: {exc.strerror or exc}"
        ) from None

    if auth and isinstance(replies[0], ReplyError):
        user = settings.username or "default"
        raise AuthenticationError(
            f"authentication as user {user!r} failed at {settings.address}: {replies[0]}"
        )
    return replies[len(auth) :]


async def open_stream(
    settings: ConnectionSettings,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP, TLS or Unix socket stream to the server of `settings`."""
    if settings.unix_path is not None:
        return await asyncio.open_unix_connection(settings.unix_path)
    ssl_context = settings.tls.create_context() if settings.tls else None
    return await asyncio.open_connection(settings.host, settings.port, ssl=ssl_context)


async def _exchange(
    settings: ConnectionSettings, commands: Sequence[tuple[CommandArg, ...]]
) -> list[Any]:
    """Open the stream, write every command, read as many replies, close."""
    reader, writer = await open_stream(settings)
    try:
        writer.write(b"".join(encode_command(command) for command in commands))
        parser = ReplyParser()
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await reader.read(READ_SIZE)
            if not data:
                raise ValkeyConnectionError(f"{settings.address} closed the socket")
            replies.extend(parser.parse(data))
        return replies
    finally:
        writer.close()
