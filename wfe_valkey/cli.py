"""The ``wfe-valkey`` command line.

Each subcommand is a function that gets the parsed arguments and returns
the exit code. Errors a user can fix (a bad URL, a server that cannot be
reached) are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

from ._provider import open_connection
from .cluster import ClusterConnection
from .connection import Connection
from .contracts import QueueType
from .errors import InvalidURLError, ReplyError, ValkeyError
from .events import Error, LifecycleEvent, StepCompleted, StepStarted, format_timestamp

# Keys asked for per SCAN call; the server may return more or fewer.
SCAN_COUNT: Final = 1000


def build_parser() -> argparse.ArgumentParser:
    """Describe every subcommand and its options."""
    parser = argparse.ArgumentParser(
        prog="wfe-valkey",
        description="Valkey lock, queue and lifecycle providers for Python WFE hosts.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="simulate several WFE hosts sharing one Valkey, and check the results",
        description=(
            "Simulate several WFE hosts that share work through one Valkey: queue "
            "workflow ids, dequeue them, lock each workflow, publish lifecycle events, "
            "and check that every id ran exactly once under its lock. Without --url, "
            "an embedded Valkey is started on a free loopback port and stopped at the end."
        ),
    )
    demo.add_argument("--url", help="server URL, for example redis://127.0.0.1:6379/0")
    demo.add_argument("--prefix", default=None, help="key prefix (default: a random one)")
    demo.add_argument("--hosts", type=int, default=4, help="simulated hosts (default: 4)")
    demo.add_argument(
        "--workflows", type=int, default=3000, help="workflow ids to queue (default: 3000)"
    )
    demo.add_argument(
        "--steps", type=int, default=2, help="steps per workflow, one event each (default: 2)"
    )
    demo.add_argument(
        "--quiet", action="store_true", help="print only the summary, without progress"
    )
    demo.set_defaults(run=run_demo)

    info = commands.add_parser(
        "info",
        help="show queue lengths and held locks",
        description=(
            "Show the length of the workflow, event and index queues, and every held "
            "lock with the time left before it expires. Locks are found with SCAN, "
            "which does not block the server."
        ),
    )
    _add_server_arguments(info)
    info.add_argument(
        "--json",
        action="store_true",
        help='print {"queues": {...}, "locks": [{"resource": ..., "ttl_ms": ...}]} '
        "with locks sorted by resource",
    )
    info.set_defaults(run=run_info)

    tail = commands.add_parser(
        "tail",
        help="print lifecycle events as they are published",
        description=(
            "Print lifecycle events as Rust or Python hosts publish them, one line each: "
            "time, workflow id, definition@version, event type and its fields. Runs "
            "until interrupted, or until --count events were printed."
        ),
    )
    _add_server_arguments(tail)
    tail.add_argument(
        "--workflow",
        metavar="ID",
        help="print only this workflow instance's events (default: every workflow)",
    )
    tail.add_argument(
        "--count", type=int, metavar="N", help="exit after printing N events (default: no limit)"
    )
    tail.set_defaults(run=run_tail)
    return parser


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", required=True, help="server URL, for example redis://127.0.0.1:6379/0"
    )
    parser.add_argument("--prefix", required=True, help="key prefix the hosts use, for example wfe")


def run_demo(arguments: argparse.Namespace) -> int:
    from .demo import DemoOptions, run

    options = DemoOptions(
        url=arguments.url,
        prefix=arguments.prefix,
        hosts=arguments.hosts,
        workflows=arguments.workflows,
        steps=arguments.steps,
        show_progress=not arguments.quiet,
    )
    return asyncio.run(run(options))


def run_info(arguments: argparse.Namespace) -> int:
    report = asyncio.run(read_info(arguments.url, _check_prefix(arguments.prefix)))
    if arguments.json:
        print(json.dumps(report))
    else:
        print(format_info(arguments.prefix, report))
    return 0


async def read_info(url: str, prefix: str) -> dict[str, Any]:
    """Read the queue lengths and the held locks with their time to live."""
    connection = await open_connection(url, {}, "wfe-valkey-cli")
    try:
        keys = [f"{prefix}:queue:{queue_type.value}" for queue_type in QueueType]
        lengths = await connection.execute_many([("LLEN", key) for key in keys])
        for key, length in zip(keys, lengths, strict=True):
            if isinstance(length, ReplyError):
                raise type(length)(f"LLEN {key} failed: {length}")
        queues = {
            queue_type.value: length for queue_type, length in zip(QueueType, lengths, strict=True)
        }
        locks = await _read_locks(connection, prefix)
    finally:
        await connection.close()
    return {"queues": queues, "locks": locks}


async def _read_locks(connection: Connection, prefix: str) -> list[dict[str, Any]]:
    """Find the lock keys with SCAN and read each one's time to live.

    On a cluster each primary stores its own keys, so every primary is scanned.
    """
    ttls: dict[str, int] = {}
    if isinstance(connection, ClusterConnection):
        nodes = await connection.primary_connections()
    else:
        nodes = [connection]
    for node in nodes:
        await _scan_locks(node, prefix, ttls)
    return [{"resource": resource, "ttl_ms": ttls[resource]} for resource in sorted(ttls)]


async def _scan_locks(connection: Connection, prefix: str, ttls: dict[str, int]) -> None:
    """Add each lock key of one node, with its time to live, to `ttls`."""
    key_prefix = f"{prefix}:lock:"
    pattern = _escape_glob(key_prefix) + "*"
    cursor = b"0"
    while True:
        cursor, keys = await connection.execute(
            "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT
        )
        if keys:
            replies = await connection.execute_many([("PTTL", key) for key in keys])
            for key, ttl in zip(keys, replies, strict=True):
                # PTTL returns -2 for a lock released after SCAN listed it.
                if isinstance(ttl, int) and ttl != -2:
                    # backslashreplace keeps bytes that are not UTF-8 visible
                    # and distinct, where "replace" would merge them into U+FFFD.
                    ttls[key.decode(errors="backslashreplace")[len(key_prefix) :]] = ttl
        if cursor == b"0":
            break


def format_info(prefix: str, report: dict[str, Any]) -> str:
    """Format `read_info`'s report as text for a terminal."""
    lines = [f"queues under {prefix!r}:"]
    for name, length in report["queues"].items():
        lines.append(f"  {name:<10} {length}")
    locks = report["locks"]
    lines.append(f"locks held: {len(locks)}")
    for lock in locks:
        ttl_ms = lock["ttl_ms"]
        left = "no expiry" if ttl_ms < 0 else f"{ttl_ms / 1000:.3f} s left"
        lines.append(f"  {printable(lock['resource'])}  {left}")
    return "\n".join(lines)


