"""Bad input: a clear typed error naming what was wrong, raised before anything is sent.

Caller mistakes raise ValueError or TypeError subclasses. "Nothing sent"
is checked on a private server: its command counters (INFO commandstats)
and connection counter do not move. A password never shows in an error,
a repr or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import valkey

from wfe_valkey import (
    AuthenticationError,
    InvalidURLError,
    QueueType,
    ReliableQueueProvider,
    ValkeyLifecyclePublisher,
    ValkeyLifecycleSubscriber,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    ValkeyTimeoutError,
)
from wfe_valkey.connection import State
from wfe_valkey.embedded import EmbeddedValkey

LONE_SURROGATE = "\udc80"


def command_calls(server: EmbeddedValkey) -> dict[str, int]:
    """How many times the server ran each command (`lpush`, `set`, ...).

    Leaves out what the checking client itself sends: INFO and CLIENT SETINFO.
    """
    with valkey.Valkey(port=server.port) as checker:
        stats = checker.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}
    calls.pop("info", None)
    calls.pop("client|setinfo", None)
    return calls


@pytest.fixture(scope="module")
def counted_server() -> Iterator[EmbeddedValkey]:
    """One private server for this module, whose counters show what reached it."""
    with EmbeddedValkey() as server:
        yield server


def connections_received(server: EmbeddedValkey) -> int:
    with valkey.Valkey(port=server.port) as checker:
        return int(checker.info("stats")["total_connections_received"])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "url is empty"),
        ("   ", "url is empty"),
        ("http://127.0.0.1:{port}", "unsupported URL scheme 'http'"),
        ("127.0.0.1:{port}", "unsupported URL scheme '(none)'"),
        ("redis://127.0.0.1:port", "invalid port"),
        ("redis://127.0.0.1:70000", "invalid port"),
        ("redis://127.0.0.1:0", "invalid port 0"),
        ("redis://127.0.0.1:{port}/abc", "invalid database number 'abc'"),
        ("redis://127.0.0.1:{port}/-1", "invalid database number '-1'"),
        ("redis://127.0.0.1:{port}?db=1.5", "invalid database number '1.5'"),
        ("redis://127.0.0.1:{port}?timeout=-1", "invalid timeout '-1'"),
        ("redis://127.0.0.1:{port}?timeout=soon", "invalid timeout 'soon'"),
        ("redis://127.0.0.1:{port}?connect_timeout=0", "invalid connect_timeout '0'"),
        ("redis://127.0.0.1:{port}?colour=blue", "unknown URL option 'colour'"),
        ("redis://:{port}", "missing host"),
        ("redis://127.0.0.1:{port}?ssl_ca_certs=/ca.pem", "needs a TLS URL"),
    ],
)
async def test_invalid_url_is_rejected_before_connecting(
    counted_server: EmbeddedValkey, prefix: str, url: str, message: str
) -> None:
    before = connections_received(counted_server)

    with pytest.raises(InvalidURLError, match=re.escape(message)):
        await ValkeyLockProvider.new(url.format(port=counted_server.port), prefix)

    assert issubclass(InvalidURLError, ValueError)
    assert connections_received(counted_server) == before + 1


async def test_non_string_url_raises_type_error(prefix: str) -> None:
    with pytest.raises(TypeError, match="url must be a str, got NoneType"):
        await ValkeyQueueProvider.new(None, prefix)  # type: ignore[arg-type]


async def test_unknown_keyword_option_raises_type_error(server_url: str, prefix: str) -> None:
    with pytest.raises(TypeError, match="unknown connection option 'colour'"):
        await ValkeyQueueProvider.new(server_url, prefix, colour="blue")


async def test_invalid_url_message_hides_the_password(prefix: str) -> None:
    with pytest.raises(InvalidURLError) as raised:
        await ValkeyLockProvider.new("redis://alice:hunter2-secret@127.0.0.1:99999", prefix)

    assert "hunter2-secret" not in str(raised.value)
    assert "alice:***@" in str(raised.value)


@pytest.mark.parametrize(
    ("prefix_value", "error", "message"),
    [
        ("", ValueError, "prefix must not be empty"),
        (None, TypeError, "prefix must be a str, got NoneType"),
        (b"wfe", TypeError, "prefix must be a str, got bytes"),
        (f"wfe{LONE_SURROGATE}", ValueError, "prefix is not encodable as UTF-8"),
    ],
)
@pytest.mark.parametrize(
    "provider_class", [ValkeyLockProvider, ValkeyQueueProvider, ValkeyLifecyclePublisher]
)
async def test_invalid_prefix_is_rejected_before_connecting(
    counted_server: EmbeddedValkey,
    provider_class: Any,
    prefix_value: Any,
    error: type[Exception],
    message: str,
) -> None:
    before = connections_received(counted_server)

    with pytest.raises(error, match=re.escape(message)):
        await provider_class.new(counted_server.url, prefix_value)

    assert connections_received(counted_server) == before + 1


BAD_IDS = [
    ("", ValueError, "must not be empty"),
    (None, TypeError, "must be a str, got NoneType"),
    (42, TypeError, "must be a str, got int"),
    (b"wf-1", TypeError, "must be a str, got bytes"),
    (LONE_SURROGATE, ValueError, "is not encodable as UTF-8: surrogates not allowed"),
    (f"wf-{LONE_SURROGATE}-1", ValueError, "is not encodable as UTF-8"),
]


@pytest.mark.parametrize(("resource", "error", "message"), BAD_IDS)
async def test_invalid_resource_is_rejected_before_sending(
    counted_server: EmbeddedValkey,
    prefix: str,
    resource: Any,
    error: type[Exception],
    message: str,
) -> None:
    locks = await ValkeyLockProvider.new(counted_server.url, prefix)
    before = command_calls(counted_server)

    with pytest.raises(error, match=f"^resource {re.escape(message)}"):
        await locks.acquire_lock(resource)
    with pytest.raises(error, match=f"^resource {re.escape(message)}"):
        await locks.release_lock(resource)

    assert command_calls(counted_server) == before
    await locks.close()


@pytest.mark.parametrize(("work_id", "error", "message"), BAD_IDS)
async def test_invalid_work_id_is_rejected_before_sending(
    counted_server: EmbeddedValkey,
    prefix: str,
    work_id: Any,
    error: type[Exception],
    message: str,
) -> None:
    queues = await ValkeyQueueProvider.new(counted_server.url, prefix)
    before = command_calls(counted_server)

    with pytest.raises(error, match=f"^id {re.escape(message)}"):
        await queues.queue_work(work_id, QueueType.WORKFLOW)
    with pytest.raises(error, match=f"^each id {re.escape(message)}"):
        await queues.queue_work_many(["good-1", work_id], QueueType.WORKFLOW)

    assert command_calls(counted_server) == before
    await queues.close()


@pytest.mark.parametrize("queue_type", ["workflow", None, 0, "WORKFLOW"])
async def test_invalid_queue_type_raises_type_error(
    queues: ValkeyQueueProvider, queue_type: Any
) -> None:
    message = f"queue_type must be a QueueType, got {queue_type!r}"

    with pytest.raises(TypeError, match=re.escape(message)):
        await queues.queue_work("wf-1", queue_type)
    with pytest.raises(TypeError, match=re.escape(message)):
        await queues.dequeue_work(queue_type)


@pytest.mark.parametrize(
    ("duration", "error", "message"),
    [
        (0, ValueError, "lock duration must be positive, got 0.0 s"),
        (-1.5, ValueError, "lock duration must be positive, got -1.5 s"),
        (timedelta(0), ValueError, "lock duration must be positive, got 0.0 s"),
        (timedelta(seconds=-3), ValueError, "lock duration must be positive, got -3.0 s"),
        (math.nan, ValueError, "lock duration must be positive, got nan s"),
        (math.inf, ValueError, "lock duration must be positive, got inf s"),
        ("30", TypeError, "lock duration must be a timedelta or seconds, got str"),
        (True, TypeError, "lock duration must be a timedelta or seconds, got bool"),
    ],
)
async def test_invalid_lock_duration_is_rejected(
    locks: ValkeyLockProvider, duration: Any, error: type[Exception], message: str
) -> None:
    before = locks.lock_duration

    with pytest.raises(error, match=re.escape(message)):
        locks.with_lock_duration(duration)

    assert locks.lock_duration == before


async def test_bad_call_loses_nothing_already_queued(queues: ValkeyQueueProvider) -> None:
    for work_id in ("id-1", "id-2", "id-3"):
        await queues.queue_work(work_id, QueueType.WORKFLOW)

    with pytest.raises(ValueError, match="not encodable"):
        await queues.queue_work(LONE_SURROGATE, QueueType.WORKFLOW)
    with pytest.raises(ValueError, match="must not be empty"):
        await queues.queue_work_many(["id-4", ""], QueueType.WORKFLOW)
    with pytest.raises(TypeError, match="must be a QueueType"):
        await queues.queue_work("id-5", "workflow")  # type: ignore[arg-type]

    assert [await queues.dequeue_work(QueueType.WORKFLOW) for _ in range(4)] == [
        "id-1",
        "id-2",
        "id-3",
        None,
    ]


async def test_bad_call_leaves_held_lock_alone(
    locks: ValkeyLockProvider, other_host: valkey.Valkey
) -> None:
    await locks.acquire_lock("wf-1")

    with pytest.raises(ValueError, match="not encodable"):
        await locks.release_lock(f"wf-1{LONE_SURROGATE}")

    assert other_host.get(f"{locks.prefix}:lock:wf-1") == locks.token.encode()
    assert await locks.acquire_lock("wf-1") is False


@pytest.fixture
def acl_server(start_server: Callable[..., EmbeddedValkey]) -> EmbeddedValkey:
    """A server with user alice (password alice-pw-7f3a) and a password on the default user."""
    server = start_server("--requirepass", "default-pw-91c2")
    with valkey.Valkey(port=server.port, password="default-pw-91c2") as admin:
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+alice-pw-7f3a"], keys=["*"], commands=["+@all"]
        )
    return server


def assert_no_password(text: str, *passwords: str) -> None:
    for password in passwords:
        assert password not in text


@pytest.mark.parametrize(
    ("credentials", "user"),
    [
        ("alice:wrong-pw-5d1e@", "alice"),
        ("bob:wrong-pw-5d1e@", "bob"),
        (":wrong-pw-5d1e@", "default"),
    ],
)
async def test_wrong_credentials_name_the_user_not_the_password(
    acl_server: EmbeddedValkey,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    credentials: str,
    user: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://{credentials}127.0.0.1:{acl_server.port}"

    with pytest.raises(AuthenticationError) as raised:
        await ValkeyLockProvider.new(url, prefix)

    expected = f"authentication as user {user!r} failed at 127.0.0.1:{acl_server.port}: "
    assert str(raised.value).startswith(expected)
    assert raised.value.code == "WRONGPASS"
    assert_no_password(str(raised.value), "wrong-pw-5d1e")
    assert_no_password(repr(raised.value), "wrong-pw-5d1e")
    assert_no_password(caplog.text, "wrong-pw-5d1e")


async def test_missing_password_names_the_default_user(
    acl_server: EmbeddedValkey, prefix: str
) -> None:
    with pytest.raises(AuthenticationError, match="NOAUTH") as raised:
        await ValkeyQueueProvider.new(acl_server.url, prefix)

    assert raised.value.code == "NOAUTH"


async def test_password_changed_on_server_never_leaks_while_reconnecting(
    acl_server: EmbeddedValkey, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://alice:alice-pw-7f3a@127.0.0.1:{acl_server.port}"
    locks = await ValkeyLockProvider.new(url, prefix, timeout=0.5)
    assert await locks.acquire_lock("wf-1") is True

    with valkey.Valkey(port=acl_server.port, password="default-pw-91c2") as admin:
        admin.acl_setuser("alice", reset_passwords=True, passwords=["+new-pw-0b6c"])
        admin.client_kill_filter(user="alice")
    while locks._connection.state is not State.RECONNECTING:
        await asyncio.sleep(0.01)
    with pytest.raises(ValkeyTimeoutError) as raised:
        await locks.acquire_lock("wf-2")

    assert "authentication as user 'alice' failed" in str(raised.value)
    for text in (str(raised.value), repr(raised.value), repr(locks), repr(locks.settings)):
        assert_no_password(text, "alice-pw-7f3a", "new-pw-0b6c", "default-pw-91c2")
    assert_no_password(caplog.text, "alice-pw-7f3a", "new-pw-0b6c", "default-pw-91c2")
    await asyncio.wait_for(locks.close(), 5)


async def test_reliable_ack_names_unencodable_id(server_url: str, prefix: str) -> None:
    async with await ReliableQueueProvider.new(server_url, prefix) as queues:
        with pytest.raises(ValueError, match="id is not encodable as UTF-8"):
            await queues.ack_work("bad-\udc80", QueueType.WORKFLOW)


async def test_subscriber_names_unencodable_workflow_id(server_url: str, prefix: str) -> None:
    async with await ValkeyLifecycleSubscriber.new(server_url, prefix) as subscriber:
        with pytest.raises(ValueError, match="workflow_id is not encodable as UTF-8"):
            subscriber.channel("bad-\udc80")


@pytest.mark.parametrize("duration", [1e300, 10**20, timedelta(days=999_999_999)])
async def test_huge_lock_duration_is_rejected(locks: ValkeyLockProvider, duration: object) -> None:
    with pytest.raises(ValueError, match="lock duration must be at most 9007199254740992 ms"):
        locks.with_lock_duration(duration)  # type: ignore[arg-type]

    assert await locks.acquire_lock("wf-1") is True


async def test_huge_dequeue_count_is_rejected(queues: ValkeyQueueProvider) -> None:
    with pytest.raises(ValueError, match="count must be from 1 to 9223372036854775807, got"):
        await queues.dequeue_work_many(QueueType.WORKFLOW, 2**63)


async def test_reliable_dequeue_count_is_capped(server_url: str, prefix: str) -> None:
    async with await ReliableQueueProvider.new(server_url, prefix) as queues:
        with pytest.raises(ValueError, match="count must be from 1 to 10000, got 10001"):
            await queues.dequeue_work_many(QueueType.WORKFLOW, 10_001)


async def test_queue_work_many_takes_an_iterator(queues: ValkeyQueueProvider) -> None:
    await queues.queue_work_many(iter(["a", "b"]), QueueType.WORKFLOW)

    assert await queues.dequeue_work_many(QueueType.WORKFLOW, 5) == ["a", "b"]


async def test_unhashable_queue_type_names_the_argument(queues: ValkeyQueueProvider) -> None:
    with pytest.raises(TypeError, match=r"queue_type must be a QueueType, got \['x'\]"):
        await queues.queue_work("a", ["x"])  # type: ignore[arg-type]
