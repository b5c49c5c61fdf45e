"""The command line, run as a subprocess: info, tail, help and errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import valkey

from wfe_valkey import LifecycleEvent, ValkeyLifecyclePublisher, events
from wfe_valkey.embedded import free_port

RUST_EXAMPLE = (
    '{"event_time_utc":"2026-12-04T19:06:05.123456789Z","workflow_instance_id":"wf-1",'
    '"workflow_definition_id":"def-1","version":1,"reference":null,"event_type":"Started"}'
)


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wfe_valkey", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def start_tail(*arguments: str) -> asyncio.subprocess.Process:
    """Start `tail` and return once it reports that it is listening."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wfe_valkey",
        "tail",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    async with asyncio.timeout(20):
        line = await process.stderr.readline()
    assert line.decode().startswith("listening on "), line
    return process


async def finish(process: asyncio.subprocess.Process) -> tuple[int, list[str]]:
    """Wait for the process to exit; return its status and output lines."""
    async with asyncio.timeout(20):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode().splitlines()


def test_info_json_reports_queues_and_locks(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    other_host.lpush(f"{prefix}:queue:workflow", "wf-1", "wf-2", "wf-3")
    other_host.lpush(f"{prefix}:queue:event", "event-1")
    other_host.set(f"{prefix}:lock:wf-b", "token", px=30_000)
    other_host.set(f"{prefix}:lock:wf-a", "token", px=60_000)

    result = run_cli("info", "--url", server_url, "--prefix", prefix, "--json")

    assert result.returncode == 0
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert list(report) == ["queues", "locks"]
    assert report["queues"] == {"workflow": 3, "event": 1, "index": 0}
    assert [lock["resource"] for lock in report["locks"]] == ["wf-a", "wf-b"]
    assert [list(lock) for lock in report["locks"]] == [["resource", "ttl_ms"]] * 2
    assert 30_000 < report["locks"][0]["ttl_ms"] <= 60_000
    assert 0 < report["locks"][1]["ttl_ms"] <= 30_000


def test_info_json_of_an_empty_prefix(server_url: str, prefix: str) -> None:
    result = run_cli("info", "--url", server_url, "--prefix", prefix, "--json")

    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "queues": {"workflow": 0, "event": 0, "index": 0},
        "locks": [],
    }


def test_info_scans_past_one_page(server_url: str, prefix: str, other_host: valkey.Valkey) -> None:
    pipeline = other_host.pipeline(transaction=False)
    for number in range(2500):
        pipeline.set(f"{prefix}:lock:wf-{number:05d}", "token", px=60_000)
    pipeline.execute()

    result = run_cli("info", "--url", server_url, "--prefix", prefix, "--json")

    resources = [lock["resource"] for lock in json.loads(result.stdout)["locks"]]
    assert resources == [f"wf-{number:05d}" for number in range(2500)]