def _escape_glob(text: str) -> str:
    """Escape the characters SCAN MATCH treats as a pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def run_tail(arguments: argparse.Namespace) -> int:
    prefix = _check_prefix(arguments.prefix)
    if arguments.workflow is not None and not arguments.workflow:
        raise ValueError("--workflow must not be empty")
    if arguments.count is not None and arguments.count < 1:
        raise ValueError(f"--count must be 1 or more, got {arguments.count}")
    return asyncio.run(tail_events(arguments.url, prefix, arguments.workflow, arguments.count))


async def tail_events(url: str, prefix: str, workflow_id: str | None, count: int | None) -> int:
    """Print lifecycle events until interrupted or `count` were printed."""
    from .subscriber import ValkeyLifecycleSubscriber

    subscriber = await ValkeyLifecycleSubscriber.new(url, prefix, client_name="wfe-valkey-tail")
    try:
        subscription = await subscriber.subscribe(workflow_id)
        print(f"listening on {subscription.channel}", file=sys.stderr, flush=True)
        printed = 0
        async for event in subscription:
            print(format_event(event), flush=True)
            printed += 1
            if count is not None and printed >= count:
                break
    finally:
        await subscriber.close()
    return 0


def format_event(event: LifecycleEvent) -> str:
    """Format one event as a line: time, workflow, definition@version, type and fields."""
    parts = [
        format_timestamp(event.event_time_ns),
        printable(event.workflow_instance_id),
        f"{printable(event.workflow_definition_id)}@{event.version}",
        event.event_type.tag,
    ]
    event_type = event.event_type
    if isinstance(event_type, Error):
        parts.append(f"message={json.dumps(event_type.message, ensure_ascii=False)}")
    elif isinstance(event_type, (StepStarted, StepCompleted)):
        parts.append(f"step_id={event_type.step_id}")
        name = event_type.step_name
        parts.append(
            "step_name=null"
            if name is None
            else f"step_name={json.dumps(name, ensure_ascii=False)}"
        )
    if event.reference is not None:
        parts.append(f"reference={json.dumps(event.reference, ensure_ascii=False)}")
    return " ".join(parts)


def printable(text: str) -> str:
    """Escape characters a terminal would act on, and spaces, so one value stays one word.

    Ids come from any publisher or key, so a newline or an escape sequence
    in one must not forge a line or change the terminal's state.
    """
    if text.isprintable() and " " not in text and "\\" not in text:
        return text
    return "".join(
        char if char.isprintable() and char not in " \\" else _escape_char(char) for char in text
    )


def _escape_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _check_prefix(prefix: str) -> str:
    if not prefix:
        raise ValueError("--prefix must not be empty")
    return prefix


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        status = arguments.run(arguments)
    except BrokenPipeError:
        # The reader of our output went away (`wfe-valkey tail | head -1`):
        # not an error. Point stdout at /dev/null so the final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    except (InvalidURLError, ValkeyError, ValueError, OSError) as exc:
        print(f"wfe-valkey {arguments.command}: error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)
