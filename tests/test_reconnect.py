"""Reconnecting: the same provider objects work again after the connection drops.

Drops are real: the server is stopped and started again on the same port,
the client is killed with CLIENT KILL, or a proxy resets the TCP
connections. Run with -s to see the measured recovery times.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import statistics
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import valkey
from proxy import DelayingProxy

from wfe_valkey import (
    ConnectionLostError,
    LifecycleEvent,
    QueueType,
    ValkeyLifecyclePublisher,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    ValkeyTimeoutError,
    events,
)
from wfe_valkey.connection import BACKOFF_BASE, BACKOFF_CAP
from wfe_valkey.embedded import EmbeddedValkey
from wfe_valkey.lock import RELEASE_SHA

CONNECTION_LOGGER = "wfe_valkey.connection"


async def restart(server: EmbeddedValkey) -> None:
    """Stop the server and start it again on the same port, off the event loop."""
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)


def kill_clients(server: EmbeddedValkey, name: str) -> int:
    """CLIENT KILL every connection named `name`; return how many were killed."""
    with valkey.Valkey(port=server.port) as admin:
        ids = [c["id"] for c in admin.client_list() if c["name"] == name]
        for client_id in ids:
            admin.client_kill_filter(_id=client_id)
        return len(ids)


def client_entries(server: EmbeddedValkey, name: str) -> list[dict[str, str]]:
    with valkey.Valkey(port=server.port) as admin:
        return [c for c in admin.client_list() if c["name"] == name]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` every 10 ms until it holds; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_all_providers_work_again_after_server_restart(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    url = private_server.url
    locks = await ValkeyLockProvider.new(url, prefix)
    queues = await ValkeyQueueProvider.new(url, prefix)
    publisher = await ValkeyLifecyclePublisher.new(url, prefix)
    event = LifecycleEvent.new("wf-1", "def-1", 1, events.Started())

    await restart(private_server)

    assert await locks.acquire_lock("wf-1") is True
    await locks.release_lock("wf-1")
    assert await locks.acquire_lock("wf-1") is True
    await queues.queue_work("id-1", QueueType.WORKFLOW)
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "id-1"
    await publisher.publish(event)
    for provider in (locks, queues, publisher):
        await provider.close()


async def test_release_script_is_loaded_again_after_restart(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix)

    await restart(private_server)
    assert await locks.acquire_lock("wf-1") is True

    with valkey.Valkey(port=private_server.port) as checker:
        assert checker.script_exists(RELEASE_SHA) == [True]
        await locks.release_lock("wf-1")
        assert checker.exists(f"{prefix}:lock:wf-1") == 0
    await locks.close()


async def test_recovery_time_after_restart(private_server: EmbeddedValkey, prefix: str) -> None:
    """Time from the server accepting connections again to the first successful command."""
    locks = await ValkeyLockProvider.new(private_server.url, prefix)
    recoveries = []

    for round_number in range(5):
        await asyncio.to_thread(private_server.stop)
        accepting = AcceptWatcher(private_server.port)
        accepting.start()
        start_task = asyncio.ensure_future(asyncio.to_thread(private_server.start))

        assert await locks.acquire_lock(f"round-{round_number}") is True
        first_success = time.monotonic()
        await start_task
        accepting.join()

        assert accepting.first_accepted is not None
        recoveries.append(first_success - accepting.first_accepted)

    milliseconds = [round(seconds * 1000, 1) for seconds in recoveries]
    print(
        f"\nrecovery after restart (ms), 5 restarts: {milliseconds}; "
        f"median {statistics.median(milliseconds):.1f}, max {max(milliseconds):.1f}"
    )
    assert all(seconds < BACKOFF_CAP + 1.0 for seconds in recoveries)
    await locks.close()


class AcceptWatcher(threading.Thread):
    """Records when a port first accepts a TCP connection, polling every millisecond."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.timeout = timeout
        self.first_accepted: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    self.first_accepted = time.monotonic()
                    return
            except OSError:
                time.sleep(0.001)


async def test_client_kill_is_repaired(private_server: EmbeddedValkey, prefix: str) -> None:
    queues = await ValkeyQueueProvider.new(private_server.url, prefix)

    assert kill_clients(private_server, "wfe-valkey-queue") == 1
    await wait_for(lambda: len(client_entries(private_server, "wfe-valkey-queue")) == 1)

    await queues.queue_work("id-1", QueueType.EVENT)
    assert await queues.dequeue_work(QueueType.EVENT) == "id-1"
    await queues.close()


async def test_network_reset_is_repaired(
    private_server: EmbeddedValkey,
    start_proxy: Callable[..., Awaitable[DelayingProxy]],
    prefix: str,
) -> None:
    proxy = await start_proxy(private_server.port)
    locks = await ValkeyLockProvider.new(proxy.url, prefix)

    assert proxy.cut() == 1
    await wait_for(lambda: proxy.connections_accepted == 2)

    assert await locks.acquire_lock("wf-1") is True
    await locks.close()


