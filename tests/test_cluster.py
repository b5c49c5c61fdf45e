"""The providers on Valkey Cluster: routing, redirects, migration and failover.

The contract cases of the lock, queue and lifecycle tests run here again
with `server_url` pointing at one node of a three-primary cluster, and
`other_host` a cluster-aware valkey-py client.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from cluster_fixtures import Cluster, QueueTraffic, ServerProcess, start_cluster, wait_until
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
    test_dequeue_work_many_returns_oldest_first,
    test_empty_queue_gives_none,
    test_is_dequeue_blocking_is_false_every_time,
    test_queue_keys_follow_the_contract,
    test_queue_types_are_independent,
    test_queue_work_many_keeps_fifo_order,
    test_three_ids_come_back_fifo,
    test_twenty_ids_in_order_then_none,
)
from test_queue import test_start_and_stop_twice_each as test_queue_start_and_stop_twice_each
from valkey.cluster import ValkeyCluster

from wfe_valkey import (
    InvalidURLError,
    LifecycleEvent,
    QueueType,
    ReplyError,
    ValkeyConnectionError,
    ValkeyLifecyclePublisher,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    WrongTypeError,
    events,
    parse_url,
)
from wfe_valkey.cluster import ClusterConnection
from wfe_valkey.connection import Connection
from wfe_valkey.embedded import EmbeddedValkey
from wfe_valkey.resp import encode_command
from wfe_valkey.slots import Target, key_slot, route
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
    test_queue_work_many_keeps_fifo_order,
    test_dequeue_work_many_returns_oldest_first,
    test_workflow_channel_receives_exact_json,
    test_all_channel_receives_exact_json,
    test_each_event_is_published_once_per_channel,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three primaries without replicas, shared by the tests that do not kill a node."""
    deployment = start_cluster(primary_count=3)
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def server_url(cluster: Cluster) -> str:
    return cluster.url


@pytest.fixture
def other_host(cluster: Cluster) -> Iterator[ValkeyCluster]:
    client = ValkeyCluster(host="127.0.0.1", port=cluster.primaries[0].port)
    yield client
    client.close()


def owner_now(cluster: Cluster, slot: int) -> ServerProcess:
    """The primary that owns `slot` now, as the first running primary reports it."""
    node = next(node for node in cluster.nodes if node.running)
    with node.client() as client:
        for entry in client.execute_command("CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                port = int(entry[2][1])
                return next(node for node in cluster.nodes if node.port == port)
    raise AssertionError(f"no node owns slot {slot}")


def prefix_with_key_on(cluster: Cluster, node: ServerProcess, queue_type: QueueType) -> str:
    """Return a fresh prefix whose queue key of `queue_type` hashes to a slot `node` owns."""
    return prefix_with_suffix_on(cluster, node, f":queue:{queue_type.value}")


def prefix_with_suffix_on(cluster: Cluster, node: ServerProcess, suffix: str) -> str:
    """Return a fresh prefix whose key `prefix + suffix` hashes to a slot `node` owns."""
    for _ in range(10_000):
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        if owner_now(cluster, key_slot(prefix + suffix)) is node:
            return prefix
    raise AssertionError("no prefix found in 10000 tries")


def set_slot_state(node: ServerProcess, slot: int, state: str, node_id: str) -> None:
    with node.client() as client:
        client.execute_command("CLUSTER", "SETSLOT", slot, state, node_id)


def move_keys(source: ServerProcess, target: ServerProcess, slot: int) -> int:
    """MIGRATE every key of `slot` from `source` to `target`; return how many moved."""
    moved = 0
    with source.client(timeout=10.0) as client:
        while True:
            keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                return moved
            client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)


def finish_migration(cluster: Cluster, slot: int, target: ServerProcess) -> None:
    """Assign `slot` to `target` on every primary, the target first."""
    target_id = cluster.node_id(target)
    ordered = [target, *(node for node in cluster.primaries if node is not target)]
    for node in ordered:
        set_slot_state(node, slot, "NODE", target_id)


def begin_migration(
    cluster: Cluster, slot: int, source: ServerProcess, target: ServerProcess
) -> None:
    """Mark `slot` importing on `target` and migrating on `source`."""
    set_slot_state(target, slot, "IMPORTING", cluster.node_id(source))
    set_slot_state(source, slot, "MIGRATING", cluster.node_id(target))


