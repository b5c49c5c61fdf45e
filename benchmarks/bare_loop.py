"""The ceiling reference: the least code that multiplexes one socket.

An asyncio `Protocol` and a hiredis reader, nothing more: every command
issued during one event-loop turn goes out in one write, and replies
resolve futures in order. It has no timeouts, no reconnects, no typed
errors and no write-buffer limit, so it shows what a multiplexed client
costs before any of those.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis


class BareLoop(asyncio.Protocol):
    """One auto-pipelined connection; `execute` returns the reply's future."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._unsent: list[bytes] = []
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> BareLoop:
        """Connect to `host`:`port` and return the protocol."""
        _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        reply = self._reader.gets()
        while reply is not False:
            self._waiters.popleft().set_result(reply)
            reply = self._reader.gets()

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command for this turn's write; error replies come back as values."""
        if not self._unsent:
            self._loop.call_soon(self._flush)
        self._unsent.append(hiredis.pack_command(args))
        future = self._loop.create_future()
        self._waiters.append(future)
        return future

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        assert self._transport is not None
        self._transport.write(b"".join(unsent))

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()
