"""Connection settings, and the URL forms that produce them.

Accepted URLs:

- ``redis://[[user]:password@]host[:port][/db][?option=value...]``
- ``valkey://...``, the same as ``redis://``
- ``rediss://...`` and ``valkeys://...``, the same over TLS
- ``unix:///path/to.sock[?db=N&option=value...]``

Options in the query string: ``timeout`` and ``connect_timeout`` (seconds,
or ``none``), ``db``, ``client_name``, and for TLS ``ssl_cert_reqs``
(``required``, ``optional`` or ``none``), ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile`` and ``ssl_check_hostname``. Keyword
arguments given to a provider's ``new()`` override the URL's options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from .errors import InvalidURLError

DEFAULT_PORT: Final = 6379
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0

TCP_SCHEMES: Final = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}
CERT_REQS: Final = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
TRUE_WORDS: Final = {"1", "true", "yes", "on"}
DIGITS: Final = re.compile(r"[0-9]+")
# The server's databases setting is an int; SELECT rejects numbers it does not have.
MAX_DB: Final = 2**31 - 1
FALSE_WORDS: Final = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class TLSSettings:
    """How to open and verify a TLS connection."""

    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True

    def create_context(self) -> ssl.SSLContext:
        """Build the client-side SSL context these settings describe.

        Raises `InvalidURLError` naming the option and the path when a
        certificate or key file cannot be read or is not valid PEM.
        """
        # With a CA file, only that CA is trusted, not the system's defaults.
        with _naming_file("ssl_ca_certs", self.ca_certs or ""):
            context = ssl.create_default_context(cafile=self.ca_certs)
        context.check_hostname = self.check_hostname and self.cert_reqs != ssl.CERT_NONE
        context.verify_mode = self.cert_reqs
        if self.certfile is not None:
            for option, path in (("ssl_certfile", self.certfile), ("ssl_keyfile", self.keyfile)):
                if path is not None and not os.path.isfile(path):
                    raise InvalidURLError(f"{option} file {path!r} not found")
            with _naming_file("ssl_certfile", self.certfile):
                context.load_cert_chain(self.certfile, self.keyfile)
        return context


@contextlib.contextmanager
def _naming_file(option: str, path: str) -> Iterator[None]:
    """Turn a failure to load a certificate file into an error naming the option and path."""
    try:
        yield
    except FileNotFoundError:
        raise InvalidURLError(f"{option} file {path!r} not found") from None
    except ssl.SSLError as exc:
        raise InvalidURLError(
            f"{option} file {path!r} is not a valid PEM certificate or key: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise InvalidURLError(
            f"{option} file {path!r} cannot be read: {exc.strerror or exc}"
        ) from None


@dataclass(frozen=True)
class ConnectionSettings:
    """Connection target and options: address, credentials, timeouts, TLS.

    The password never appears in `repr()` or in `address`.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_name: str | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    tls: TLSSettings | None = None

    @property
    def address(self) -> str:
        """The server's address for messages: ``host:port`` or the socket path."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def with_address(self, host: str, port: int) -> ConnectionSettings:
        """Return a copy that connects to another TCP address."""
        return dataclasses.replace(self, host=host, port=port, unix_path=None)


def parse_url(url: str, **overrides: Any) -> ConnectionSettings:
    """Parse a connection URL into settings; keyword arguments win over it.

    Raises `InvalidURLError` naming the part that is wrong. The message
    never contains the password.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    if not url.strip():
        raise InvalidURLError("url is empty; expected for example redis://127.0.0.1:6379/0")

    _reject_unencoded_credentials(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "unix":
        options = _parse_unix(url)
    elif scheme in TCP_SCHEMES:
        options = _parse_tcp(url, TCP_SCHEMES[scheme])
    else:
        shown = scheme or "(none)"
        raise InvalidURLError(
            f"unsupported URL scheme {shown!r}; expected redis://, valkey://, "
            "rediss://, valkeys:// or unix://"
        )
    options.update(_check_overrides(overrides))
    return _build_settings(options)


def _reject_unencoded_credentials(url: str) -> None:
    """Reject a URL whose password contains a raw '?', '#' or '/'.

    Such a URL splits inside the password, and the password's tail would
    then be read as a path or query option and shown in an error message.
    """
    rest = url.partition("://")[2]
    cut = min((rest.find(mark) for mark in "/?#" if mark in rest), default=len(rest))
    if "@" not in rest[:cut] and "@" in rest[cut:] and ":" in rest[:cut] + rest[cut:].split("@")[0]:
        raise InvalidURLError(
            "the URL has '@' after its host part; if the password contains '/', '?' or '#', "
            "percent-encode them as %2F, %3F and %23"
        )


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise InvalidURLError(f"invalid URL {_redact(url)!r}: {exc}") from None


def _parse_tcp(url: str, use_tls: bool) -> dict[str, Any]:
    """Read host, port, credentials, database and options of a TCP URL."""
    parts = _split(url)
    options = _parse_query(parts.query)
    options["tls"] = use_tls

    try:
        port = parts.port
    except ValueError:
        raise InvalidURLError(
            f"invalid port in URL {_redact(url)!r}; expected a number from 1 to 65535"
        ) from None
    if port == 0:
        raise InvalidURLError(f"invalid port 0 in URL {_redact(url)!r}")
    options["port"] = port or DEFAULT_PORT

    host = parts.hostname
    if not host:
        raise InvalidURLError(f"missing host in URL {_redact(url)!r}")
    options["host"] = host

    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)

    path = parts.path.strip("/")
    if path:
        options["db"] = path
    return options


