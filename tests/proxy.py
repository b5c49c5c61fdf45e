"""A TCP proxy on loopback that delays, stalls and cuts traffic, for fault tests.

`DelayingProxy` listens on a free port of 127.0.0.1 and forwards every
connection to one target address, both ways. Each chunk read is held for a
random delay before it is written on, and chunks keep their order. The test
can give replies a fixed delay of their own (`reply_delay`), so a command
reaches the server well before its reply reaches the client. It can cut
every open connection (`cut`), stop reading from clients
(`stop_reading`) so that their writes pile up in socket buffers, and start
again (`resume_reading`). It runs in the test's own event loop.

`HoldingProxy` forwards connections unchanged, except that it holds back
a client's bytes from the first occurrence of a marker on until the test
releases them: the commands before the marker reach the server, the rest
waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class DelayingProxy:
    """Forward loopback TCP connections to `target_port` with a random delay per chunk."""

    def __init__(
        self,
        target_port: int,
        max_delay: float = 0.0,
        seed: int | None = None,
        reply_delay: float | None = None,
    ) -> None:
        self.target_port = target_port
        self.max_delay = max_delay
        self.reply_delay = reply_delay
        self.port = 0
        self.connections_accepted = 0
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._reading = asyncio.Event()
        self._reading.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._reading.set()
        self.cut()
        for link in list(self._links):
            await link.finished()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def cut(self) -> int:
        """Reset every open connection at once; return how many were cut."""
        links = list(self._links)
        for link in links:
            link.reset()
        return len(links)

    def stop_reading(self) -> None:
        """Stop reading what clients send; their data waits in socket buffers."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def delay(self, reply: bool) -> float:
        """Seconds to hold one chunk: `reply_delay` for replies when set, else random."""
        if reply and self.reply_delay is not None:
            return self.reply_delay
        return self._random.uniform(0.0, self.max_delay) if self.max_delay else 0.0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        try:
            target_reader, target_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        link = _Link(self, reader, writer, target_reader, target_writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)


class _Link:
    """One client connection and its connection to the target."""

    def __init__(
        self,
        proxy: DelayingProxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        target_reader: asyncio.StreamReader,
        target_writer: asyncio.StreamWriter,
    ) -> None:
        self._proxy = proxy
        self._writers = (client_writer, target_writer)
        self._tasks = [
            asyncio.ensure_future(self._pump(client_reader, target_writer, gated=True)),
            asyncio.ensure_future(self._pump(target_reader, client_writer, gated=False)),
        ]
        self._done = asyncio.Event()

    async def run(self) -> None:
        try:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.reset()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._done.set()

    async def finished(self) -> None:
        await self._done.wait()

    def reset(self) -> None:
        """Abort both sockets, so each peer sees a reset, not a clean close."""
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: bool
    ) -> None:
        """Copy chunks from `reader` to `writer`, each after its own delay, in order."""
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send_delayed(chunks, writer))
        try:
            while True:
                if gated:
                    await self._proxy._reading.wait()
                chunk = await reader.read(65536)
                if not chunk:
                    break
                due = asyncio.get_running_loop().time() + self._proxy.delay(reply=not gated)
                chunks.put_nowait((due, chunk))
            chunks.put_nowait((0.0, b""))
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send_delayed(
        self, chunks: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await chunks.get()
            if not chunk:
                writer.close()
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()


class HoldingProxy:
    """Forward loopback TCP connections, holding the client's bytes from `marker` on.

    Bytes from the server pass at once. The first time a client sends
    `marker`, the bytes before it pass, `holding` is set, and the rest
    waits for `release()`.
    """

    def __init__(self, target_port: int, marker: bytes) -> None:
        self.target_port = target_port
        self.marker = marker
        self.port = 0
        self.holding = asyncio.Event()
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def release(self) -> None:
        """Let the held bytes, and everything after them, through."""
        self._released.set()

    async def close(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, target_writer]
        for task in (
            asyncio.ensure_future(self._pump(reader, target_writer, hold=True)),
            asyncio.ensure_future(self._pump(target_reader, writer, hold=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: bool
    ) -> None:
        while chunk := await reader.read(65536):
            at = chunk.find(self.marker) if hold and not self.holding.is_set() else -1
            if at >= 0:
                writer.write(chunk[:at])
                await writer.drain()
                self.holding.set()
                await self._released.wait()
                chunk = chunk[at:]
            writer.write(chunk)
            await writer.drain()
        writer.close()
