"""The RESP layer on its own: encoding, parsing and typed error replies."""

from __future__ import annotations

import pytest

from wfe_valkey.errors import (
    AuthenticationError,
    BusyError,
    LoadingError,
    NoScriptError,
    ProtocolError,
    ReadOnlyError,
    ReplyError,
    WrongTypeError,
)
from wfe_valkey.resp import (
    BETWEEN_PARTS,
    ReplyParser,
    command_head,
    encode_arguments,
    encode_command,
    error_from_reply,
    evalsha_as_eval,
)

SCRIPT = "return redis.call('get', KEYS[1])"
SCRIPT_SHA = "4e6d8fc8bb01276962cce5371fa795a7763657ae"


def test_encode_command_writes_bulk_strings() -> None:
    payload = encode_command(("SET", "key", "välue", 30, 1.5))

    assert payload == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nkey\r\n$6\r\nv\xc3\xa4lue\r\n$2\r\n30\r\n$3\r\n1.5\r\n"
    )


def test_encode_command_keeps_bytes_unchanged() -> None:
    assert encode_command((b"GET", b"\x00\xff")) == b"*2\r\n$3\r\nGET\r\n$2\r\n\x00\xff\r\n"


def test_encode_command_rejects_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="not encodable as UTF-8"):
        encode_command(("SET", "\udc80", "x"))


def test_encoded_parts_make_the_whole_command() -> None:
    head = command_head(6, "SET")
    tail = encode_arguments("token", "NX", "PX", 30000)

    payload = BETWEEN_PARTS % (head, len(b"p:lock:r\xc3\xa4"), b"p:lock:r\xc3\xa4", tail)

    assert payload == encode_command(("SET", "p:lock:rä", "token", "NX", "PX", 30000))


def test_encode_no_arguments_is_empty() -> None:
    assert encode_arguments() == b""


def test_known_evalsha_becomes_eval() -> None:
    payload = encode_command(("evalsha", SCRIPT_SHA.upper(), 1, "k\r\n", "arg"))

    assert evalsha_as_eval(payload, {SCRIPT_SHA: SCRIPT}) == encode_command(
        ("EVAL", SCRIPT, 1, "k\r\n", "arg")
    )


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "0" * 40, 1, "k"),
        ("EVAL", SCRIPT, 1, "k"),
        ("GET", "EVALSHA"),
        ("EVALSHA", SCRIPT_SHA + "0", 1, "k"),
    ],
    ids=["unknown script", "already eval", "other command", "longer digest"],
)
def test_evalsha_as_eval_leaves_others(command: tuple[str | int, ...]) -> None:
    assert evalsha_as_eval(encode_command(command), {SCRIPT_SHA: SCRIPT}) is None


def test_parse_returns_replies_in_order() -> None:
    parser = ReplyParser()

    replies = parser.parse(b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n")

    assert replies == [b"OK", 42, b"abc", None, [b"a", 1]]


def test_parse_waits_for_a_reply_split_across_reads() -> None:
    parser = ReplyParser()

    first = parser.parse(b"$5\r\nhel")
    second = parser.parse(b"lo\r\n:7")
    third = parser.parse(b"\r\n")

    assert first == []
    assert second == [b"hello"]
    assert third == [7]


def test_parse_returns_error_replies_as_typed_exceptions() -> None:
    parser = ReplyParser()

    [reply] = parser.parse(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")

    assert type(reply) is NoScriptError
    assert str(reply) == "NOSCRIPT No matching script. Please use EVAL."
    assert reply.code == "NOSCRIPT"


def test_parse_types_errors_inside_arrays() -> None:
    parser = ReplyParser()

    [reply] = parser.parse(b"*2\r\n:1\r\n-WRONGTYPE Operation against a key\r\n")

    assert reply[0] == 1
    assert type(reply[1]) is WrongTypeError


def test_parse_rejects_invalid_resp() -> None:
    parser = ReplyParser()

    with pytest.raises(ProtocolError, match="invalid RESP"):
        parser.parse(b"?what\r\n")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("NOSCRIPT No matching script", NoScriptError),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", WrongTypeError),
        ("NOAUTH Authentication required.", AuthenticationError),
        ("WRONGPASS invalid username-password pair or user is disabled.", AuthenticationError),
        ("NOPERM User alice has no permissions to run the 'set' command", AuthenticationError),
        ("LOADING Valkey is loading the dataset in memory", LoadingError),
        ("READONLY You can't write against a read only replica.", ReadOnlyError),
        ("BUSY Valkey is busy running a script.", BusyError),
        ("ERR unknown command 'FOO'", ReplyError),
    ],
)
def test_error_from_reply_picks_class_by_first_word(
    message: str, expected: type[ReplyError]
) -> None:
    error = error_from_reply(message)

    assert type(error) is expected
    assert str(error) == message
    assert error.code == message.split(" ")[0]