def _parse_unix(url: str) -> dict[str, Any]:
    """Read the socket path and options of a ``unix://`` URL."""
    parts = _split(url)
    options = _parse_query(parts.query)
    if not parts.path:
        raise InvalidURLError(f"missing socket path in URL {_redact(url)!r}")
    options["unix_path"] = unquote(parts.path)
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    return options


QUERY_OPTIONS: Final = {
    "db",
    "timeout",
    "connect_timeout",
    "client_name",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
}


def _parse_query(query: str) -> dict[str, Any]:
    """Return the URL's query options, rejecting names it does not know."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in QUERY_OPTIONS:
            known = ", ".join(sorted(QUERY_OPTIONS))
            raise InvalidURLError(f"unknown URL option {name!r}; known options: {known}")
        options[name] = value
    return options


KEYWORD_OPTIONS: Final = QUERY_OPTIONS | {"username", "password"}


def _check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Reject keyword options that do not exist; keep the rest."""
    for name in overrides:
        if name not in KEYWORD_OPTIONS:
            known = ", ".join(sorted(KEYWORD_OPTIONS))
            raise TypeError(f"unknown connection option {name!r}; known options: {known}")
    return overrides


def _build_settings(options: dict[str, Any]) -> ConnectionSettings:
    """Check and convert every option, then build the settings."""
    tls = _build_tls(options)
    return ConnectionSettings(
        host=options.get("host", "127.0.0.1"),
        port=options.get("port", DEFAULT_PORT),
        unix_path=options.get("unix_path"),
        db=_parse_db(options.get("db", 0)),
        username=_optional_str("username", options.get("username")),
        password=_optional_str("password", options.get("password")),
        client_name=_parse_client_name(options.get("client_name")),
        timeout=_parse_seconds("timeout", options.get("timeout", DEFAULT_TIMEOUT)),
        connect_timeout=_parse_seconds(
            "connect_timeout", options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        ),
        tls=tls,
    )


def _build_tls(options: dict[str, Any]) -> TLSSettings | None:
    """Return TLS settings when the scheme requires TLS, else `None`."""
    tls_names = [name for name in options if name.startswith("ssl_")]
    if not options.get("tls"):
        if tls_names:
            raise InvalidURLError(
                f"option {tls_names[0]!r} needs a TLS URL (rediss:// or valkeys://)"
            )
        return None

    return TLSSettings(
        cert_reqs=_parse_cert_reqs(options.get("ssl_cert_reqs", "required")),
        ca_certs=options.get("ssl_ca_certs"),
        certfile=options.get("ssl_certfile"),
        keyfile=options.get("ssl_keyfile"),
        check_hostname=_parse_bool("ssl_check_hostname", options.get("ssl_check_hostname", True)),
    )


def _parse_cert_reqs(value: object) -> ssl.VerifyMode:
    """Return the verify mode given as a word, an `ssl.VerifyMode`, or `None` for none."""
    if isinstance(value, ssl.VerifyMode):
        return value
    if value is None:
        return ssl.CERT_NONE
    word = str(value).lower()
    if word not in CERT_REQS:
        raise InvalidURLError(
            f"invalid ssl_cert_reqs {value!r}; expected required, optional or none"
        )
    return CERT_REQS[word]


def _parse_db(value: object) -> int:
    """Return the database number, an integer from 0 to MAX_DB."""
    if isinstance(value, int) and not isinstance(value, bool):
        db = value
    elif isinstance(value, str) and DIGITS.fullmatch(value):
        db = int(value)
    else:
        raise InvalidURLError(
            f"invalid database number {value!r}; expected an integer of 0 or more"
        )
    if not 0 <= db <= MAX_DB:
        raise InvalidURLError(f"invalid database number {db}; expected 0 to {MAX_DB}")
    return db


def _optional_str(name: str, value: object) -> str | None:
    """Return a text option, which must be a `str` when given."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _parse_client_name(value: object) -> str | None:
    """Return the client name; CLIENT SETNAME rejects spaces and newlines."""
    name = _optional_str("client_name", value)
    if name is not None and (not name or any(char.isspace() for char in name)):
        raise InvalidURLError(
            f"invalid client_name {name!r}; expected a non-empty name without spaces"
        )
    return name


def _parse_seconds(name: str, value: object) -> float | None:
    """Return a timeout in seconds (positive and finite), or `None` for none."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, bool):
        raise InvalidURLError(f"invalid {name} {value!r}; expected seconds or none")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidURLError(
            f"invalid {name} {value!r}; expected seconds as a number, or none"
        ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidURLError(f"invalid {name} {value!r}; expected a positive number of seconds")
    return seconds


def _parse_bool(name: str, value: object) -> bool:
    """Return a yes/no option given as a bool or as a word."""
    if isinstance(value, bool):
        return value
    word = str(value).lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise InvalidURLError(f"invalid {name} {value!r}; expected true or false")


def _redact(url: str) -> str:
    """Return the URL with any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    credentials, at, after = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{after}"
