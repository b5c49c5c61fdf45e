"""Timeouts: a hung or paused server gives ValkeyTimeoutError, never a hang.

The server is hung for real: frozen with SIGSTOP, busy in DEBUG SLEEP, or
holding clients with CLIENT PAUSE. Each test then checks that the same
provider works again once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import valkey
from proxy import DelayingProxy

from wfe_valkey import QueueType, ValkeyLockProvider, ValkeyQueueProvider, ValkeyTimeoutError
from wfe_valkey.embedded import EmbeddedValkey

Freeze = Callable[[EmbeddedValkey], contextlib.AbstractContextManager[int]]


def in_thread(server: EmbeddedValkey, *command: str) -> threading.Thread:
    """Run one command with valkey-py in a thread (it blocks until the server answers)."""

    def run() -> None:
        with valkey.Valkey(port=server.port) as admin:
            admin.execute_command(*command)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_timeouts_from_url_query(server_url: str, prefix: str) -> None:
    locks = await ValkeyLockProvider.new(f"{server_url}?timeout=0.5&connect_timeout=1", prefix)

    assert locks.settings.timeout == 0.5
    assert locks.settings.connect_timeout == 1.0
    await locks.close()


async def test_timeouts_from_keywords_override_url(server_url: str, prefix: str) -> None:
    locks = await ValkeyLockProvider.new(
        f"{server_url}?timeout=0.5&connect_timeout=1", prefix, timeout=2, connect_timeout=3.5
    )

    assert locks.settings.timeout == 2.0
    assert locks.settings.connect_timeout == 3.5
    await locks.close()


async def test_none_disables_timeouts(server_url: str, prefix: str) -> None:
    from_url = await ValkeyLockProvider.new(
        f"{server_url}?timeout=none&connect_timeout=None", prefix
    )
    from_keywords = await ValkeyLockProvider.new(
        server_url, prefix, timeout=None, connect_timeout="none"
    )

    for locks in (from_url, from_keywords):
        assert locks.settings.timeout is None
        assert locks.settings.connect_timeout is None
        assert await locks.acquire_lock(f"wf-{id(locks)}") is True
        await locks.close()


async def test_frozen_server_times_out_then_recovers(
    private_server: EmbeddedValkey, freeze: Freeze, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix, timeout=0.4)
    loop = asyncio.get_running_loop()

    with freeze(private_server):
        started = loop.time()
        with pytest.raises(ValkeyTimeoutError, match=re.escape(f"127.0.0.1:{private_server.port}")):
            await locks.acquire_lock("wf-1")
        elapsed = loop.time() - started
        assert 0.35 <= elapsed < 1.0
        with pytest.raises(ValkeyTimeoutError):
            await locks.acquire_lock("wf-2")

    assert await locks.acquire_lock("wf-3") is True
    await locks.close()


async def test_handshake_gets_the_connect_timeout(
    private_server: EmbeddedValkey,
    start_proxy: Callable[..., Awaitable[DelayingProxy]],
    prefix: str,
) -> None:
    proxy = await start_proxy(private_server.port, reply_delay=0.5)
    # cluster=no skips the CLUSTER SLOTS probe, an ordinary command with
    # the 0.2 s command timeout.
    url = f"{proxy.url}?cluster=no"

    locks = await ValkeyLockProvider.new(url, prefix, timeout=0.2, connect_timeout=5)

    assert locks._connection.state.value == "ready"
    await locks.close()


async def test_command_after_handshake_gets_the_command_timeout(
    private_server: EmbeddedValkey, freeze: Freeze, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix, timeout=0.3, connect_timeout=5)
    loop = asyncio.get_running_loop()

    with freeze(private_server):
        started = loop.time()
        with pytest.raises(ValkeyTimeoutError):
            await locks.acquire_lock("wf-1")
        elapsed = loop.time() - started

    assert 0.25 <= elapsed < 1.0
    await locks.close()


async def test_debug_sleep_times_out_then_recovers(
    start_server: Callable[..., EmbeddedValkey], prefix: str
) -> None:
    server = start_server("--enable-debug-command", "local")
    queues = await ValkeyQueueProvider.new(server.url, prefix, timeout=0.3)
    loop = asyncio.get_running_loop()

    sleeper = in_thread(server, "DEBUG", "SLEEP", "1")
    await asyncio.sleep(0.1)
    started = loop.time()
    with pytest.raises(ValkeyTimeoutError):
        await queues.queue_work("id-1", QueueType.WORKFLOW)
    assert 0.25 <= loop.time() - started < 0.9
    await asyncio.to_thread(sleeper.join)

    await queues.queue_work("id-2", QueueType.WORKFLOW)
    remaining = await queues.dequeue_work_many(QueueType.WORKFLOW, 10)
    assert remaining[-1] == "id-2"
    assert set(remaining) <= {"id-1", "id-2"}
    await queues.close()


async def test_client_pause_times_out_then_recovers(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix, timeout=0.3)
    loop = asyncio.get_running_loop()

    with valkey.Valkey(port=private_server.port) as admin:
        admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")
    started = loop.time()
    with pytest.raises(ValkeyTimeoutError):
        await locks.acquire_lock("wf-1")
    assert 0.25 <= loop.time() - started < 0.9
    await asyncio.sleep(1.0)

    assert await locks.acquire_lock("wf-2") is True
    await locks.close()


async def test_no_timeout_waits_through_client_pause(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(f"{private_server.url}?timeout=none", prefix)
    loop = asyncio.get_running_loop()

    with valkey.Valkey(port=private_server.port) as admin:
        admin.execute_command("CLIENT", "PAUSE", "500", "ALL")
    started = loop.time()
    assert await locks.acquire_lock("wf-1") is True
    assert loop.time() - started >= 0.4
    await locks.close()


async def test_connect_timeout_on_frozen_server(
    private_server: EmbeddedValkey, freeze: Freeze, prefix: str
) -> None:
    loop = asyncio.get_running_loop()

    with freeze(private_server):
        started = loop.time()
        with pytest.raises(ValkeyTimeoutError, match=r"timed out after 0\.3 s"):
            await ValkeyLockProvider.new(private_server.url, prefix, connect_timeout=0.3)
        elapsed = loop.time() - started

    assert 0.25 <= elapsed < 1.0


async def test_commands_time_out_after_hang_drop(
    private_server: EmbeddedValkey, freeze: Freeze, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(
        private_server.url, prefix, timeout=0.3, connect_timeout=0.3
    )

    with freeze(private_server):
        results = await asyncio.gather(
            *(locks.acquire_lock(f"wf-{n}") for n in range(20)), return_exceptions=True
        )
        assert all(isinstance(result, ValkeyTimeoutError) for result in results)
        later = await asyncio.gather(
            *(locks.acquire_lock(f"later-{n}") for n in range(20)), return_exceptions=True
        )
        assert all(isinstance(result, ValkeyTimeoutError) for result in later)

    assert await locks.acquire_lock("after") is True
    await locks.close()


async def test_many_callers_on_frozen_server_all_time_out(
    private_server: EmbeddedValkey, freeze: Freeze, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix, timeout=0.5)

    with freeze(private_server):
        # Spread the calls over several loop turns, so their deadlines differ.
        calls = []
        for n in range(200):
            calls.append(asyncio.ensure_future(locks.acquire_lock(f"wf-{n}")))
            if n % 20 == 0:
                await asyncio.sleep(0.005)
        results = await asyncio.gather(*calls, return_exceptions=True)

    kinds = Counter(type(result).__name__ for result in results)
    assert all(isinstance(result, ValkeyTimeoutError) for result in results), kinds
    assert all(isinstance(result, TimeoutError) for result in results)
    assert await locks.acquire_lock("after-thaw") is True
    await locks.close()