def another_primary(cluster: Cluster, node: ServerProcess) -> ServerProcess:
    return next(primary for primary in cluster.primaries if primary is not node)


# slots and routing


@pytest.mark.parametrize(
    "key",
    [
        "foo",
        "",
        "wfe:queue:workflow",
        "wfe:lock:order-17",
        "{user1}:a",
        "a{user1}b",
        "{}empty-tag",
        "{unclosed",
        "closed}{second}",
        "{a}{b}",
        "ümlaut-ключ-鍵",
        b"\xff\x00binary",
        "x" * 1000,
    ],
)
def test_key_slot_matches_cluster_keyslot(cluster: Cluster, key: str | bytes) -> None:
    with cluster.primaries[0].client() as client:
        expected = client.execute_command("CLUSTER", "KEYSLOT", key)

    assert key_slot(key) == expected


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("LPUSH", "wfe:queue:workflow", "wf-1"), key_slot("wfe:queue:workflow")),
        ((b"rpop", b"wfe:queue:event"), key_slot("wfe:queue:event")),
        (("evalsha", "0" * 40, 1, "wfe:lock:a", "token"), key_slot("wfe:lock:a")),
        (("EVAL", "return 1", "1", b"wfe:lock:b"), key_slot("wfe:lock:b")),
        (("EVAL", "return 1", 0), Target.ANY_NODE),
        (("PUBLISH", "wfe:lifecycle:all", "{}"), Target.ANY_NODE),
        ((b"publish", b"wfe:lifecycle:all", b"{}"), Target.ANY_NODE),
        (("ping",), Target.ANY_NODE),
        (("SCRIPT", "LOAD", "return 1"), Target.EVERY_PRIMARY),
        (("script", "flush"), Target.EVERY_PRIMARY),
        (("SCRIPT", "EXISTS", "0" * 40), Target.ANY_NODE),
        (("GET", 17), key_slot("17")),
    ],
)
def test_route_picks_key_or_target(
    command: tuple[str | bytes | int, ...], expected: int | Target
) -> None:
    assert route(command) == expected


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ((), "a command needs at least its name"),
        (("EVALSHA", "0" * 40), "EVALSHA needs a script and numkeys"),
        (("EVAL", "return 1", "one", "k"), "EVAL numkeys must be an integer, got 'one'"),
        (("GET", "\udcff"), "key is not encodable as UTF-8"),
    ],
)
def test_route_rejects_unroutable_commands(
    command: tuple[str | bytes | int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        route(command)


async def test_plain_server_gets_plain_connection(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    async with await ValkeyQueueProvider.new(private_server.url, prefix) as queues:
        assert type(queues._connection) is Connection


async def test_cluster_node_gets_cluster_connection(queues: ValkeyQueueProvider) -> None:
    connection = queues._connection

    assert type(connection) is ClusterConnection
    assert repr(connection).startswith("<ClusterConnection 3 primaries via 127.0.0.1:")


async def test_any_node_of_the_cluster_is_a_seed(cluster: Cluster, prefix: str) -> None:
    async with await ValkeyQueueProvider.new(cluster.primaries[2].url, prefix) as queues:
        for queue_type in QueueType:
            await queues.queue_work(f"id-{queue_type.value}", queue_type)

        assert [await queues.dequeue_work(queue_type) for queue_type in QueueType] == [
            f"id-{queue_type.value}" for queue_type in QueueType
        ]


async def test_cluster_no_in_url_forces_single_node(cluster: Cluster) -> None:
    seed = cluster.primaries[0]
    prefix = prefix_with_key_on(cluster, another_primary(cluster, seed), QueueType.WORKFLOW)

    async with await ValkeyQueueProvider.new(f"{seed.url}?cluster=no&timeout=2", prefix) as queues:
        assert type(queues._connection) is Connection
        assert queues.settings.timeout == 2.0
        with pytest.raises(ReplyError, match=r"^MOVED "):
            await queues.queue_work("wf-1", QueueType.WORKFLOW)


async def test_cluster_false_keyword_forces_single_node(cluster: Cluster, prefix: str) -> None:
    async with await ValkeyLockProvider.new(cluster.url, prefix, cluster=False) as locks:
        assert type(locks._connection) is Connection


async def test_cluster_yes_on_plain_server_is_an_error(
    private_server: EmbeddedValkey, prefix: str
) -> None:
    with pytest.raises(ValkeyConnectionError, match="is not a cluster node"):
        await ValkeyQueueProvider.new(f"{private_server.url}?cluster=yes", prefix)


async def test_invalid_cluster_option_is_rejected(cluster: Cluster, prefix: str) -> None:
    with pytest.raises(InvalidURLError, match="invalid cluster option 'maybe'"):
        await ValkeyQueueProvider.new(f"{cluster.url}?cluster=maybe", prefix)


async def test_each_queue_key_lives_on_its_slot_owner(
    cluster: Cluster, queues: ValkeyQueueProvider
) -> None:
    for queue_type in QueueType:
        await queues.queue_work("wf-1", queue_type)

    for queue_type in QueueType:
        key = queues.queue_key(queue_type)
        holders = []
        for node in cluster.primaries:
            with node.client() as client:
                keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", key_slot(key), 1000)
            if key.encode() in keys:
                holders.append(node)
        assert holders == [owner_now(cluster, key_slot(key))]


async def test_execute_many_spans_primaries_in_order(cluster: Cluster, prefix: str) -> None:
    first = prefix_with_key_on(cluster, cluster.primaries[0], QueueType.WORKFLOW)
    second = prefix_with_key_on(cluster, cluster.primaries[1], QueueType.WORKFLOW)
    key_a, key_b = f"{first}:queue:workflow", f"{second}:queue:workflow"

    async with await ValkeyQueueProvider.new(cluster.url, prefix) as queues:
        replies = await queues._connection.execute_many(
            [
                ("SET", key_a, "a"),
                ("RPUSH", key_b, "b1", "b2"),
                ("LPUSH", key_a, "wrong type"),
                ("GET", key_a),
                ("LRANGE", key_b, 0, -1),
            ]
        )

    assert replies[0] == b"OK"
    assert replies[1] == 2
    assert isinstance(replies[2], WrongTypeError)
    assert replies[3] == b"a"
    assert replies[4] == [b"b1", b"b2"]


async def test_encoded_batch_is_routed_by_keys(cluster: Cluster, prefix: str) -> None:
    first = prefix_with_key_on(cluster, cluster.primaries[0], QueueType.WORKFLOW)
    second = prefix_with_key_on(cluster, cluster.primaries[1], QueueType.WORKFLOW)
    key_a, key_b = f"{first}:queue:workflow".encode(), f"{second}:queue:workflow".encode()

    async with await ValkeyQueueProvider.new(cluster.url, prefix) as queues:
        connection = queues._connection
        replies = await connection.execute_many_encoded(
            [encode_command(("SET", key_a, "a")), encode_command(("SET", key_b, "b"))],
            [key_a, key_b],
        )
        values = [
            await connection.execute_encoded(encode_command(("GET", key)), key)
            for key in (key_a, key_b)
        ]

    assert replies == [b"OK", b"OK"]
    assert values == [b"a", b"b"]
    with cluster.primaries[0].client() as first_primary:
        assert first_primary.get(key_a) == b"a"
    with cluster.primaries[1].client() as second_primary:
        assert second_primary.get(key_b) == b"b"


async def test_encoded_batch_needs_one_key_per_command(
    cluster: Cluster, queues: ValkeyQueueProvider
) -> None:
    with pytest.raises(
        ValueError, match=r"^keys must hold one key \(or None\) per command: 2 commands, 1 keys$"
    ):
        queues._connection.execute_many_encoded([b"*1\r\n$4\r\nPING\r\n"] * 2, [None])


async def test_script_load_reaches_every_primary(
    cluster: Cluster, locks: ValkeyLockProvider
) -> None:
    sha = await locks._connection.execute("SCRIPT", "LOAD", "return 'cluster-wide'")

    for node in cluster.primaries:
        with node.client() as client:
            assert client.execute_command("SCRIPT", "EXISTS", sha) == [1]


async def test_release_works_after_script_flush_on_its_node(
    cluster: Cluster, locks: ValkeyLockProvider
) -> None:
    await locks.acquire_lock("wf-1")
    key = f"{locks.prefix}:lock:wf-1"
    owner = owner_now(cluster, key_slot(key))
    with owner.client() as client:
        client.execute_command("SCRIPT", "FLUSH")

    await locks.release_lock("wf-1")

    with owner.client() as client:
        assert client.execute_command("EXISTS", key) == 0


async def test_publish_reaches_subscriber_on_another_node(
    cluster: Cluster, publisher: ValkeyLifecyclePublisher
) -> None:
    listening_node = cluster.primaries[2]
    async with await ValkeyLifecycleSubscriber.new(
        listening_node.url, publisher.prefix
    ) as subscriber:
        subscription = await subscriber.subscribe("wf-1")
        event = LifecycleEvent.new("wf-1", "def-1", 1, events.Started())

        await publisher.publish(event)

        async with asyncio.timeout(5):
            received = await anext(subscription)
    assert received == event


async def test_subscriber_takes_the_cluster_option(
    cluster: Cluster, publisher: ValkeyLifecyclePublisher
) -> None:
    url = cluster.primaries[1].url + "?cluster=no"
    async with await ValkeyLifecycleSubscriber.new(url, publisher.prefix) as subscriber:
        subscription = await subscriber.subscribe(None)
        event = LifecycleEvent.new("wf-2", "def-1", 1, events.Completed())

        await publisher.publish(event)

        async with asyncio.timeout(5):
            received = await anext(subscription)
    assert received == event


def test_info_cli_scans_every_primary(cluster: Cluster, other_host: ValkeyCluster) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    resources = [f"wf-{n}" for n in range(30)]
    for resource in resources:
        other_host.set(f"{prefix}:lock:{resource}", "token", px=60_000)
    other_host.lpush(f"{prefix}:queue:event", "event-1", "event-2")
    owners = {
        other_host.get_node_from_key(f"{prefix}:lock:{resource}").port for resource in resources
    }

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wfe_valkey",
            "info",
            "--url",
            cluster.url,
            "--prefix",
            prefix,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queues"] == {"workflow": 0, "event": 2, "index": 0}
    assert [lock["resource"] for lock in report["locks"]] == sorted(resources)
    assert len(owners) == 3


async def test_start_after_stop_reconnects_to_the_cluster(locks: ValkeyLockProvider) -> None:
    await locks.stop()
    await locks.start()

    assert type(locks._connection) is ClusterConnection
    assert await locks.acquire_lock("after-restart") is True


# redirects


async def test_moved_slot_is_followed(cluster: Cluster) -> None:
    source = cluster.primaries[0]
    target = cluster.primaries[1]
    prefix = prefix_with_key_on(cluster, source, QueueType.EVENT)
    slot = key_slot(f"{prefix}:queue:event")

    async with await ValkeyQueueProvider.new(cluster.url, prefix) as queues:
        await queues.queue_work("before-move", QueueType.EVENT)
        begin_migration(cluster, slot, source, target)
        assert move_keys(source, target, slot) == 1
        finish_migration(cluster, slot, target)

        await queues.queue_work("after-move", QueueType.EVENT)
        taken = [await queues.dequeue_work(QueueType.EVENT) for _ in range(3)]

    assert taken == ["before-move", "after-move", None]
    assert owner_now(cluster, slot) is target


async def test_ask_reaches_the_importing_node(cluster: Cluster) -> None:
    source = cluster.primaries[1]
    target = cluster.primaries[2]
    prefix = prefix_with_key_on(cluster, source, QueueType.INDEX)
    slot = key_slot(f"{prefix}:queue:index")

    async with await ValkeyQueueProvider.new(cluster.url, prefix) as queues:
        await queues.queue_work_many(["first", "second"], QueueType.INDEX)
        begin_migration(cluster, slot, source, target)
        try:
            assert move_keys(source, target, slot) == 1

            first = await queues.dequeue_work(QueueType.INDEX)
            await queues.queue_work("third", QueueType.INDEX)
        finally:
            finish_migration(cluster, slot, target)

        assert first == "first"
        assert await queues.dequeue_work_many(QueueType.INDEX, 5) == ["second", "third"]
        with target.client() as client:
            assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


async def test_release_during_ask_after_script_flush(cluster: Cluster) -> None:
    source, target = cluster.primaries[0], cluster.primaries[1]
    prefix = prefix_with_suffix_on(cluster, source, ":lock:wf-1")
    key = f"{prefix}:lock:wf-1"
    slot = key_slot(key)

    async with await ValkeyLockProvider.new(cluster.url, prefix) as locks:
        assert await locks.acquire_lock("wf-1") is True
        begin_migration(cluster, slot, source, target)
        try:
            assert move_keys(source, target, slot) == 1
            with target.client() as client:
                client.execute_command("SCRIPT", "FLUSH")

            await locks.release_lock("wf-1")

            with target.client() as client:
                client.execute_command("ASKING")
                assert client.execute_command("EXISTS", key) == 0
        finally:
            finish_migration(cluster, slot, target)


async def test_release_during_ask_on_caller_connection(cluster: Cluster) -> None:
    source, target = cluster.primaries[1], cluster.primaries[2]
    prefix = prefix_with_suffix_on(cluster, source, ":lock:wf-1")
    key = f"{prefix}:lock:wf-1"
    slot = key_slot(key)
    # Empty every script cache, as on a cluster that never ran the release script.
    for node in cluster.primaries:
        with node.client() as client:
            client.execute_command("SCRIPT", "FLUSH")
    connection = await ClusterConnection.open(parse_url(cluster.url))
    locks = ValkeyLockProvider(connection, prefix)

    assert await locks.acquire_lock("wf-1") is True
    begin_migration(cluster, slot, source, target)
    try:
        assert move_keys(source, target, slot) == 1

        await locks.release_lock("wf-1")

        with target.client() as client:
            client.execute_command("ASKING")
            assert client.execute_command("EXISTS", key) == 0
    finally:
        finish_migration(cluster, slot, target)
        await connection.close()


async def test_tryagain_is_retried_until_migration_ends(cluster: Cluster, prefix: str) -> None:
    source = cluster.primaries[2]
    target = cluster.primaries[0]
    tag = next(
        f"{{{prefix}-{n}}}"
        for n in range(10_000)
        if owner_now(cluster, key_slot(f"{{{prefix}-{n}}}")) is source
    )
    slot = key_slot(tag)
    moved_key, staying_key = f"{tag}:moved", f"{tag}:staying"
    with source.client() as client:
        client.execute_command("RPUSH", moved_key, "m")
        client.execute_command("RPUSH", staying_key, "s")
    begin_migration(cluster, slot, source, target)
    with source.client() as client:
        client.execute_command("MIGRATE", "127.0.0.1", target.port, moved_key, 0, 5000)

    async def finish_later() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(move_keys, source, target, slot)
        await asyncio.to_thread(finish_migration, cluster, slot, target)

    async with await ValkeyQueueProvider.new(cluster.url, prefix) as queues:
        finisher = asyncio.create_task(finish_later())
        moved = await queues._connection.execute("LMOVE", staying_key, moved_key, "RIGHT", "LEFT")
        await finisher
        remaining = await queues._connection.execute("LRANGE", moved_key, 0, -1)

    assert moved == b"s"
    assert remaining == [b"s", b"m"]


async def test_clusterdown_is_retried_until_the_slot_is_served(cluster: Cluster) -> None:
    owner = cluster.primaries[1]
    prefix = prefix_with_key_on(cluster, owner, QueueType.WORKFLOW)
    slot = key_slot(f"{prefix}:queue:workflow")

    async with await ValkeyQueueProvider.new(cluster.url, prefix) as queues:
        await queues.queue_work("before", QueueType.WORKFLOW)
        with owner.client() as client:
            client.execute_command("CLUSTER", "DELSLOTS", slot)
        wait_until(lambda: _cluster_state(owner) == "fail", "the node reports the cluster down")

        async def serve_again_later() -> None:
            await asyncio.sleep(0.3)
            with owner.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTS", slot)

        server_side = asyncio.create_task(serve_again_later())
        taken = await queues.dequeue_work(QueueType.WORKFLOW)
        await server_side

    assert taken == "before"
    wait_until(lambda: _cluster_state(owner) == "ok", "the node reports the cluster ok")


def _cluster_state(node: ServerProcess) -> str:
    with node.client() as client:
        reply = client.execute_command("CLUSTER", "INFO").decode()
    return next(
        line.split(":", 1)[1].strip()
        for line in reply.splitlines()
        if line.startswith("cluster_state:")
    )


async def test_queue_slot_migrates_under_load_without_loss(cluster: Cluster) -> None:
    source = cluster.primaries[0]
    target = cluster.primaries[2]
    prefix = prefix_with_key_on(cluster, source, QueueType.WORKFLOW)
    slot = key_slot(f"{prefix}:queue:workflow")

    async with await ValkeyQueueProvider.new(cluster.url, prefix) as queues:
        traffic = QueueTraffic(queues, QueueType.WORKFLOW, "id")
        traffic.start()
        await asyncio.sleep(0.3)
        await asyncio.to_thread(begin_migration, cluster, slot, source, target)
        await asyncio.sleep(0.2)
        moved = await asyncio.to_thread(move_keys, source, target, slot)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(finish_migration, cluster, slot, target)
        queued_before_end = len(traffic.queued)
        await asyncio.sleep(0.3)
        await traffic.stop()

    assert traffic.errors == []
    assert traffic.unconfirmed == []
    assert len(traffic.queued) > queued_before_end > 0
    assert moved in (0, 1)
    assert sorted(traffic.taken) == sorted(traffic.queued)
    assert len(set(traffic.taken)) == len(traffic.taken)
    assert owner_now(cluster, slot) is target


# failover


@pytest.fixture
def cluster_with_replica() -> Iterator[Cluster]:
    """Three primaries, the first with a replica; the test may kill nodes."""
    deployment = start_cluster(primary_count=3, replicas_of=[0], node_timeout_ms=1000)
    yield deployment
    deployment.stop()


@pytest.fixture
async def failover_queues(
    cluster_with_replica: Cluster, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[ValkeyQueueProvider, str]]:
    """A queue provider whose workflow queue lives on the primary that has a replica."""
    cluster = cluster_with_replica
    doomed = cluster.primaries[0]
    for _ in range(10_000):
        prefix = prefix_with_key_on(cluster, doomed, QueueType.WORKFLOW)
        if owner_now(cluster, key_slot(f"{prefix}:queue:event")) is not doomed:
            break
    queues = await ValkeyQueueProvider.new(cluster.url, prefix, timeout=request.param)
    yield queues, prefix
    await queues.close()


@pytest.mark.parametrize(
    "failover_queues", [10.0, 0.5], indirect=True, ids=["timeout10", "timeout0.5"]
)
async def test_primary_killed_replica_takes_over(
    cluster_with_replica: Cluster, failover_queues: tuple[ValkeyQueueProvider, str]
) -> None:
    cluster = cluster_with_replica
    queues, _ = failover_queues
    doomed = cluster.primaries[0]
    replica = cluster.replicas[0]
    affected = QueueTraffic(queues, QueueType.WORKFLOW, "wf", take_interval=0.004)
    elsewhere = QueueTraffic(queues, QueueType.EVENT, "ev")
    loop = asyncio.get_running_loop()
    affected.start()
    elsewhere.start()
    await asyncio.sleep(0.5)

    killed_at = loop.time()
    doomed.kill()
    await asyncio.to_thread(
        wait_until, lambda: cluster.role_is_primary(replica), "the replica is promoted", 30.0
    )
    promoted_at = loop.time()
    deadline = time.monotonic() + 30
    while affected.queued_after(promoted_at) < 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await affected.halt()
    taken_before_drain = len(affected.taken)
    await affected.stop()
    await elsewhere.stop()

    report = {
        "timeout_s": queues.settings.timeout,
        "promoted_after_s": round(promoted_at - killed_at, 3),
        "affected": affected.report(killed_at),
        "elsewhere": elsewhere.report(killed_at),
        "backlog_at_end": len(affected.taken) - taken_before_drain,
        "acknowledged_but_lost": len(set(affected.queued) - set(affected.taken)),
    }
    print("CLUSTER FAILOVER", json.dumps(report))
    assert affected.queued_after(promoted_at) >= 100
    assert len(set(affected.taken)) == len(affected.taken)
    assert set(affected.taken) <= set(affected.queued) | set(affected.unconfirmed)
    assert sorted(elsewhere.taken) == sorted(elsewhere.queued)
    recovered_at = sorted(moment for moment in affected.queued_at if moment > promoted_at)[50]
    assert [error for error in affected.errors if error[0] > recovered_at] == []
