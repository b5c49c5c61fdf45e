"""Start Valkey Cluster and Sentinel deployments on loopback, from the bundled binary.

Every process listens on 127.0.0.1 on a free port and keeps its files in a
temporary directory of its own. `stop()` on a deployment stops every
process it started, including ones a test killed and restarted.
`QueueTraffic` runs a producer and a consumer through a failover and
records what they saw.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import valkey

from wfe_valkey import QueueType, ValkeyError, ValkeyQueueProvider
from wfe_valkey.embedded import find_server_binary, free_port
from wfe_valkey.slots import SLOT_COUNT

# How long a deployment may take to form, in seconds, before the fixture
# gives up. Forming takes about one to three seconds on two cores.
FORM_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


def wait_until(condition: Callable[[], bool], what: str, timeout: float = FORM_TIMEOUT) -> None:
    """Poll `condition` until it is true; raise naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (valkey.ValkeyError, OSError):
            pass
        time.sleep(POLL_INTERVAL)
    raise RuntimeError(f"timed out after {timeout} s waiting until {what}")


class ServerProcess:
    """One valkey-server process (a data node or a sentinel) on 127.0.0.1."""

    def __init__(self, name: str, arguments: Sequence[str], port: int, directory: Path) -> None:
        self.name = name
        self.arguments = list(arguments)
        self.port = port
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the process and wait until it answers PING."""
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [find_server_binary(), *self.arguments],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        wait_until(self._answers_ping, f"{self.name} answers PING on port {self.port}", 10.0)

    def _answers_ping(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            tail = self._log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited while starting; its log ends with:\n{tail}")
        with self.client() as client:
            return bool(client.ping())

    def client(self, timeout: float = 2.0) -> valkey.Valkey:
        """A valkey-py client to this process alone."""
        return valkey.Valkey(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def kill(self) -> None:
        """End the process with SIGKILL, as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s); idempotent."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None


class Deployment:
    """Processes started together, and the temporary directory they share."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="wfe-valkey-deploy-")
        self.root = Path(self._directory.name)
        self.processes: list[ServerProcess] = []

    def add(self, name: str, arguments: Sequence[str], port: int) -> ServerProcess:
        """Create (without starting) a process with a directory of its own."""
        directory = self.root / name
        directory.mkdir()
        process = ServerProcess(name, arguments, port, directory)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process and remove the directory; idempotent."""
        for process in self.processes:
            process.stop()
        self._directory.cleanup()


def data_node_arguments(port: int) -> list[str]:
    """Arguments of a data node that keeps nothing on disk and logs to stdout."""
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        ".",
        "--logfile",
        "",
        "--loglevel",
        "notice",
        "--protected-mode",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ]


