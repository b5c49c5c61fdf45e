"""URL forms and options that produce connection settings."""

from __future__ import annotations

import ssl

import pytest

from wfe_valkey import ConnectionSettings, InvalidURLError, parse_url


def test_plain_url_defaults() -> None:
    settings = parse_url("redis://example.test")

    assert settings == ConnectionSettings(host="example.test", port=6379, db=0)
    assert settings.timeout == 10.0
    assert settings.connect_timeout == 5.0
    assert settings.tls is None


def test_valkey_scheme_is_an_alias() -> None:
    assert parse_url("valkey://h:7000/2") == parse_url("redis://h:7000/2")


def test_password_only_url() -> None:
    settings = parse_url("redis://:s3cret@h:6380/1")

    assert settings.username is None
    assert settings.password == "s3cret"
    assert settings.port == 6380
    assert settings.db == 1


def test_user_and_password_are_percent_decoded() -> None:
    settings = parse_url("redis://al%40ice:p%3Ass%2Fw@h")

    assert settings.username == "al@ice"
    assert settings.password == "p:ss/w"


def test_unix_socket_url_with_db() -> None:
    settings = parse_url("unix:///run/valkey/valkey.sock?db=3")

    assert settings.unix_path == "/run/valkey/valkey.sock"
    assert settings.db == 3
    assert settings.address == "unix:/run/valkey/valkey.sock"


def test_ipv6_host_address() -> None:
    settings = parse_url("redis://[::1]:7001")

    assert settings.host == "::1"
    assert settings.address == "[::1]:7001"


def test_query_timeouts_and_none() -> None:
    settings = parse_url("redis://h?timeout=0.25&connect_timeout=none&client_name=host-a")

    assert settings.timeout == 0.25
    assert settings.connect_timeout is None
    assert settings.client_name == "host-a"


def test_keyword_options_override_the_url() -> None:
    settings = parse_url("redis://:fromurl@h/1?timeout=3", timeout=0.5, db=4, password="kw")

    assert settings.timeout == 0.5
    assert settings.db == 4
    assert settings.password == "kw"


def test_tls_url_verifies_by_default() -> None:
    settings = parse_url("rediss://h")

    assert settings.tls is not None
    assert settings.tls.cert_reqs == ssl.CERT_REQUIRED
    assert settings.tls.check_hostname is True


def test_tls_options_from_the_query() -> None:
    settings = parse_url(
        "valkeys://h?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem"
        "&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_check_hostname=false"
    )

    assert settings.tls is not None
    assert settings.tls.cert_reqs == ssl.CERT_NONE
    assert settings.tls.ca_certs == "/ca.pem"
    assert settings.tls.certfile == "/c.pem"
    assert settings.tls.keyfile == "/k.pem"
    assert settings.tls.check_hostname is False


def test_repr_hides_the_password() -> None:
    settings = parse_url("redis://alice:hunter2-secret@h")

    assert "hunter2-secret" not in repr(settings)
    assert "alice" in repr(settings)


@pytest.mark.parametrize(
    "url",
    ["redis://:sekrit-42@h:99999", "redis://:sekrit-42/with/slash@h:notaport"],
)
def test_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_url(url)

    assert "sekrit-42" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["redis://:abc?def@127.0.0.1:6379/0", "redis://:abc#def@h", "redis://:abc/def@h"],
)
def test_raw_separator_in_password_is_rejected_unshown(url: str) -> None:
    with pytest.raises(InvalidURLError, match="percent-encode them as %2F, %3F and %23") as caught:
        parse_url(url)

    assert "def" not in str(caught.value).replace("%2F", "")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/ 1", "invalid database number ' 1'"),
        ("redis://h/1_0", "invalid database number '1_0'"),
        ("redis://h/\uff11", "invalid database number '\uff11'"),
        ("redis://h/99999999999", "invalid database number 99999999999; expected 0 to 2147483647"),
        ("redis://[::1:6379", r"invalid URL 'redis://\[::1:6379': Invalid IPv6 URL"),
        ("redis://h/?client_name=a%20b", "invalid client_name 'a b'"),
    ],
)
def test_lenient_forms_are_rejected(url: str, message: str) -> None:
    with pytest.raises(InvalidURLError, match=message):
        parse_url(url)


def test_non_str_username_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="username must be a str, got list"):
        parse_url("redis://h", username=["a"], password="x")


def test_query_value_may_contain_an_at_sign() -> None:
    assert parse_url("redis://h/?client_name=a@b").client_name == "a@b"
