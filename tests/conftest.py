"""Fixtures: a real Valkey server for the session, and per-test prefixes.

The server is started from the bundled binary on a free loopback port,
unless WFE_VALKEY_TEST_URL points at a running one. Tests that kill or
restart a server use `private_server`, which always starts its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import valkey

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
