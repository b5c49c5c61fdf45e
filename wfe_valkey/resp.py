"""RESP encoding and decoding, with no I/O.

The connection feeds the bytes it receives into `ReplyParser` and takes out
decoded replies; commands become bytes through `encode_command`. Error
replies come out as exception instances (not raised), chosen by the error's
first word, so that the caller of each command decides what to do with its
own error.

The providers send the same few commands over and over, with one
argument that changes. They encode the fixed parts once with
`command_head` and `encode_arguments`, and put the changing argument
between them with `BETWEEN_PARTS`, which costs a fifth to a third of
encoding every argument again.

The protocol spoken is RESP2: every server since Redis 2 speaks it, and the
providers need no RESP3 type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import hiredis

from .errors import (
    AuthenticationError,
    BusyError,
    LoadingError,
    NoScriptError,
    ProtocolError,
    ReadOnlyError,
    ReplyError,
    WrongTypeError,
)

CommandArg = str | bytes | int | float

ERROR_CLASSES: Final[dict[str, type[ReplyError]]] = {
    "NOSCRIPT": NoScriptError,
    "WRONGTYPE": WrongTypeError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": AuthenticationError,
    "LOADING": LoadingError,
    "READONLY": ReadOnlyError,
    "BUSY": BusyError,
}

# The classes of the error replies that `ReplyParser` and `typed_reply`
# return, so the hot path can test a reply's class instead of `isinstance`.
ERROR_REPLY_CLASSES: Final = frozenset({ReplyError, *ERROR_CLASSES.values()})


def encode_command(args: tuple[CommandArg, ...]) -> bytes:
    """Encode one command as a RESP array of bulk strings.

    Strings are encoded as UTF-8. Raises `ValueError` when a string cannot
    be encoded (a lone surrogate), before anything is sent. The message
    names the argument's position, not its value, because the value may
    be a secret.
    """
    try:
        payload: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
        return payload
    except UnicodeEncodeError:
        raise ValueError(_describe_unencodable(args)) from None


# `BETWEEN_PARTS % (head, len(value), value, tail)` is a command whose
# argument `value` (bytes) comes between two parts already encoded.
BETWEEN_PARTS: Final = b"%s$%d\r\n%s\r\n%s"


def command_head(length: int, *args: CommandArg) -> bytes:
    """Encode the start of a command of `length` arguments: its header and `args`."""
    return b"*%d\r\n" % length + encode_arguments(*args)


def encode_arguments(*args: CommandArg) -> bytes:
    """Encode `args` as they appear inside a command, with no header."""
    if not args:
        return b""
    packed = encode_command(args)
    return packed[packed.index(b"\r\n") + 2 :]


EVALSHA_NAME: Final = b"$7\r\nEVALSHA\r\n$40\r\n"


def evalsha_as_eval(payload: bytes, scripts: Mapping[str, str]) -> bytes | None:
    """Turn an encoded EVALSHA of one of `scripts` into the same EVAL.

    `scripts` maps SHA1 digests (lower case) to sources. Returns `None`
    when `payload` is not an EVALSHA or its script is not in `scripts`.
    The keys and arguments are kept byte for byte.
    """
    name_start = payload.find(b"\r\n") + 2
    sha_start = name_start + len(EVALSHA_NAME)
    sha_end = sha_start + 40
    if payload[name_start:sha_start].upper() != EVALSHA_NAME:
        return None
    if payload[sha_end : sha_end + 2] != b"\r\n":
        return None
    source = scripts.get(payload[sha_start:sha_end].decode("ascii", "replace").lower())
    if source is None:
        return None
    body = source.encode()
    return b"%s$4\r\nEVAL\r\n$%d\r\n%s%s" % (
        payload[:name_start],
        len(body),
        body,
        payload[sha_end:],
    )


def _describe_unencodable(args: tuple[CommandArg, ...]) -> str:
    """Say which argument of a command cannot be encoded as UTF-8, and where in it."""
    command = args[0] if args and isinstance(args[0], str) else "the command"
    for position, arg in enumerate(args):
        if not isinstance(arg, str):
            continue
        try:
            arg.encode()
        except UnicodeEncodeError as exc:
            return (
                f"argument {position} of {command} is not encodable as UTF-8: "
                f"{exc.reason} at character {exc.start}"
            )
    return f"an argument of {command} is not encodable as UTF-8"


def error_from_reply(message: str) -> ReplyError:
    """Return the typed exception for an error reply's message."""
    code = message.split(" ", 1)[0]
    return ERROR_CLASSES.get(code, ReplyError)(message)


class RawError(Exception):
    """An error reply as hiredis builds it, before `typed_reply` gives it its type."""


NOT_ENOUGH_DATA: Final = object()

# The classes of raw replies that `typed_reply` changes: error replies, and
# arrays, which may hold error replies.
UNTYPED_CLASSES: Final = frozenset({RawError, list})


def raw_reader() -> hiredis.Reader:
    """Return a hiredis reader for the hot path: replies come out raw.

    A reply whose class is in UNTYPED_CLASSES needs `typed_reply`. Its
    `gets()` returns NOT_ENOUGH_DATA while no reply is complete, and raises
    `hiredis.ProtocolError` on bytes that are not RESP.
    """
    return hiredis.Reader(replyError=RawError, notEnoughData=NOT_ENOUGH_DATA)


def typed_reply(reply: Any) -> Any:
    """Turn raw error replies into typed exceptions, also inside arrays."""
    if reply.__class__ is RawError:
        return error_from_reply(str(reply))
    # The class test of every item runs in C, so an array of plain values,
    # such as the ids of `RPOP key count`, costs no Python loop.
    if reply.__class__ is list and not UNTYPED_CLASSES.isdisjoint(map(type, reply)):
        for index, item in enumerate(reply):
            if item.__class__ in UNTYPED_CLASSES:
                reply[index] = typed_reply(item)
    return reply


class ReplyParser:
    """Turn received bytes into replies.

    `parse` takes the bytes as they arrive and returns the complete
    replies. Bulk strings come out as `bytes`, integers as `int`,
    nil as `None`, arrays as `list`, and error replies as `ReplyError`
    instances (also inside arrays).
    """

    def __init__(self) -> None:
        self._reader = raw_reader()

    def parse(self, data: bytes) -> list[Any]:
        """Feed received bytes; return every reply they complete, in order.

        Raises `ProtocolError` when the bytes are not valid RESP; the
        connection cannot be used after that.
        """
        reader = self._reader
        reader.feed(data)
        replies = []
        try:
            reply = reader.gets()
            while reply is not NOT_ENOUGH_DATA:
                if reply.__class__ in UNTYPED_CLASSES:
                    reply = typed_reply(reply)
                replies.append(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            raise ProtocolError(f"invalid RESP from server: {exc}") from None
        return replies
