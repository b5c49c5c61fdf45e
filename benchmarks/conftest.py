"""Fixtures and the end-of-run summary for the throughput benchmarks.

Run with ``pytest benchmarks/``. The server is a private valkey-server on
a free loopback port, unless WFE_VALKEY_TEST_URL points at a running one.
At the end of the session a table of cycles/s with our ratio to each peer
is printed, and the figures are saved as JSON (see ``--bench-results``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wfe_valkey.embedded import EmbeddedValkey

from .report import ResultsBook

BOOK_KEY = pytest.StashKey[ResultsBook]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wfe-valkey benchmarks")
    group.addoption(
        "--bench-scale",
        type=float,
        default=1.0,
        help="multiply the cycles of every round by this factor (default 1.0)",
    )
    group.addoption(
        "--bench-results",
        default=None,
        help="file to save the run's figures in as JSON "
        "(default: .benchmarks/wfe-valkey-results.json under the rootdir)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[BOOK_KEY] = ResultsBook()
    # valkey-glide 2.6 warns about its own old module paths while pytest inspects it.
    config.addinivalue_line("filterwarnings", "ignore:Importing from 'glide.*:DeprecationWarning")


@pytest.fixture(scope="session")
def book(pytestconfig: pytest.Config) -> ResultsBook:
    return pytestconfig.stash[BOOK_KEY]


@pytest.fixture(scope="session")
def bench_scale(pytestconfig: pytest.Config) -> float:
    scale: float = pytestconfig.getoption("--bench-scale")
    if scale <= 0:
        raise pytest.UsageError(f"--bench-scale must be positive, got {scale}")
    return scale


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    external = os.environ.get("WFE_VALKEY_TEST_URL")
    if external:
        yield external
        return
    with EmbeddedValkey() as server:
        yield server.url


def results_path(config: pytest.Config) -> Path:
    configured = config.getoption("--bench-results")
    if configured:
        return Path(configured)
    return config.rootpath / ".benchmarks" / "wfe-valkey-results.json"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    book = config.stash.get(BOOK_KEY, None)
    if book is None or not (book.measurements or book.memory):
        return
    terminalreporter.section("wfe-valkey against its peers")
    for line in book.summary_lines():
        terminalreporter.write_line(line)
    path = results_path(config)
    book.save(path)
    terminalreporter.write_line("")
    terminalreporter.write_line(f"figures saved in {path}")
