"""The lifecycle subscriber: confirmed subscriptions, parsing, reconnects, close."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

import pytest
import valkey

from wfe_valkey import (
    LifecycleEvent,
    ValkeyConnectionError,
    ValkeyLifecyclePublisher,
    ValkeyLifecycleSubscriber,
    events,
)
from wfe_valkey.embedded import EmbeddedValkey

RUST_EXAMPLE = (
    '{"event_time_utc":"2026-12-04T19:06:05.123456789Z","workflow_instance_id":"wf-1",'
    '"workflow_definition_id":"def-1","version":1,"reference":null,"event_type":"Started"}'
)


async def next_event(iterator: object, seconds: float = 5.0) -> LifecycleEvent:
    """Return the next event of an async iterator, failing after `seconds`."""
    async with asyncio.timeout(seconds):
        event: LifecycleEvent = await anext(iterator)  # type: ignore[call-overload]
        return event


async def wait_for_resubscribe(
    subscriber: ValkeyLifecycleSubscriber, workflow_id: str | None
) -> None:
    """Wait until the subscriber has reconnected once and confirmed the channel again."""
    async with asyncio.timeout(10):
        while subscriber.reconnect_count == 0:
            await asyncio.sleep(0.01)
        await subscriber.wait_subscribed(workflow_id)


@pytest.fixture
async def subscriber(server_url: str, prefix: str) -> AsyncIterator[ValkeyLifecycleSubscriber]:
    instance = await ValkeyLifecycleSubscriber.new(server_url, prefix)
    yield instance
    await instance.close()


async def test_workflow_subscription_receives_published_event(
    subscriber: ValkeyLifecycleSubscriber, publisher: ValkeyLifecyclePublisher
) -> None:
    subscription = await subscriber.subscribe("wf-1")
    sent = LifecycleEvent.new("wf-1", "def-1", 2, events.StepStarted(4, "Charge"))

    await publisher.publish(sent)

    assert await next_event(subscription) == sent


async def test_all_subscription_receives_every_workflow(
    subscriber: ValkeyLifecycleSubscriber, publisher: ValkeyLifecyclePublisher
) -> None:
    subscription = await subscriber.subscribe(None)
    first = LifecycleEvent.new("wf-a", "def-1", 1, events.Started())
    second = LifecycleEvent.new("wf-b", "def-2", 7, events.Error("card declined"))

    await publisher.publish(first)
    await publisher.publish(second)

    assert await next_event(subscription) == first
    assert await next_event(subscription) == second


async def test_workflow_subscription_ignores_other_workflows(
    subscriber: ValkeyLifecycleSubscriber, publisher: ValkeyLifecyclePublisher
) -> None:
    subscription = await subscriber.subscribe("wf-mine")
    other = LifecycleEvent.new("wf-other", "def-1", 1, events.Started())
    mine = LifecycleEvent.new("wf-mine", "def-1", 1, events.Completed())

    await publisher.publish(other)
    await publisher.publish(mine)

    assert await next_event(subscription) == mine


async def test_rust_payload_parses_to_exact_fields(
    subscriber: ValkeyLifecycleSubscriber, other_host: valkey.Valkey
) -> None:
    subscription = await subscriber.subscribe("wf-1")

    other_host.publish(f"{subscriber.prefix}:lifecycle:wf-1", RUST_EXAMPLE)

    event = await next_event(subscription)
    assert event.workflow_instance_id == "wf-1"
    assert event.workflow_definition_id == "def-1"
    assert event.version == 1
    assert event.reference is None
    assert event.event_type == events.Started()
    assert event.event_time_ns == 1_796_411_165_123_456_789
    assert event.to_json() == RUST_EXAMPLE


async def test_garbage_payload_is_logged_and_skipped(
    subscriber: ValkeyLifecycleSubscriber,
    other_host: valkey.Valkey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    subscription = await subscriber.subscribe("wf-1")
    channel = f"{subscriber.prefix}:lifecycle:wf-1"

    with caplog.at_level(logging.WARNING, logger="wfe_valkey.subscriber"):
        other_host.publish(channel, b"\xff not json {")
        other_host.publish(channel, '{"workflow_instance_id":"wf-1"}')
        other_host.publish(channel, RUST_EXAMPLE)
        event = await next_event(subscription)

    assert event.to_json() == RUST_EXAMPLE
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert skipped[0].startswith(f"skipped a 12-byte message on {channel}")
    assert "no 'event_time_utc' field" in skipped[1]


async def test_events_yields_after_wait_subscribed(
    subscriber: ValkeyLifecycleSubscriber, publisher: ValkeyLifecyclePublisher
) -> None:
    received: list[LifecycleEvent] = []

    async def read_two() -> None:
        async for event in subscriber.events("wf-1"):
            received.append(event)
            if len(received) == 2:
                return

    reader = asyncio.create_task(read_two())
    async with asyncio.timeout(5):
        await subscriber.wait_subscribed("wf-1")
    sent = [
        LifecycleEvent.new("wf-1", "d", 1, events.Started()),
        LifecycleEvent.new("wf-1", "d", 1, events.Completed()),
    ]
    for event in sent:
        await publisher.publish(event)
    async with asyncio.timeout(5):
        await reader

    assert received == sent


async def test_leaving_events_unsubscribes_the_channel(
    subscriber: ValkeyLifecycleSubscriber,
    publisher: ValkeyLifecyclePublisher,
    other_host: valkey.Valkey,
) -> None:
    channel = f"{subscriber.prefix}:lifecycle:wf-1"
    iterator = subscriber.events("wf-1")
    reading = asyncio.ensure_future(anext(iterator))
    await subscriber.wait_subscribed("wf-1")
    assert other_host.pubsub_numsub(channel) == [(channel.encode(), 1)]

    await publisher.publish(LifecycleEvent.new("wf-1", "d", 1, events.Started()))
    await reading
    await iterator.aclose()  # type: ignore[attr-defined]

    async with asyncio.timeout(5):
        while other_host.pubsub_numsub(channel) != [(channel.encode(), 0)]:
            await asyncio.sleep(0.01)


async def test_two_subscriptions_of_one_channel_both_receive(
    subscriber: ValkeyLifecycleSubscriber,
    publisher: ValkeyLifecyclePublisher,
    other_host: valkey.Valkey,
) -> None:
    first = await subscriber.subscribe("wf-1")
    second = await subscriber.subscribe("wf-1")
    sent = LifecycleEvent.new("wf-1", "d", 1, events.Resumed())

    await publisher.publish(sent)

    assert await next_event(first) == sent
    assert await next_event(second) == sent
    channel = f"{subscriber.prefix}:lifecycle:wf-1"
    assert other_host.pubsub_numsub(channel) == [(channel.encode(), 1)]


async def test_close_ends_iteration(subscriber: ValkeyLifecycleSubscriber) -> None:
    received: list[LifecycleEvent] = []

    async def read_all() -> None:
        async for event in subscriber.events(None):
            received.append(event)

    reader = asyncio.create_task(read_all())
    await subscriber.wait_subscribed(None)

    await subscriber.close()

    async with asyncio.timeout(5):
        await reader
    assert received == []
    assert reader.exception() is None


async def test_subscribe_after_close_raises(subscriber: ValkeyLifecycleSubscriber) -> None:
    await subscriber.close()

    with pytest.raises(ValkeyConnectionError, match="is closed"):
        await subscriber.subscribe("wf-1")


async def test_close_is_idempotent(subscriber: ValkeyLifecycleSubscriber) -> None:
    await subscriber.close()
    await subscriber.close()

    assert subscriber.closed is True


async def test_resubscribes_after_client_kill(private_server: EmbeddedValkey, prefix: str) -> None:
    subscriber = await ValkeyLifecycleSubscriber.new(private_server.url, prefix)
    publisher = await ValkeyLifecyclePublisher.new(private_server.url, prefix)
    checker = valkey.Valkey.from_url(private_server.url)
    try:
        subscription = await subscriber.subscribe("wf-1")

        assert checker.client_kill_filter(_type="pubsub") == 1
        await wait_for_resubscribe(subscriber, "wf-1")
        sent = LifecycleEvent.new("wf-1", "d", 1, events.Suspended())
        await publisher.publish(sent)

        assert await next_event(subscription) == sent
    finally:
        checker.close()
        await publisher.close()
        await subscriber.close()


async def test_resubscribes_after_server_restart(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    subscriber = await ValkeyLifecycleSubscriber.new(private_server.url, prefix)
    try:
        subscription = await subscriber.subscribe(None)

        private_server.stop()
        private_server.start()
        await wait_for_resubscribe(subscriber, None)
        publisher = await ValkeyLifecyclePublisher.new(private_server.url, prefix)
        sent = LifecycleEvent.new("wf-9", "d", 3, events.StepCompleted(2, None))
        await publisher.publish(sent)
        await publisher.close()

        assert await next_event(subscription) == sent
    finally:
        await subscriber.close()


async def test_health_check_reconnects_from_a_stopped_server(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    subscriber = await ValkeyLifecycleSubscriber.new(
        private_server.url, prefix, health_check_interval=0.1, timeout=0.3, connect_timeout=0.3
    )
    process = private_server._process
    assert process is not None
    try:
        subscription = await subscriber.subscribe("wf-1")

        os.kill(process.pid, signal.SIGSTOP)
        try:
            async with asyncio.timeout(5):
                while subscriber._channels[f"{prefix}:lifecycle:wf-1"].confirmed:
                    await asyncio.sleep(0.01)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await wait_for_resubscribe(subscriber, "wf-1")
        publisher = await ValkeyLifecyclePublisher.new(private_server.url, prefix)
        sent = LifecycleEvent.new("wf-1", "d", 1, events.Terminated())
        await publisher.publish(sent)
        await publisher.close()

        assert await next_event(subscription) == sent
    finally:
        await subscriber.close()


async def test_full_buffer_drops_and_counts(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    subscriber = await ValkeyLifecycleSubscriber.new(server_url, prefix, buffer_size=2)
    try:
        subscription = await subscriber.subscribe("wf-1")
        channel = f"{prefix}:lifecycle:wf-1"
        for _ in range(5):
            other_host.publish(channel, RUST_EXAMPLE)

        # Nothing is read until all five arrived, so exactly two fit.
        async with asyncio.timeout(5):
            while subscription.dropped < 3:
                await asyncio.sleep(0.01)
        await next_event(subscription)
        await next_event(subscription)

        assert subscription.dropped == 3
    finally:
        await subscriber.close()


async def test_subscribe_rejects_empty_workflow_id(
    subscriber: ValkeyLifecycleSubscriber,
) -> None:
    with pytest.raises(ValueError, match="workflow_id must not be empty"):
        await subscriber.subscribe("")


async def test_new_rejects_zero_buffer_size(server_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="buffer_size must be 1 or more, got 0"):
        await ValkeyLifecycleSubscriber.new(server_url, prefix, buffer_size=0)


async def test_new_fails_clearly_when_unreachable(prefix: str) -> None:
    from wfe_valkey.embedded import free_port

    port = free_port()
    with pytest.raises(ValkeyConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
        await ValkeyLifecycleSubscriber.new(f"redis://127.0.0.1:{port}", prefix)


async def test_client_name_is_set(
    subscriber: ValkeyLifecycleSubscriber, other_host: valkey.Valkey
) -> None:
    await subscriber.subscribe("wf-1")

    names = [client["name"] for client in other_host.client_list(_type="pubsub")]
    assert "wfe-valkey-subscriber" in names
