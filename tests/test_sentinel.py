"""The providers behind Valkey Sentinel: discovery, URL options and failovers.

The contract cases of the lock, queue and lifecycle tests run here again
with `server_url` a ``redis+sentinel://`` URL and `other_host` a valkey-py
client of the primary.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import valkey
from cluster_fixtures import (
    QueueTraffic,
    SentinelDeployment,
    ServerProcess,
    start_sentinels,
    wait_until,
)
from test_lifecycle import (
    rust_subscriber,  # noqa: F401 (a fixture the imported lifecycle tests use)
    test_all_channel_receives_exact_json,
    test_each_event_is_published_once_per_channel,
    test_workflow_channel_receives_exact_json,
)
from test_lock import (
    test_acquire_succeeds,
    test_five_rounds_then_held,
    test_lock_key_holds_provider_token,
    test_release_leaves_other_holders_lock,
    test_release_of_never_acquired_resource_is_fine,
    test_release_then_reacquire_succeeds,
    test_release_works_after_script_flush,
    test_second_acquire_of_held_resource_fails,
    test_two_resources_are_independent,
)
from test_lock import test_start_and_stop_twice_each as test_lock_start_and_stop_twice_each
from test_queue import (
    test_empty_queue_gives_none,
    test_is_dequeue_blocking_is_false_every_time,
    test_queue_keys_follow_the_contract,
    test_queue_types_are_independent,
    test_three_ids_come_back_fifo,
    test_twenty_ids_in_order_then_none,
)
from test_queue import test_start_and_stop_twice_each as test_queue_start_and_stop_twice_each

from wfe_valkey import (
    InvalidURLError,
    LifecycleEvent,
    QueueType,
    ValkeyConnectionError,
    ValkeyLifecyclePublisher,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    events,
)
from wfe_valkey.embedded import free_port
from wfe_valkey.sentinel import NotPrimaryError, SentinelConnection, parse_sentinel_url
from wfe_valkey.subscriber import ValkeyLifecycleSubscriber

REUSED_CONTRACT_CASES = (
    test_acquire_succeeds,
    test_second_acquire_of_held_resource_fails,
    test_release_then_reacquire_succeeds,
    test_release_of_never_acquired_resource_is_fine,
    test_two_resources_are_independent,
    test_lock_start_and_stop_twice_each,
    test_five_rounds_then_held,
    test_lock_key_holds_provider_token,
    test_release_leaves_other_holders_lock,
    test_release_works_after_script_flush,
    test_three_ids_come_back_fifo,
    test_empty_queue_gives_none,
    test_queue_types_are_independent,
    test_queue_start_and_stop_twice_each,
    test_is_dequeue_blocking_is_false_every_time,
    test_twenty_ids_in_order_then_none,
    test_queue_keys_follow_the_contract,
    test_workflow_channel_receives_exact_json,
    test_all_channel_receives_exact_json,
    test_each_event_is_published_once_per_channel,
)


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelDeployment]:
    """A primary, a replica and three sentinels that no test here fails over."""
    deployment = start_sentinels()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def server_url(sentinels: SentinelDeployment) -> str:
    return sentinels.url


@pytest.fixture
def other_host(sentinels: SentinelDeployment) -> Iterator[valkey.Valkey]:
    client = sentinels.primary.client()
    yield client
    client.close()


# discovery and URLs


async def test_sentinel_url_connects_to_the_primary(
    sentinels: SentinelDeployment, queues: ValkeyQueueProvider
) -> None:
    connection = queues._connection

    assert type(connection) is SentinelConnection
    assert queues.settings.address == f"127.0.0.1:{sentinels.primary.port}"
    assert repr(connection) == (
        f"<SentinelConnection 'wfe-primary' at 127.0.0.1:{sentinels.primary.port} ready>"
    )


async def test_valkey_sentinel_scheme_and_options(
    sentinels: SentinelDeployment, prefix: str
) -> None:
    url = sentinels.url.replace("redis+sentinel://", "valkey+sentinel://") + "?timeout=3&db=2"

    async with await ValkeyQueueProvider.new(url, prefix) as queues:
        await queues.queue_work("in-db-2", QueueType.WORKFLOW)

        assert queues.settings.timeout == 3.0
        assert queues.settings.db == 2
    with valkey.Valkey(port=sentinels.primary.port, db=2) as client:
        assert client.lrange(f"{prefix}:queue:workflow", 0, -1) == [b"in-db-2"]


async def test_unreachable_sentinel_is_skipped(sentinels: SentinelDeployment, prefix: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    url = sentinels.url.replace("redis+sentinel://", f"redis+sentinel://{dead},")

    async with await ValkeyLockProvider.new(url, prefix) as locks:
        assert await locks.acquire_lock("wf-1") is True
        assert locks.settings.address == f"127.0.0.1:{sentinels.primary.port}"


async def test_unknown_service_is_an_error(sentinels: SentinelDeployment, prefix: str) -> None:
    url = sentinels.url.rsplit("/", 1)[0] + "/no-such-service"

    with pytest.raises(ValkeyConnectionError, match="does not monitor 'no-such-service'"):
        await ValkeyQueueProvider.new(url, prefix)


async def test_no_reachable_sentinel_is_an_error(prefix: str) -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()}/wfe-primary?connect_timeout=0.5"

    with pytest.raises(ValkeyConnectionError, match="no sentinel returned the primary"):
        await ValkeyQueueProvider.new(url, prefix)


@pytest.fixture
def sentinel_of_the_replica(sentinels: SentinelDeployment) -> Iterator[ServerProcess]:
    """A fourth sentinel that watches the replica as if it were the primary of 'wrong'."""
    port = free_port()
    process = sentinels.add(f"sentinel-of-replica-{port}", ["sentinel.conf", "--sentinel"], port)
    (process.directory / "sentinel.conf").write_text(
        f"port {port}\nbind 127.0.0.1\nprotected-mode no\n"
        f"sentinel monitor wrong 127.0.0.1 {sentinels.replica.port} 1\n"
    )
    process.start()
    yield process
    process.stop()


async def test_node_that_is_not_a_primary_is_refused(
    sentinel_of_the_replica: ServerProcess, prefix: str
) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel_of_the_replica.port}/wrong?connect_timeout=0.5"

    with pytest.raises(NotPrimaryError, match="is a replica; asking again"):
        await ValkeyQueueProvider.new(url, prefix)


async def test_start_after_stop_asks_the_sentinels_again(locks: ValkeyLockProvider) -> None:
    await locks.stop()
    await locks.start()

    assert type(locks._connection) is SentinelConnection
    assert await locks.acquire_lock("after-restart") is True


def test_sentinel_url_parts_are_parsed() -> None:
    settings, sentinel = parse_sentinel_url(
        "rediss+sentinel://app:s3cret@h1,[::1]:26380,h3:26381/orders"
        "?timeout=2&sentinel_username=watcher&sentinel_password=w4tch&db=4"
    )

    assert sentinel.service_name == "orders"
    assert [(s.host, s.port) for s in sentinel.sentinels] == [
        ("h1", 26379),
        ("::1", 26380),
        ("h3", 26381),
    ]
    assert {(s.username, s.password) for s in sentinel.sentinels} == {("watcher", "w4tch")}
    assert all(s.tls is not None for s in sentinel.sentinels)
    assert (settings.username, settings.password, settings.db) == ("app", "s3cret", 4)
    assert settings.timeout == 2.0
    assert settings.tls is not None


def test_sentinel_options_may_be_keywords() -> None:
    _, sentinel = parse_sentinel_url(
        "redis+sentinel://h1/orders", sentinel_password="w4tch", timeout=1
    )

    assert sentinel.sentinels[0].password == "w4tch"
    assert sentinel.sentinels[0].timeout == 1.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://app:s3cret@h1:26379", "missing service name"),
        ("redis+sentinel://app:s3cret@h1:26379/", "missing service name"),
        ("redis+sentinel://app:s3cret@h1:26379/orders/2", "give the database with \\?db=N"),
        ("redis+sentinel://app:s3cret@h1:0/orders", "invalid sentinel port '0'"),
        ("redis+sentinel://app:s3cret@h1:port/orders", "invalid sentinel port 'port'"),
        ("redis+sentinel://app:s3cret@h1,/orders", "missing sentinel host"),
        ("redis+sentinel://app:s3cret@[::1/orders", "invalid sentinel address"),
        ("redis+sentinel://app:s3cret@h1/orders?bogus=1", "unknown URL option 'bogus'"),
    ],
)
def test_invalid_sentinel_url_is_rejected_without_password(url: str, message: str) -> None:
    with pytest.raises(InvalidURLError, match=message) as raised:
        parse_sentinel_url(url + ("&" if "?" in url else "?") + "sentinel_password=w4tch")

    assert "s3cret" not in str(raised.value)
    assert "w4tch" not in str(raised.value)


async def test_cluster_yes_with_sentinel_is_rejected(
    sentinels: SentinelDeployment, prefix: str
) -> None:
    with pytest.raises(InvalidURLError, match="cluster mode cannot be combined with a Sentinel"):
        await ValkeyQueueProvider.new(sentinels.url + "?cluster=yes", prefix)


# failovers


@pytest.fixture
def own_sentinels() -> Iterator[SentinelDeployment]:
    """A deployment of this test's own, free to fail over and kill."""
    deployment = start_sentinels()
    yield deployment
    deployment.stop()


