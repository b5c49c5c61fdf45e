"""The demo: a full run against the test server, and its failure report."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wfe_valkey.demo import Ledger, _print_checks


def test_demo_run_passes_its_checks(server_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wfe_valkey",
            "demo",
            "--url",
            server_url,
            "--workflows",
            "300",
            "--hosts",
            "3",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok] every workflow ran each step exactly once: 600 of 600 steps" in result.stdout
    assert "[ok] never two hosts inside one workflow's lock: 0 overlaps" in result.stdout
    assert "[ok] every published event received: 1,800 of 1,800" in result.stdout
    assert result.stdout.rstrip().endswith("all checks passed")


def test_demo_reports_an_overlap_and_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(steps=1)
    ledger.step_runs[("wf-1", 0)] = 1
    ledger.completions["wf-1"] = 1
    ledger.overlaps.append(("wf-1", "host-0/w0", "host-1/w3"))

    status = _print_checks(ledger, received=0, ids=["wf-1"])

    output = capsys.readouterr().out
    assert status == 1
    assert "[FAILED] never two hosts inside one workflow's lock: 1 overlap" in output
    assert "[ok] every workflow ran each step exactly once" in output
    assert output.rstrip().endswith("1 check failed")


def test_demo_reports_a_step_run_twice(capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(steps=1)
    ledger.step_runs[("wf-1", 0)] = 2
    ledger.completions["wf-1"] = 1

    status = _print_checks(ledger, received=0, ids=["wf-1"])

    output = capsys.readouterr().out
    assert status == 1
    assert "[FAILED] every workflow ran each step exactly once: 1 of 1 step, 1 ran twice" in output


def test_demo_rejects_zero_hosts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wfe_valkey", "demo", "--hosts", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr.strip() == "wfe-valkey demo: error: --hosts must be 1 or more, got 0"
