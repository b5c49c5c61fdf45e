"""The multiplexed connection: ordering, pipelining and the handshake."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
import valkey

from wfe_valkey import (
    AuthenticationError,
    QueueType,
    ValkeyConnectionError,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    WrongTypeError,
    parse_url,
)
from wfe_valkey.connection import Connection
from wfe_valkey.embedded import EmbeddedValkey


@pytest.fixture
def protected_server() -> Iterator[EmbeddedValkey]:
    """A server with a default password and an ACL user 'alice'."""
    server = EmbeddedValkey(extra_args=("--requirepass", "default-pw"))
    server.start()
    admin = valkey.Valkey(port=server.port, password="default-pw")
    admin.acl_setuser("alice", enabled=True, passwords=["+alice-pw"], keys="*", commands=["+@all"])
    admin.close()
    yield server
    server.stop()


async def test_concurrent_callers_each_get_their_own_reply(server_url: str) -> None:
    connection = await Connection.open(parse_url(server_url))

    replies = await asyncio.gather(*(connection.execute("ECHO", f"m-{n}") for n in range(2000)))

    assert replies == [f"m-{n}".encode() for n in range(2000)]
    await connection.close()


async def test_commands_of_one_turn_leave_in_one_write(server_url: str) -> None:
    connection = await Connection.open(parse_url(server_url))
    wire = connection._wire
    assert wire is not None and wire._transport is not None
    transport = wire._transport
    writes: list[bytes] = []
    original_write = transport.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        original_write(data)

    transport.write = counting_write  # type: ignore[method-assign]
    futures = [connection.execute("ECHO", str(n)) for n in range(100)]
    replies = await asyncio.gather(*futures)

    assert len(writes) == 1
    assert writes[0].count(b"ECHO") == 100
    assert replies == [str(n).encode() for n in range(100)]
    await connection.close()


async def test_execute_many_sends_one_write_and_keeps_errors_in_place(server_url: str) -> None:
    connection = await Connection.open(parse_url(server_url))
    key = "test-execute-many-list"
    await connection.execute("DEL", key)
    await connection.execute("RPUSH", key, "x")

    replies = await connection.execute_many([("ECHO", "a"), ("GET", key), ("ECHO", "b")])

    assert replies[0] == b"a"
    assert type(replies[1]) is WrongTypeError
    assert replies[2] == b"b"
    await connection.execute("DEL", key)
    await connection.close()


async def test_error_reply_raises_for_its_caller_only(server_url: str) -> None:
    connection = await Connection.open(parse_url(server_url))
    await connection.execute("RPUSH", "test-error-reply-list", "x")

    results = await asyncio.gather(
        connection.execute("ECHO", "before"),
        connection.execute("GET", "test-error-reply-list"),
        connection.execute("ECHO", "after"),
        return_exceptions=True,
    )

    assert results[0] == b"before"
    assert isinstance(results[1], WrongTypeError)
    assert str(results[1]).startswith("WRONGTYPE")
    assert results[2] == b"after"
    await connection.execute("DEL", "test-error-reply-list")
    await connection.close()


async def test_client_name_is_set_on_connect(server_url: str, other_host: valkey.Valkey) -> None:
    connection = await Connection.open(parse_url(server_url, client_name="host-7"))

    names = [client["name"] for client in other_host.client_list()]

    assert "host-7" in names
    await connection.close()


async def test_providers_name_their_connections(
    locks: ValkeyLockProvider, queues: ValkeyQueueProvider, other_host: valkey.Valkey
) -> None:
    names = {client["name"] for client in other_host.client_list()}

    assert {"wfe-valkey-lock", "wfe-valkey-queue"} <= names


async def test_password_authentication(protected_server: EmbeddedValkey, prefix: str) -> None:
    url = f"redis://:default-pw@127.0.0.1:{protected_server.port}"
    async with await ValkeyLockProvider.new(url, prefix) as locks:
        assert await locks.acquire_lock("wf-1") is True


async def test_acl_user_authentication(protected_server: EmbeddedValkey, prefix: str) -> None:
    url = f"redis://alice:alice-pw@127.0.0.1:{protected_server.port}"
    async with await ValkeyQueueProvider.new(url, prefix) as queues:
        await queues.queue_work("wf-1", QueueType.WORKFLOW)
        assert await queues.dequeue_work(QueueType.WORKFLOW) == "wf-1"


async def test_wrong_password_names_user_not_password(
    protected_server: EmbeddedValkey, prefix: str
) -> None:
    url = f"redis://alice:wrong-pw-123@127.0.0.1:{protected_server.port}"

    with pytest.raises(AuthenticationError) as caught:
        await ValkeyLockProvider.new(url, prefix)

    assert "'alice'" in str(caught.value)
    assert "wrong-pw-123" not in str(caught.value)
    assert "wrong-pw-123" not in repr(caught.value)


async def test_missing_password_is_an_authentication_error(
    protected_server: EmbeddedValkey, prefix: str
) -> None:
    with pytest.raises(AuthenticationError, match="NOAUTH"):
        await ValkeyLockProvider.new(f"redis://127.0.0.1:{protected_server.port}", prefix)


async def test_database_is_selected(server_url: str, prefix: str) -> None:
    async with await ValkeyQueueProvider.new(server_url, prefix, db=3) as queues:
        await queues.queue_work("in-db-3", QueueType.WORKFLOW)

        checker = valkey.Valkey.from_url(server_url, db=3)
        assert checker.lrange(f"{prefix}:queue:workflow", 0, -1) == [b"in-db-3"]
        checker.close()
        await queues.dequeue_work(QueueType.WORKFLOW)


async def test_unix_socket_url(tmp_path_factory: pytest.TempPathFactory, prefix: str) -> None:
    socket_path = tmp_path_factory.mktemp("sock") / "valkey.sock"
    with EmbeddedValkey(extra_args=("--unixsocket", str(socket_path))):
        url = f"unix://{socket_path}?db=2"
        async with await ValkeyQueueProvider.new(url, prefix) as queues:
            await queues.queue_work("over-unix", QueueType.EVENT)
            assert await queues.dequeue_work(QueueType.EVENT) == "over-unix"


async def test_connect_to_closed_port_fails_with_address(prefix: str) -> None:
    from wfe_valkey.embedded import free_port

    port = free_port()

    with pytest.raises(ValkeyConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
        await ValkeyLockProvider.new(f"redis://127.0.0.1:{port}", prefix)


async def test_commands_after_close_fail(locks: ValkeyLockProvider) -> None:
    await locks.close()

    with pytest.raises(ValkeyConnectionError, match="is closed"):
        await locks.acquire_lock("wf-1")


def test_import_loads_no_other_client_library() -> None:
    code = (
        "import sys, wfe_valkey\n"
        "others = [m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'valkey', 'glide', 'coredis', 'aioredis')]\n"
        "print(others)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


async def test_encoded_batch_needs_one_key_per_command(server_url: str) -> None:
    connection = await Connection.open(parse_url(server_url))

    with pytest.raises(
        ValueError, match=r"^keys must hold one key \(or None\) per command: 1 commands, 2 keys$"
    ):
        connection.execute_many_encoded([b"*1\r\n$4\r\nPING\r\n"], [None, None])
    await connection.close()