@pytest.fixture
async def traffic(own_sentinels: SentinelDeployment, prefix: str) -> AsyncIterator[QueueTraffic]:
    """Queue traffic through a sentinel-backed provider, with a growing backlog.

    The consumer takes about half as fast as the producer queues, so ids
    written to a primary that loses them in the failover stay unconsumed.
    """
    queues = await ValkeyQueueProvider.new(own_sentinels.url, prefix)
    running = QueueTraffic(queues, QueueType.WORKFLOW, "wf", take_interval=0.004)
    running.start()
    yield running
    await running.halt()
    await queues.close()


async def run_through_failover(
    deployment: SentinelDeployment, traffic: QueueTraffic, trigger: str
) -> dict[str, object]:
    """Start a failover with `trigger`, wait for 100 ids queued on the new primary, report."""
    loop = asyncio.get_running_loop()
    old_primary = deployment.primary_address()
    await asyncio.sleep(0.5)

    started_at = loop.time()
    if trigger == "kill":
        deployment.node_at(old_primary[1]).kill()
    else:
        options = ["COORDINATED"] if trigger == "coordinated" else []
        with deployment.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", deployment.service, *options)
    await asyncio.to_thread(
        wait_until,
        lambda: deployment.primary_address() != old_primary,
        "the sentinels name a new primary",
        30.0,
    )
    switched_at = loop.time()
    deadline = time.monotonic() + 30
    while traffic.queued_after(switched_at) < 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await traffic.halt()
    taken_before_drain = len(traffic.taken)
    await traffic.stop()

    new_primary = deployment.primary_address()
    report = {
        "trigger": trigger,
        "switched_after_s": round(switched_at - started_at, 3),
        "traffic": traffic.report(started_at),
        "backlog_at_end": len(traffic.taken) - taken_before_drain,
        "acknowledged_but_lost": len(set(traffic.queued) - set(traffic.taken)),
        "taken_twice": len(traffic.taken) - len(set(traffic.taken)),
    }
    print("SENTINEL FAILOVER", json.dumps(report))
    assert new_primary != old_primary
    assert traffic.queues.settings.address == f"{new_primary[0]}:{new_primary[1]}"
    assert traffic.queued_after(switched_at) >= 100
    assert set(traffic.taken) <= set(traffic.queued) | set(traffic.unconfirmed)
    recovered_at = sorted(moment for moment in traffic.queued_at if moment > switched_at)[50]
    assert [error for error in traffic.errors if error[0] > recovered_at] == []
    return report


