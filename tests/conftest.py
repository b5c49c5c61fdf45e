"""Fixtures: a real Valkey server for the session, and per-test prefixes.

The server is started from the bundled binary on a free loopback port,
unless WFE_VALKEY_TEST_URL points at a running one. Tests that kill or
restart a server use `private_server`, which always starts its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import valkey
from proxy import DelayingProxy

from wfe_valkey import ValkeyLifecyclePublisher, ValkeyLockProvider, ValkeyQueueProvider
from wfe_valkey.embedded import EmbeddedValkey


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    external = os.environ.get("WFE_VALKEY_TEST_URL")
    if external:
        yield external
        return
    with EmbeddedValkey() as server:
        yield server.url


@pytest.fixture
def private_server() -> Iterator[EmbeddedValkey]:
    """A server of this test's own, free to kill, restart or reconfigure."""
    server = EmbeddedValkey()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_host(server_url: str) -> Iterator[valkey.Valkey]:
    """An independent client (valkey-py) that plays a Rust host or checks the server."""
    client = valkey.Valkey.from_url(server_url)
    yield client
    client.close()


@pytest.fixture
async def locks(server_url: str, prefix: str) -> AsyncIterator[ValkeyLockProvider]:
    provider = await ValkeyLockProvider.new(server_url, prefix)
    yield provider
    await provider.close()


@pytest.fixture
async def queues(server_url: str, prefix: str) -> AsyncIterator[ValkeyQueueProvider]:
    provider = await ValkeyQueueProvider.new(server_url, prefix)
    yield provider
    await provider.close()


@pytest.fixture
async def publisher(server_url: str, prefix: str) -> AsyncIterator[ValkeyLifecyclePublisher]:
    provider = await ValkeyLifecyclePublisher.new(server_url, prefix)
    yield provider
    await provider.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., EmbeddedValkey]]:
    """Start private servers with extra command-line arguments; all stop after the test."""
    started: list[EmbeddedValkey] = []

    def start(*extra_args: str, binary: str | None = None) -> EmbeddedValkey:
        server = EmbeddedValkey(binary=binary, extra_args=extra_args)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def freeze() -> Iterator[Callable[[EmbeddedValkey], contextlib.AbstractContextManager[int]]]:
    """Freeze a server process with SIGSTOP for a `with` block; SIGCONT on exit.

    A frozen server still completes TCP handshakes (the kernel does that)
    but reads and answers nothing, like a hung host. Every frozen server is
    resumed at teardown too, so a failed test leaves none stopped.
    """
    frozen: list[int] = []

    @contextlib.contextmanager
    def frozen_server(server: EmbeddedValkey) -> Iterator[int]:
        process = server._process
        assert process is not None and process.poll() is None, "server is not running"
        os.kill(process.pid, signal.SIGSTOP)
        frozen.append(process.pid)
        try:
            yield process.pid
        finally:
            os.kill(process.pid, signal.SIGCONT)

    yield frozen_server
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[..., Awaitable[DelayingProxy]]]:
    """Start delaying TCP proxies in front of servers; all close after the test."""
    proxies: list[DelayingProxy] = []

    async def start(
        target_port: int,
        max_delay: float = 0.0,
        seed: int | None = None,
        reply_delay: float | None = None,
    ) -> DelayingProxy:
        proxy = DelayingProxy(target_port, max_delay=max_delay, seed=seed, reply_delay=reply_delay)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.close()
