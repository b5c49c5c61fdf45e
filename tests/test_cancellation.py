"""Cancelled and timed-out calls never shift replies onto other callers.

Thousands of concurrent calls, each with a value of its own, go through a
proxy that delays every chunk by a random time and now and then resets
every connection. Calls are cancelled at random moments and have short
timeouts. Every call that completes must get exactly its own reply. Run
with -s to see the counts.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from proxy import DelayingProxy

from wfe_valkey import (
    ConnectionLostError,
    ValkeyConnectionError,
    ValkeyTimeoutError,
    parse_url,
)
from wfe_valkey.connection import Connection

CALLS_PER_WAVE = 1000
WAVES = 8


async def one_call(
    connection: Connection, key: str, value: str, kind: int, start_after: float
) -> bool:
    """After `start_after` seconds, run one call of kind 0 (ECHO), 1 (SET then GET)
    or 2 (both in one batch).

    Return whether every reply was this call's own.
    """
    await asyncio.sleep(start_after)
    if kind == 0:
        return bool(await connection.execute("ECHO", value) == value.encode())
    if kind == 1:
        if await connection.execute("SET", key, value) != b"OK":
            return False
        return bool(await connection.execute("GET", key) == value.encode())
    replies = await connection.execute_many([("SET", key, value), ("GET", key)])
    return replies == [b"OK", value.encode()]


async def run_wave(
    connection: Connection,
    prefix: str,
    wave: int,
    chooser: random.Random,
    counts: Counter[str],
    spread: float = 0.0,
) -> None:
    """Start one wave of concurrent calls, cancel some at random moments, tally the outcomes.

    Each call starts at a random moment within `spread` seconds, so that
    traffic flows in many chunks rather than one.
    """
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[bool]] = []
    for number in range(CALLS_PER_WAVE):
        value = f"value-{wave}-{number}-{chooser.getrandbits(64):016x}"
        key = f"{prefix}:{wave}:{number}"
        start_after = chooser.uniform(0.0, spread)
        task = asyncio.ensure_future(
            one_call(connection, key, value, chooser.randrange(3), start_after)
        )
        if chooser.random() < 0.3:
            loop.call_later(start_after + chooser.uniform(0.0, 0.03), task.cancel)
        tasks.append(task)

    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        counts[classify(outcome)] += 1


def classify(outcome: Any) -> str:
    if outcome is True:
        return "completed"
    if outcome is False:
        return "wrong"
    if isinstance(outcome, asyncio.CancelledError):
        return "cancelled"
    if isinstance(outcome, ValkeyTimeoutError):
        return "timed out"
    if isinstance(outcome, ConnectionLostError):
        return "lost after write"
    if isinstance(outcome, ValkeyConnectionError):
        return "not sent"
    return f"unexpected {type(outcome).__name__}: {outcome}"


async def test_no_reply_goes_to_the_wrong_caller(
    server_url: str,
    start_proxy: Callable[..., Awaitable[DelayingProxy]],
    prefix: str,
) -> None:
    settings = parse_url(server_url)
    proxy = await start_proxy(settings.port, max_delay=0.03, seed=1)
    connection = await Connection.open(parse_url(proxy.url, timeout=0.05))
    chooser = random.Random(2)
    counts: Counter[str] = Counter()

    for wave in range(WAVES):
        if wave in (3, 6):
            asyncio.get_running_loop().call_later(0.12, proxy.cut)
        await run_wave(connection, prefix, wave, chooser, counts, spread=0.25)

    print(f"\ncalls through a delaying proxy: {dict(sorted(counts.items()))}")
    assert counts["wrong"] == 0
    assert sum(counts.values()) == CALLS_PER_WAVE * WAVES
    assert set(counts) <= {
        "completed",
        "cancelled",
        "timed out",
        "lost after write",
        "not sent",
        "wrong",
    }
    assert counts["completed"] > 0
    assert counts["cancelled"] > 0
    assert counts["timed out"] > 0
    assert counts["lost after write"] > 0
    assert await echo_within_attempts(connection, "still in step") == b"still in step"
    await connection.close()


async def echo_within_attempts(connection: Connection, text: str, attempts: int = 20) -> bytes:
    """ECHO `text`, trying again while the 50 ms timeout ends first on a loaded machine."""
    for _ in range(attempts - 1):
        try:
            reply: bytes = await connection.execute("ECHO", text)
            return reply
        except ValkeyTimeoutError:
            await asyncio.sleep(0.05)
    last: bytes = await connection.execute("ECHO", text)
    return last


async def test_cancelled_calls_leave_a_direct_connection_in_step(
    server_url: str, prefix: str
) -> None:
    connection = await Connection.open(parse_url(server_url))
    chooser = random.Random(3)
    counts: Counter[str] = Counter()

    for wave in range(3):
        await run_wave(connection, prefix, wave, chooser, counts)

    print(f"\ncalls on a direct connection: {dict(sorted(counts.items()))}")
    assert counts["wrong"] == 0
    assert counts["completed"] + counts["cancelled"] == CALLS_PER_WAVE * 3
    assert counts["cancelled"] > 0
    assert await connection.execute("ECHO", "still in step") == b"still in step"
    await connection.close()