async def test_sentinel_failover_moves_the_providers(
    own_sentinels: SentinelDeployment, traffic: QueueTraffic
) -> None:
    # Without COORDINATED the old primary accepts writes until Sentinel
    # demotes it, so a few ids written in the instant of the promotion may
    # be lost or taken twice. The report counts them, and only the move
    # itself is asserted.
    await run_through_failover(own_sentinels, traffic, "plain")


async def test_coordinated_failover_loses_and_repeats_nothing(
    own_sentinels: SentinelDeployment, traffic: QueueTraffic
) -> None:
    report = await run_through_failover(own_sentinels, traffic, "coordinated")

    assert report["acknowledged_but_lost"] == 0
    assert report["taken_twice"] == 0


async def test_killed_primary_is_replaced_by_the_replica(
    own_sentinels: SentinelDeployment, traffic: QueueTraffic
) -> None:
    report = await run_through_failover(own_sentinels, traffic, "kill")

    assert report["taken_twice"] == 0


async def test_subscriber_follows_sentinel_url(
    sentinels: SentinelDeployment, publisher: ValkeyLifecyclePublisher
) -> None:
    async with await ValkeyLifecycleSubscriber.new(sentinels.url, publisher.prefix) as subscriber:
        subscription = await subscriber.subscribe("wf-1")
        event = LifecycleEvent.new("wf-1", "def-1", 1, events.Started())

        await publisher.publish(event)

        async with asyncio.timeout(5):
            received = await anext(subscription)
    assert received == event
    assert subscriber.settings.port == sentinels.primary.port
