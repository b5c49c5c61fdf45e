"""The lifecycle publisher: both channels, and the exact JSON on the wire."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest
import valkey
from valkey.client import PubSub

from wfe_valkey import (
    AuthenticationError,
    LifecycleEvent,
    LifecyclePublisher,
    ValkeyLifecyclePublisher,
    events,
)
from wfe_valkey.embedded import EmbeddedValkey


@pytest.fixture
def rust_subscriber(other_host: valkey.Valkey) -> Iterator[PubSub]:
    pubsub = other_host.pubsub(ignore_subscribe_messages=True)
    yield pubsub
    pubsub.close()


def next_message(pubsub: PubSub) -> dict[str, bytes]:
    """Wait up to five seconds for the next published message."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message  # type: ignore[no-any-return]
    raise AssertionError("no message within 5 s")


async def test_workflow_channel_receives_exact_json(
    publisher: ValkeyLifecyclePublisher, rust_subscriber: PubSub
) -> None:
    rust_subscriber.subscribe(f"{publisher.prefix}:lifecycle:wf-1")
    event = LifecycleEvent.new("wf-1", "def-1", 1, events.Started())

    await publisher.publish(event)

    message = next_message(rust_subscriber)
    assert message["channel"] == f"{publisher.prefix}:lifecycle:wf-1".encode()
    assert message["data"] == event.to_json().encode()
    parsed = LifecycleEvent.from_json(message["data"])
    assert parsed.workflow_instance_id == "wf-1"
    assert parsed.event_type == events.Started()


async def test_all_channel_receives_exact_json(
    publisher: ValkeyLifecyclePublisher, rust_subscriber: PubSub
) -> None:
    rust_subscriber.subscribe(f"{publisher.prefix}:lifecycle:all")
    event = LifecycleEvent.new("wf-2", "def-1", 3, events.StepStarted(1, "Charge"))

    await publisher.publish(event)

    message = next_message(rust_subscriber)
    assert message["channel"] == f"{publisher.prefix}:lifecycle:all".encode()
    assert message["data"] == event.to_json().encode()
    parsed = LifecycleEvent.from_json(message["data"])
    assert parsed.workflow_instance_id == "wf-2"
    assert parsed.event_type == events.StepStarted(step_id=1, step_name="Charge")


async def test_non_ascii_workflow_id_keeps_its_bytes(
    publisher: ValkeyLifecyclePublisher, rust_subscriber: PubSub
) -> None:
    rust_subscriber.subscribe(f"{publisher.prefix}:lifecycle:wf-é✓")
    event = LifecycleEvent.new("wf-é✓", "déf", 1, events.StepStarted(2, "Zahlung prüfen"))

    await publisher.publish(event)

    message = next_message(rust_subscriber)
    assert message["channel"] == f"{publisher.prefix}:lifecycle:wf-é✓".encode()
    assert message["data"] == event.to_json().encode()
    assert LifecycleEvent.from_json(message["data"]) == event


async def test_each_event_is_published_once_per_channel(
    publisher: ValkeyLifecyclePublisher, rust_subscriber: PubSub
) -> None:
    rust_subscriber.subscribe(
        f"{publisher.prefix}:lifecycle:all", f"{publisher.prefix}:lifecycle:wf-3"
    )
    first = LifecycleEvent.new("wf-3", "d", 1, events.Started())
    second = LifecycleEvent.new("wf-3", "d", 1, events.Completed())

    await publisher.publish(first)
    await publisher.publish(second)

    messages = [next_message(rust_subscriber) for _ in range(4)]

    received = sorted((message["channel"], message["data"]) for message in messages)
    all_channel = f"{publisher.prefix}:lifecycle:all".encode()
    own_channel = f"{publisher.prefix}:lifecycle:wf-3".encode()
    expected = sorted(
        (channel, event.to_json().encode())
        for channel in (all_channel, own_channel)
        for event in (first, second)
    )
    assert received == expected
    assert rust_subscriber.get_message(timeout=0.2) is None


async def test_publish_rejects_a_non_event(publisher: ValkeyLifecyclePublisher) -> None:
    with pytest.raises(TypeError, match="event must be a LifecycleEvent, got dict"):
        await publisher.publish({"workflow_instance_id": "wf"})  # type: ignore[arg-type]


async def test_publisher_satisfies_the_protocol(publisher: ValkeyLifecyclePublisher) -> None:
    assert isinstance(publisher, LifecyclePublisher)


async def test_publish_raises_the_server_error(
    private_server: EmbeddedValkey, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with valkey.Valkey(port=private_server.port) as admin:
        admin.acl_setuser(
            "quiet",
            enabled=True,
            passwords=["+quiet-pw"],
            keys=["*"],
            commands=["+@all", "-publish"],
        )
    url = f"redis://quiet:quiet-pw@127.0.0.1:{private_server.port}"
    publisher = await ValkeyLifecyclePublisher.new(url, prefix)
    event = LifecycleEvent.new("wf-1", "def-1", 1, events.Started())

    with pytest.raises(AuthenticationError) as raised:
        await publisher.publish(event)

    assert raised.value.code == "NOPERM"
    assert "publish" in str(raised.value)
    assert await publisher._connection.execute("PING") == b"PONG"
    await publisher.close()
    # The second PUBLISH failed too. Once the traceback that keeps its
    # future is gone, asyncio logs its error unless the error was retrieved.
    del raised
    gc.collect()
    assert "never retrieved" not in caplog.text