async def test_written_command_lost_not_resent(
    private_server: EmbeddedValkey,
    start_proxy: Callable[..., Awaitable[DelayingProxy]],
    prefix: str,
) -> None:
    proxy = await start_proxy(private_server.port, reply_delay=1.0)
    queues = await ValkeyQueueProvider.new(proxy.url, prefix, timeout=5)
    key = queues.queue_key(QueueType.WORKFLOW)
    checker = valkey.Valkey(port=private_server.port)

    call = asyncio.ensure_future(queues.queue_work("id-1", QueueType.WORKFLOW))
    await wait_for(lambda: checker.llen(key) == 1)
    proxy.cut()

    with pytest.raises(ConnectionLostError, match="may or may not have been applied"):
        await call
    proxy.reply_delay = None
    await queues.queue_work("id-2", QueueType.WORKFLOW)
    assert checker.lrange(key, 0, -1) == [b"id-2", b"id-1"]
    checker.close()
    await queues.close()


async def test_commands_issued_while_down_wait_for_the_server(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix, timeout=10)
    await asyncio.to_thread(private_server.stop)
    await wait_for(lambda: locks._connection.state.value == "reconnecting")

    calls = [asyncio.ensure_future(locks.acquire_lock(f"wf-{n}")) for n in range(50)]
    await asyncio.sleep(0.3)
    assert not any(call.done() for call in calls)
    await asyncio.to_thread(private_server.start)

    assert await asyncio.gather(*calls) == [True] * 50
    await locks.close()


async def test_commands_issued_while_down_fail_at_their_timeout(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix, timeout=0.3)
    await asyncio.to_thread(private_server.stop)
    await wait_for(lambda: locks._connection.state.value == "reconnecting")
    loop = asyncio.get_running_loop()

    started = loop.time()
    with pytest.raises(ValkeyTimeoutError, match=re.escape(f"127.0.0.1:{private_server.port}")):
        await locks.acquire_lock("wf-1")
    elapsed = loop.time() - started

    assert 0.25 <= elapsed < 1.0
    await asyncio.to_thread(private_server.start)
    # The next reconnect attempt may be up to the 1 s backoff cap away,
    # longer than this provider's 0.3 s timeout.
    await wait_for(lambda: locks._connection.state.value == "ready")
    assert await locks.acquire_lock("wf-1") is True
    await locks.close()


async def test_auth_select_and_name_are_repeated_after_reconnect(
    start_server: Callable[..., EmbeddedValkey], prefix: str
) -> None:
    server = start_server()
    with valkey.Valkey(port=server.port) as admin:
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+alice-pw"], keys=["*"], commands=["+@all"]
        )
    url = f"redis://alice:alice-pw@127.0.0.1:{server.port}/3"
    locks = await ValkeyLockProvider.new(url, prefix)

    kill_clients(server, "wfe-valkey-lock")
    await wait_for(lambda: len(client_entries(server, "wfe-valkey-lock")) == 1)
    assert await locks.acquire_lock("wf-1") is True

    entry = client_entries(server, "wfe-valkey-lock")[0]
    assert entry["user"] == "alice"
    assert entry["db"] == "3"
    with valkey.Valkey(port=server.port, db=3) as checker:
        assert checker.get(f"{prefix}:lock:wf-1") == locks.token.encode()
    await locks.close()


async def test_drop_and_reconnect_are_logged_once(
    private_server: EmbeddedValkey, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix)
    address = f"127.0.0.1:{private_server.port}"
    caplog.set_level(logging.INFO, logger=CONNECTION_LOGGER)

    await restart(private_server)
    assert await locks.acquire_lock("wf-1") is True

    records = [r for r in caplog.records if r.name == CONNECTION_LOGGER]
    lost = [r for r in records if "lost" in r.getMessage()]
    reconnected = [r for r in records if "reconnected" in r.getMessage()]
    assert len(lost) == 1
    assert lost[0].levelno == logging.WARNING
    assert lost[0].getMessage() == f"connection to {address} lost: closed by the server"
    assert len(reconnected) == 1
    assert reconnected[0].levelno == logging.INFO
    assert reconnected[0].getMessage().startswith(f"reconnected to {address} after ")
    assert len(records) == 2
    await locks.close()


async def test_reconnect_backoff_is_capped_exponential_with_jitter(
    private_server: EmbeddedValkey, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix)
    caplog.set_level(logging.DEBUG, logger=CONNECTION_LOGGER)

    await asyncio.to_thread(private_server.stop)
    await asyncio.sleep(3.0)
    await asyncio.to_thread(private_server.start)
    assert await locks.acquire_lock("wf-1") is True

    delays = [
        (int(match[1]), float(match[2]))
        for record in caplog.records
        if (match := re.search(r"attempt (\d+) .* next in ([\d.]+) s", record.getMessage()))
    ]
    assert 5 <= len(delays) <= 12
    for attempt, delay in delays:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
        assert ceiling * 0.5 - 0.001 <= delay <= ceiling + 0.001
    # Jitter: the delays differ. Two may still match in the log's three
    # decimals, so the check asks for more than half of them distinct.
    assert len({delay for _, delay in delays}) > len(delays) // 2
    await locks.close()