def test_info_treats_glob_characters_literally(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    other_host.set(f"{prefix}-x:lock:theirs", "token", px=60_000)
    other_host.set(f"{prefix}*:lock:mine", "token", px=60_000)

    result = run_cli("info", "--url", server_url, "--prefix", f"{prefix}*", "--json")

    assert [lock["resource"] for lock in json.loads(result.stdout)["locks"]] == ["mine"]


def test_info_text_lists_queues_and_locks(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    other_host.lpush(f"{prefix}:queue:index", "index-1", "index-2")
    other_host.set(f"{prefix}:lock:wf-1", "token", px=60_000)

    result = run_cli("info", "--url", server_url, "--prefix", prefix)

    lines = result.stdout.splitlines()
    assert result.returncode == 0
    assert lines[:5] == [
        f"queues under {prefix!r}:",
        "  workflow   0",
        "  event      0",
        "  index      2",
        "locks held: 1",
    ]
    assert lines[5].startswith("  wf-1  ")
    assert lines[5].endswith(" s left")
    assert len(lines) == 6


async def test_tail_prints_rust_and_python_events(
    server_url: str, prefix: str, other_host: valkey.Valkey
) -> None:
    process = await start_tail("--url", server_url, "--prefix", prefix, "--count", "3")
    publisher = await ValkeyLifecyclePublisher.new(server_url, prefix)
    try:
        other_host.publish(f"{prefix}:lifecycle:all", RUST_EXAMPLE)
        await publisher.publish(
            LifecycleEvent(
                "wf-2", "def-2", 4, events.StepStarted(3, "Charge"), event_time_ns=10**18
            )
        )
        await publisher.publish(
            LifecycleEvent(
                "wf-3",
                "def-3",
                0,
                events.Error('card "declined"'),
                reference="order-7",
                event_time_ns=10**18 + 1_000_000,
            )
        )
    finally:
        await publisher.close()

    status, lines = await finish(process)

    assert status == 0
    assert lines == [
        "2026-12-04T19:06:05.123456789Z wf-1 def-1@1 Started",
        '2001-09-09T01:46:40Z wf-2 def-2@4 StepStarted step_id=3 step_name="Charge"',
        '2001-09-09T01:46:40.001Z wf-3 def-3@0 Error message="card \\"declined\\"" '
        'reference="order-7"',
    ]


async def test_tail_workflow_prints_only_that_workflow(server_url: str, prefix: str) -> None:
    process = await start_tail(
        "--url", server_url, "--prefix", prefix, "--workflow", "wf-2", "--count", "1"
    )
    publisher = await ValkeyLifecyclePublisher.new(server_url, prefix)
    try:
        await publisher.publish(LifecycleEvent("wf-1", "d", 1, events.Started(), event_time_ns=0))
        await publisher.publish(
            LifecycleEvent("wf-2", "d", 1, events.StepCompleted(5, None), event_time_ns=0)
        )
    finally:
        await publisher.close()

    status, lines = await finish(process)

    assert status == 0
    assert lines == ["1970-01-01T00:00:00Z wf-2 d@1 StepCompleted step_id=5 step_name=null"]


def test_info_unreachable_server_is_one_line() -> None:
    port = free_port()

    result = run_cli("info", "--url", f"redis://127.0.0.1:{port}", "--prefix", "wfe")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"wfe-valkey info: error: cannot connect to 127.0.0.1:{port}")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_tail_unreachable_server_is_one_line() -> None:
    port = free_port()

    result = run_cli("tail", "--url", f"redis://127.0.0.1:{port}", "--prefix", "wfe")

    assert result.returncode == 2
    assert result.stderr.startswith(f"wfe-valkey tail: error: cannot connect to 127.0.0.1:{port}")
    assert result.stderr.count("\n") == 1


def test_info_bad_url_is_one_line() -> None:
    result = run_cli("info", "--url", "http://127.0.0.1:6379", "--prefix", "wfe")

    assert result.returncode == 2
    assert result.stderr == (
        "wfe-valkey info: error: unsupported URL scheme 'http'; expected redis://, "
        "valkey://, rediss://, valkeys:// or unix://\n"
    )


def test_bad_url_hides_the_password() -> None:
    result = run_cli("info", "--url", "redis://user:s3cret@127.0.0.1:99999", "--prefix", "wfe")

    assert result.returncode == 2
    assert "s3cret" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_tail_rejects_zero_count(server_url: str) -> None:
    result = run_cli("tail", "--url", server_url, "--prefix", "wfe", "--count", "0")

    assert result.returncode == 2
    assert result.stderr == "wfe-valkey tail: error: --count must be 1 or more, got 0\n"


def test_info_requires_a_prefix(server_url: str) -> None:
    result = run_cli("info", "--url", server_url)

    assert result.returncode == 2
    assert "the following arguments are required: --prefix" in result.stderr


def test_help_of_each_subcommand() -> None:
    expected = {
        "info": ["--url", "--prefix", "--json"],
        "tail": ["--url", "--prefix", "--workflow", "--count"],
        "demo": ["--url", "--prefix", "--hosts"],
    }
    for command, options in expected.items():
        result = run_cli(command, "--help")
        assert result.returncode == 0, command
        assert result.stdout.startswith(f"usage: wfe-valkey {command}"), command
        for option in options:
            assert option in result.stdout, (command, option)


async def test_tail_into_a_closed_pipe_exits_quietly(server_url: str, prefix: str) -> None:
    command = (
        f"{sys.executable} -m wfe_valkey tail --url {server_url} --prefix {prefix} | head -n 1"
    )
    process = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    async with asyncio.timeout(20):
        listening = await process.stderr.readline()
    assert listening.decode().startswith("listening on ")

    async with await ValkeyLifecyclePublisher.new(server_url, prefix) as publisher:
        for n in range(200):
            await publisher.publish(LifecycleEvent.new(f"wf-{n}", "def-1", 1, events.Started()))
            await asyncio.sleep(0.001)
        async with asyncio.timeout(20):
            output, errors = await process.communicate()

    assert output.decode().count("\n") == 1
    assert "wf-0" in output.decode()
    assert errors == b""


async def test_tail_escapes_ids_that_would_forge_lines(server_url: str, prefix: str) -> None:
    process = await start_tail("--url", server_url, "--prefix", prefix, "--count", "1")
    forged = "wf-9 def-1@1 Completed\n2026-12-04T19:06:05Z wf-1\x1b[31m"
    async with await ValkeyLifecyclePublisher.new(server_url, prefix) as publisher:
        await publisher.publish(
            LifecycleEvent(forged, "def\\1", 1, events.Started(), event_time_ns=10**18)
        )

    status, lines = await finish(process)

    assert status == 0
    assert lines == [
        "2001-09-09T01:46:40Z wf-9\\x20def-1@1\\x20Completed\\x0a2026-12-04T19:06:05Z"
        "\\x20wf-1\\x1b[31m def\\\\1@1 Started"
    ]


def test_info_escapes_lock_names(server_url: str, prefix: str, other_host: valkey.Valkey) -> None:
    other_host.set(f"{prefix}:lock:real\n  forged-lock  99.000 s left", "t", px=60_000)
    other_host.set(f"{prefix}:lock:".encode() + b"bad\xff", "t", px=60_000)

    text = run_cli("info", "--url", server_url, "--prefix", prefix)
    report = json.loads(run_cli("info", "--url", server_url, "--prefix", prefix, "--json").stdout)

    lock_lines = text.stdout.splitlines()[-2:]
    assert text.stdout.splitlines()[-3] == "locks held: 2"
    assert lock_lines[0].startswith("  bad\\\\xff  ")
    assert lock_lines[1].startswith(
        "  real\\x0a\\x20\\x20forged-lock\\x20\\x2099.000\\x20s\\x20left  "
    )
    assert [lock["resource"] for lock in report["locks"]] == [
        "bad\\xff",
        "real\n  forged-lock  99.000 s left",
    ]
