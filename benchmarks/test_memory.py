"""Memory while a million commands wait on a stopped server.

Each client runs `memory_probe` in a process of its own, against a server
of its own that the probe stops with SIGSTOP. wfe_valkey must hold its
write buffer near the high-water mark, however many callers wait; the
figures for both clients go into the summary.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .memory_probe import TASKS_PER_TURN
from .report import ResultsBook

COMMANDS = 1_000_000
# Fewer commands than this all fit in the socket and the write buffer
# (127,000 did on Linux loopback), and no caller would wait.
MIN_COMMANDS = 200_000
# One LPUSH of the probe's id to its queue, as RESP, rounded up.
COMMAND_BYTES = 64
PROBE_TIMEOUT = 240


def run_probe(client: str, commands: int) -> dict[str, object]:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.memory_probe",
            "--commands",
            str(commands),
            "--client",
            client,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_write_buffer_bounded_on_stopped_server(book: ResultsBook, bench_scale: float) -> None:
    commands = max(MIN_COMMANDS, int(COMMANDS * min(bench_scale, 1.0)))
    result = run_probe("wfe-valkey", commands)
    book.memory["wfe-valkey"] = result

    assert result["failed_callers"] == 0
    assert result["written_commands"] + result["waiting_callers"] == commands
    assert result["waiting_callers"] > 0
    bound = result["high_water"] + 2 * TASKS_PER_TURN * COMMAND_BYTES
    assert result["max_write_buffer"] <= bound


def test_aioredis_memory_on_stopped_server(book: ResultsBook, bench_scale: float) -> None:
    if importlib.util.find_spec("aioredis") is None:
        book.missing_peers.setdefault("aioredis-1.3.1", "aioredis does not import")
        pytest.skip("aioredis 1.3.1 is not installed")
    commands = max(MIN_COMMANDS, int(COMMANDS * min(bench_scale, 1.0)))
    result = run_probe("aioredis-1.3.1", commands)
    book.memory["aioredis-1.3.1"] = result

    assert result["failed_callers"] == 0
