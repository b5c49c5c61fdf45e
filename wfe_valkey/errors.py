"""The library's exceptions.

Failures of the server or the network raise subclasses of `ValkeyError`.
Mistakes in the caller's arguments raise subclasses of the built-in
`ValueError` or `TypeError`, so callers can distinguish them from outages.
"""

from __future__ import annotations


class ValkeyError(Exception):
    """Base class of every server or network failure raised by wfe_valkey."""


class ValkeyConnectionError(ValkeyError):
    """The connection could not be opened, or is not usable right now."""


class ConnectionLostError(ValkeyConnectionError):
    """The connection dropped after the command was written.

    The server may or may not have applied the command, so it is not sent
    again: callers decide whether a retry is safe (an `LPUSH` is not).
    """


class ValkeyTimeoutError(ValkeyError, TimeoutError):
    """A connect or a command did not finish within its timeout."""


class NoReplyError(ConnectionLostError, ValkeyTimeoutError):
    """The server stopped replying, so the connection was dropped.

    The command was written and may or may not have been applied. It is
    both a `ConnectionLostError` and a `ValkeyTimeoutError` (so also a
    `TimeoutError`): callers that handle either see it.
    """


class ProtocolError(ValkeyError):
    """The server sent bytes that are not valid RESP."""


class ReplyError(ValkeyError):
    """The server replied to a command with an error reply.

    `code` is the error's first word (for example ``ERR`` or ``WRONGTYPE``).
    The message is the server's text, unchanged, unless the library put it
    in context (a failed handshake step names the step and the address);
    then `code` is still the server's first word.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0] if code is None else code


class NoScriptError(ReplyError):
    """NOSCRIPT: the server does not have the script with that SHA1 cached."""


class WrongTypeError(ReplyError):
    """WRONGTYPE: the key contains a value of another type."""


class AuthenticationError(ReplyError):
    """NOAUTH, WRONGPASS or NOPERM: the server rejected the credentials."""


class LoadingError(ReplyError):
    """LOADING: the server is still loading its dataset into memory."""


class ReadOnlyError(ReplyError):
    """READONLY: the node is a replica and rejects writes."""


class BusyError(ReplyError):
    """BUSY: a script or function is running and blocks the server."""


class InvalidURLError(ValueError):
    """The connection URL or one of its options is invalid."""