class Cluster(Deployment):
    """Primaries that share the 16384 slots evenly, and replicas of some of them."""

    def __init__(self, primary_count: int, replicas_of: Sequence[int], node_timeout_ms: int):
        super().__init__()
        self.node_timeout_ms = node_timeout_ms
        self.primaries = [self._add_node(f"primary-{index}") for index in range(primary_count)]
        self.replicas = {index: self._add_node(f"replica-of-{index}") for index in replicas_of}
        self.slot_ranges: list[tuple[int, int]] = []

    def _add_node(self, name: str) -> ServerProcess:
        port = free_port()
        arguments = [
            *data_node_arguments(port),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--cluster-port",
            str(free_port()),
            "--cluster-allow-replica-migration",
            "no",
        ]
        return self.add(name, arguments, port)

    @property
    def nodes(self) -> list[ServerProcess]:
        return [*self.primaries, *self.replicas.values()]

    @property
    def url(self) -> str:
        """The URL of the first primary, the one node a provider is given."""
        return self.primaries[0].url

    def form(self) -> None:
        """Start every node, assign the slots, join the nodes and attach the replicas."""
        for node in self.nodes:
            node.start()

        share = SLOT_COUNT // len(self.primaries)
        for index, node in enumerate(self.primaries):
            first = index * share
            last = SLOT_COUNT - 1 if index == len(self.primaries) - 1 else first + share - 1
            self.slot_ranges.append((first, last))
            with node.client() as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)

        with self.primaries[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", node.port, self.bus_port(node)
                )
        wait_until(self._every_node_knows_every_node, "every node knows every other node")

        for index, replica in self.replicas.items():
            primary_id = self.node_id(self.primaries[index])
            with replica.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", primary_id)
        wait_until(self._formed, "the cluster state is ok with every replica in sync")

    def bus_port(self, node: ServerProcess) -> int:
        return int(node.arguments[node.arguments.index("--cluster-port") + 1])

    def node_id(self, node: ServerProcess) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def _every_node_knows_every_node(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                lines = client.execute_command("CLUSTER", "NODES").decode().strip().splitlines()
            if len(lines) != len(self.nodes) or any("handshake" in line for line in lines):
                return False
        return True

    def _formed(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                slots = client.execute_command("CLUSTER", "SLOTS")
                replica_count = sum(len(entry) - 3 for entry in slots)
                if replica_count != len(self.replicas):
                    return False
        for replica in self.replicas.values():
            with replica.client() as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def role_is_primary(self, node: ServerProcess) -> bool:
        """Whether `node` reports itself a primary now."""
        with node.client() as client:
            return bool(client.execute_command("ROLE")[0] == b"master")

    def owner_of(self, slot: int) -> ServerProcess:
        """The primary that owned `slot` when the cluster formed."""
        for node, (first, last) in zip(self.primaries, self.slot_ranges, strict=True):
            if first <= slot <= last:
                return node
        raise ValueError(f"slot {slot} is out of range")


def start_cluster(
    primary_count: int = 3, replicas_of: Sequence[int] = (), node_timeout_ms: int = 1000
) -> Cluster:
    """Start and form a cluster; stop it again if forming fails."""
    cluster = Cluster(primary_count, replicas_of, node_timeout_ms)
    try:
        cluster.form()
    except BaseException:
        cluster.stop()
        raise
    return cluster


class SentinelDeployment(Deployment):
    """One primary, one replica, and sentinels that watch them as one service."""

    def __init__(self, service: str, sentinel_count: int, quorum: int, down_after_ms: int):
        super().__init__()
        self.service = service
        primary_port = free_port()
        self.primary = self.add("primary", data_node_arguments(primary_port), primary_port)
        replica_port = free_port()
        self.replica = self.add(
            "replica",
            [
                *data_node_arguments(replica_port),
                "--replicaof",
                "127.0.0.1",
                str(primary_port),
            ],
            replica_port,
        )
        self.sentinels = [
            self._add_sentinel(f"sentinel-{index}", quorum, down_after_ms)
            for index in range(sentinel_count)
        ]

    def _add_sentinel(self, name: str, quorum: int, down_after_ms: int) -> ServerProcess:
        port = free_port()
        process = self.add(name, ["sentinel.conf", "--sentinel"], port)
        config = [
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode no",
            'logfile ""',
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} {quorum}",
            f"sentinel down-after-milliseconds {self.service} {down_after_ms}",
            f"sentinel failover-timeout {self.service} 10000",
            f"sentinel parallel-syncs {self.service} 1",
        ]
        (process.directory / "sentinel.conf").write_text("\n".join(config) + "\n")
        return process

    @property
    def url(self) -> str:
        """The Sentinel URL a provider is given."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def form(self) -> None:
        """Start the data nodes, then the sentinels; wait until they all see each other."""
        self.primary.start()
        self.replica.start()
        wait_until(self._replica_in_sync, "the replica is in sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self._sentinels_ready, "every sentinel sees the replica and the others")

    def _replica_in_sync(self) -> bool:
        with self.replica.client() as client:
            return client.info("replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                others = client.execute_command("SENTINEL", "SENTINELS", self.service)
                replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
            if len(others) != len(self.sentinels) - 1 or len(replicas) != 1:
                return False
        return True

    def primary_address(self) -> tuple[str, int]:
        """The primary's address as the first sentinel names it now."""
        with self.sentinels[0].client() as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return host.decode(), int(port)

    def node_at(self, port: int) -> ServerProcess:
        return self.primary if port == self.primary.port else self.replica

    def role_of(self, node: ServerProcess) -> str:
        with node.client() as client:
            return str(client.execute_command("ROLE")[0].decode())


def start_sentinels(
    service: str = "wfe-primary",
    sentinel_count: int = 3,
    quorum: int = 2,
    down_after_ms: int = 1000,
) -> SentinelDeployment:
    """Start a primary, a replica and the sentinels; stop them if forming fails."""
    deployment = SentinelDeployment(service, sentinel_count, quorum, down_after_ms)
    try:
        deployment.form()
    except BaseException:
        deployment.stop()
        raise
    return deployment


class QueueTraffic:
    """A producer and a consumer on one queue that record every outcome and its time.

    The producer queues ``{label}-0``, ``{label}-1``, ... one every 2 ms;
    the consumer takes one every `take_interval` seconds until stopped, so
    a longer interval keeps a backlog in the queue. Errors are recorded,
    not raised, so a failover shows up as a list of timed errors and a gap
    in the successes.
    """

    def __init__(
        self,
        queues: ValkeyQueueProvider,
        queue_type: QueueType,
        label: str,
        take_interval: float = 0.002,
    ) -> None:
        self.queues = queues
        self.queue_type = queue_type
        self.label = label
        self.take_interval = take_interval
        self.queued: list[str] = []
        self.unconfirmed: list[str] = []
        self.taken: list[str] = []
        self.queued_at: list[float] = []
        self.errors: list[tuple[float, str, str]] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._produce()),
            asyncio.create_task(self._consume()),
        ]

    async def halt(self) -> None:
        """Stop both loops; idempotent."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        """Stop both loops, then take every id still in the queue."""
        await self.halt()
        for _ in range(100_000):
            left = await self.queues.dequeue_work(self.queue_type)
            if left is None:
                return
            self.taken.append(left)

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        number = 0
        while not self._stopping.is_set():
            work_id = f"{self.label}-{number}"
            number += 1
            try:
                await self.queues.queue_work(work_id, self.queue_type)
            except ValkeyError as exc:
                self.unconfirmed.append(work_id)
                self.errors.append((loop.time(), "queue_work", type(exc).__name__))
            else:
                self.queued.append(work_id)
                self.queued_at.append(loop.time())
            await asyncio.sleep(0.002)

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                work_id = await self.queues.dequeue_work(self.queue_type)
            except ValkeyError as exc:
                self.errors.append((loop.time(), "dequeue_work", type(exc).__name__))
            else:
                if work_id is not None:
                    self.taken.append(work_id)
            await asyncio.sleep(self.take_interval)

    def queued_after(self, moment: float) -> int:
        """How many ids were queued successfully after `moment` (loop time)."""
        return sum(1 for queued_at in self.queued_at if queued_at > moment)

    def report(self, since: float) -> dict[str, object]:
        """Errors and the longest gap between successful queue_work calls after `since`."""
        times = [since, *(moment for moment in self.queued_at if moment > since)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        errors = [error for error in self.errors if error[0] >= since]
        kinds = collections.Counter(f"{call}:{kind}" for _, call, kind in errors)
        return {
            "queue": self.queue_type.value,
            "longest_gap_s": round(max(gaps, default=0.0), 3),
            "errors": len(errors),
            "first_error_s": round(errors[0][0] - since, 3) if errors else None,
            "last_error_s": round(errors[-1][0] - since, 3) if errors else None,
            "error_kinds": dict(kinds),
        }
