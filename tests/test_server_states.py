"""Server states a provider meets in production: NOSCRIPT, LOADING, READONLY, BUSY, errors.

Each state is made for real on a private server: SCRIPT FLUSH, a DEBUG
RELOAD slowed down by the hidden `key-load-delay` setting, REPLICAOF
another private server, a long-running script, and keys of the wrong type.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from collections.abc import Callable

import pytest
import valkey
from proxy import HoldingProxy

from wfe_valkey import (
    BusyError,
    ConnectionLostError,
    LoadingError,
    NoScriptError,
    QueueType,
    ReadOnlyError,
    ReliableQueueProvider,
    ReplyError,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    WrongTypeError,
    parse_url,
)
from wfe_valkey.connection import EARLY_FLUSH_BYTES, Connection
from wfe_valkey.embedded import EmbeddedValkey
from wfe_valkey.lock import RELEASE_SCRIPT, RELEASE_SHA
from wfe_valkey.resp import BETWEEN_PARTS, evalsha_as_eval

GET_SCRIPT = "return redis.call('get', KEYS[1])"
GET_SCRIPT_SHA = "4e6d8fc8bb01276962cce5371fa795a7763657ae"

# DEBUG POPULATE this many keys, each loaded KEY_LOAD_DELAY_US microseconds
# slower, so a DEBUG RELOAD keeps the server LOADING for about a second.
LOADING_KEYS = 10_000
KEY_LOAD_DELAY_US = 60


class Reload(threading.Thread):
    """Runs DEBUG RELOAD in a thread; `loading` is set once the server reports loading."""

    def __init__(self, server: EmbeddedValkey) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.loading = threading.Event()
        self.finished_at = 0.0

    def run(self) -> None:
        with valkey.Valkey(port=self.server.port) as admin:
            admin.execute_command("DEBUG", "RELOAD")
        self.finished_at = time.monotonic()

    def start_and_wait_for_loading(self) -> None:
        self.start()
        with valkey.Valkey(port=self.server.port) as watcher:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    watcher.ping()
                except valkey.exceptions.BusyLoadingError:
                    self.loading.set()
                    return
                time.sleep(0.005)
        raise AssertionError("the server never reported LOADING")


@pytest.fixture
def slow_loading_server(start_server: Callable[..., EmbeddedValkey]) -> EmbeddedValkey:
    """A server whose DEBUG RELOAD keeps it LOADING for about a second."""
    server = start_server("--enable-debug-command", "local")
    with valkey.Valkey(port=server.port) as admin:
        admin.execute_command("DEBUG", "POPULATE", str(LOADING_KEYS), "filler")
        admin.config_set("key-load-delay", str(KEY_LOAD_DELAY_US))
        admin.config_set("loading-process-events-interval-bytes", "1024")
    return server


async def test_release_happens_after_script_flush(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix)
    await locks.acquire_lock("wf-1")

    with valkey.Valkey(port=private_server.port) as checker:
        checker.script_flush()
        await locks.release_lock("wf-1")
        assert checker.exists(f"{prefix}:lock:wf-1") == 0
    await locks.close()


async def test_release_after_flush_on_caller_connection(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    connection = await Connection.open(parse_url(private_server.url))
    locks = ValkeyLockProvider(connection, prefix)
    await locks.acquire_lock("wf-1")

    with valkey.Valkey(port=private_server.port) as checker:
        checker.script_flush()
        await locks.release_lock("wf-1")
        assert checker.exists(f"{prefix}:lock:wf-1") == 0
    await connection.close()


async def test_registered_evalsha_resent_as_eval(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    connection = await Connection.open(parse_url(private_server.url))
    connection.register_script(GET_SCRIPT_SHA, GET_SCRIPT)
    await connection.execute("SET", f"{prefix}:k", "v")

    with valkey.Valkey(port=private_server.port) as checker:
        checker.script_flush()
        reply = await connection.execute("EVALSHA", GET_SCRIPT_SHA, 1, f"{prefix}:k")
        assert reply == b"v"
        assert checker.script_exists(GET_SCRIPT_SHA) == [True]
    await connection.close()


async def test_unknown_evalsha_raises_no_script(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    connection = await Connection.open(parse_url(private_server.url))

    with pytest.raises(NoScriptError, match=r"^NOSCRIPT"):
        await connection.execute("EVALSHA", GET_SCRIPT_SHA, 1, f"{prefix}:k")
    await connection.close()


async def test_resent_evals_lost_after_write(private_server: EmbeddedValkey, prefix: str) -> None:
    """EVALs sent again after NOSCRIPT and written by an early flush fail as written.

    The number of releases makes the last EVAL sent again fill
    EARLY_FLUSH_BYTES, so the wire writes every such EVAL while it still
    reads the NOSCRIPT replies, and no later write follows.
    """
    locks = await ValkeyLockProvider.new(private_server.url, prefix)
    sample_key = f"{prefix}:lock:r00000".encode()
    sample = BETWEEN_PARTS % (locks._release_head, len(sample_key), sample_key, locks._release_tail)
    as_eval = evalsha_as_eval(sample, {RELEASE_SHA: RELEASE_SCRIPT})
    assert as_eval is not None
    count = math.ceil(EARLY_FLUSH_BYTES / len(as_eval))
    resources = [f"r{number:05d}" for number in range(count)]
    for resource in resources:
        assert await locks.acquire_lock(resource) is True

    checker = valkey.Valkey(port=private_server.port)
    checker.script_flush()
    releases = asyncio.gather(
        *(locks.release_lock(resource) for resource in resources), return_exceptions=True
    )
    await asyncio.sleep(0)
    wire = locks._connection._wire
    assert wire is not None
    assert wire.pending_count == count
    wire.flush_now()
    # Block the loop so that every NOSCRIPT reply waits in the socket for one read.
    time.sleep(0.3)
    checker.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        await asyncio.sleep(0.2)
        [entry] = [entry for entry in checker.client_list() if entry["name"] == locks.client_name]
        assert entry["cmd"] == "eval"
        checker.execute_command("CLIENT", "KILL", "ID", entry["id"])
        results = await releases
    finally:
        checker.execute_command("CLIENT", "UNPAUSE")
        checker.close()
        await locks.close()

    assert collections.Counter(type(result).__name__ for result in results) == {
        "ConnectionLostError": count
    }
    assert all(isinstance(result, ConnectionLostError) for result in results)


async def test_reliable_dequeue_during_loading_waits(
    slow_loading_server: EmbeddedValkey, prefix: str
) -> None:
    queues = await ReliableQueueProvider.new(slow_loading_server.url, prefix, timeout=10)
    await queues.queue_work("id-1", QueueType.WORKFLOW)
    reload = Reload(slow_loading_server)

    await asyncio.to_thread(reload.start_and_wait_for_loading)
    try:
        dequeued_id = await queues.dequeue_work(QueueType.WORKFLOW)
    finally:
        await asyncio.to_thread(reload.join)
        await queues.close()

    assert dequeued_id == "id-1"


async def test_reliable_dequeue_straddling_loading_end(
    slow_loading_server: EmbeddedValkey, prefix: str
) -> None:
    # dequeue_work sends SADD and LMOVE in one batch. The proxy passes the
    # SADD on during loading and keeps the LMOVE back until loading has
    # ended, so the SADD meets LOADING and the LMOVE runs.
    proxy = HoldingProxy(slow_loading_server.port, b"*5\r\n$5\r\nLMOVE")
    await proxy.start()
    try:
        queues = await ReliableQueueProvider.new(proxy.url, prefix, timeout=10)
        await queues.queue_work("work-1", QueueType.WORKFLOW)
        reload = Reload(slow_loading_server)
        await asyncio.to_thread(reload.start_and_wait_for_loading)

        dequeue = asyncio.ensure_future(queues.dequeue_work(QueueType.WORKFLOW))
        await asyncio.wait_for(proxy.holding.wait(), 5)
        await asyncio.to_thread(reload.join)
        proxy.release()
        dequeued_id = await dequeue

        in_flight = await queues.in_flight(QueueType.WORKFLOW)
        with valkey.Valkey(port=slow_loading_server.port) as checker:
            hosts = set(checker.smembers(queues.hosts_key))
        await queues.close()
    finally:
        await proxy.close()

    assert dequeued_id == "work-1"
    assert in_flight == ["work-1"]
    assert hosts == {queues.host_id.encode()}


async def test_command_during_loading_waits_until_loaded(
    slow_loading_server: EmbeddedValkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(slow_loading_server.url, prefix, timeout=10)
    reload = Reload(slow_loading_server)

    await asyncio.to_thread(reload.start_and_wait_for_loading)
    assert await locks.acquire_lock("wf-1") is True
    acquired_at = time.monotonic()
    await asyncio.to_thread(reload.join)

    assert acquired_at >= reload.finished_at - 0.05
    with valkey.Valkey(port=slow_loading_server.port) as checker:
        assert checker.get(f"{prefix}:lock:wf-1") == locks.token.encode()
        assert checker.dbsize() == LOADING_KEYS + 1
    await locks.close()


async def test_loading_past_the_timeout_raises_loading_error(
    slow_loading_server: EmbeddedValkey, prefix: str
) -> None:
    queues = await ValkeyQueueProvider.new(slow_loading_server.url, prefix, timeout=0.3)
    reload = Reload(slow_loading_server)
    loop = asyncio.get_running_loop()

    await asyncio.to_thread(reload.start_and_wait_for_loading)
    started = loop.time()
    with pytest.raises(LoadingError, match="loading the dataset in memory") as raised:
        await queues.queue_work("id-1", QueueType.WORKFLOW)
    assert loop.time() - started < 0.6
    assert raised.value.code == "LOADING"
    await asyncio.to_thread(reload.join)

    await queues.queue_work("id-2", QueueType.WORKFLOW)
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "id-2"
    assert await queues.dequeue_work(QueueType.WORKFLOW) is None
    await queues.close()


async def test_new_provider_during_loading_connects_once_loaded(
    slow_loading_server: EmbeddedValkey, prefix: str
) -> None:
    reload = Reload(slow_loading_server)

    await asyncio.to_thread(reload.start_and_wait_for_loading)
    locks = await ValkeyLockProvider.new(slow_loading_server.url, prefix, connect_timeout=10)

    assert await locks.acquire_lock("wf-1") is True
    await asyncio.to_thread(reload.join)
    await locks.close()


async def test_write_to_replica_raises_read_only_and_reconnects(
    start_server: Callable[..., EmbeddedValkey], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    primary = start_server()
    locks = await ValkeyLockProvider.new(server.url, prefix)
    caplog.set_level(logging.INFO, logger="wfe_valkey.connection")
    admin = valkey.Valkey(port=server.port)
    admin.replicaof("127.0.0.1", primary.port)

    with pytest.raises(ReadOnlyError, match="READONLY") as raised:
        await locks.acquire_lock("wf-1")
    assert raised.value.code == "READONLY"
    admin.replicaof("NO", "ONE")
    assert await locks.acquire_lock("wf-1") is True

    messages = [r.getMessage() for r in caplog.records if r.name == "wfe_valkey.connection"]
    assert f"connection to 127.0.0.1:{server.port} lost: the server is a read-only replica now" in (
        messages
    )
    assert any(m.startswith(f"reconnected to 127.0.0.1:{server.port}") for m in messages)
    admin.close()
    await locks.close()


async def test_lock_key_holding_a_list_raises_wrong_type(
    server_url: str, other_host: valkey.Valkey, prefix: str
) -> None:
    locks = await ValkeyLockProvider.new(server_url, prefix)
    other_host.lpush(f"{prefix}:lock:wf-1", "not-a-token")

    assert await locks.acquire_lock("wf-1") is False
    with pytest.raises(WrongTypeError, match="WRONGTYPE Operation against a key") as raised:
        await locks.release_lock("wf-1")
    assert raised.value.code == "WRONGTYPE"
    assert other_host.lrange(f"{prefix}:lock:wf-1", 0, -1) == [b"not-a-token"]
    assert await locks.acquire_lock("wf-2") is True
    await locks.close()


async def test_queue_key_holding_a_string_raises_wrong_type(
    queues: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    other_host.set(queues.queue_key(QueueType.EVENT), "a string")

    with pytest.raises(WrongTypeError, match="WRONGTYPE"):
        await queues.queue_work("id-1", QueueType.EVENT)
    with pytest.raises(WrongTypeError, match="WRONGTYPE"):
        await queues.dequeue_work(QueueType.EVENT)
    await queues.queue_work("id-2", QueueType.INDEX)
    assert await queues.dequeue_work(QueueType.INDEX) == "id-2"


async def test_busy_script_raises_busy_error(private_server: EmbeddedValkey, prefix: str) -> None:
    locks = await ValkeyLockProvider.new(private_server.url, prefix, timeout=5)
    admin = valkey.Valkey(port=private_server.port)
    admin.config_set("busy-reply-threshold", "100")

    script_errors: list[str] = []

    def run_endless_script() -> None:
        with valkey.Valkey(port=private_server.port) as script_client:
            try:
                script_client.eval("while true do end", 0)
            except valkey.exceptions.ResponseError as exc:
                script_errors.append(str(exc))

    runner = threading.Thread(target=run_endless_script, daemon=True)
    runner.start()
    await asyncio.sleep(0.3)
    with pytest.raises(BusyError, match="BUSY") as raised:
        await locks.acquire_lock("wf-1")
    assert raised.value.code == "BUSY"
    admin.script_kill()
    await asyncio.to_thread(runner.join)

    assert len(script_errors) == 1
    assert "killed" in script_errors[0]
    assert await locks.acquire_lock("wf-1") is True
    admin.close()
    await locks.close()


async def test_handshake_error_keeps_the_server_code(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    with pytest.raises(ReplyError) as raised:
        await ValkeyLockProvider.new(f"{private_server.url}/99", prefix)

    assert type(raised.value) is ReplyError
    assert raised.value.code == "ERR"
    assert str(raised.value) == (
        f"SELECT 99 failed at 127.0.0.1:{private_server.port}: ERR DB index is out of range"
    )
