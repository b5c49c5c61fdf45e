"""Hash slots of Valkey Cluster, and which arguments of a command are keys.

Valkey Cluster splits the key space into 16384 slots. A key's slot is the
CRC16 (the XMODEM variant: polynomial 0x1021, initial value 0) of the key,
modulo 16384. A hash tag is a ``{`` followed later by a ``}`` with at least
one byte between them. When a key contains one, only the bytes between the
first ``{`` and the first ``}`` after it are hashed, so ``{user1}:a`` and
``{user1}:b`` share a slot.

`route` tells the cluster connection where a command must go: to the
primary that owns one slot, to any node, or to every primary. It knows the
commands the providers send, and treats any other command with arguments
as keyed by its first argument.
"""

from __future__ import annotations

import binascii
import enum
from typing import Final

from .resp import CommandArg

SLOT_COUNT: Final = 16384


class Target(enum.Enum):
    """The destination of a command that no single key routes."""

    ANY_NODE = "any node"
    EVERY_PRIMARY = "every primary"


def key_slot(key: str | bytes) -> int:
    """Return the hash slot (0 to 16383) of `key`, honouring a hash tag.

    A `str` key is hashed as UTF-8; one that cannot be encoded raises
    `ValueError`.
    """
    return _slot_of(_key_bytes(key))


def _slot_of(raw: bytes) -> int:
    """Return the hash slot of a key given as bytes."""
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOT_COUNT


# Commands whose reply does not depend on a key. PUBLISH may go to any node
# because the cluster bus delivers every message to the subscribers of all
# nodes.
KEYLESS_COMMANDS: Final = frozenset(
    {
        "ASKING",
        "AUTH",
        "CLIENT",
        "CLUSTER",
        "COMMAND",
        "CONFIG",
        "DBSIZE",
        "ECHO",
        "HELLO",
        "INFO",
        "LASTSAVE",
        "PING",
        "PUBLISH",
        "PUBSUB",
        "ROLE",
        "SCRIPT",
        "TIME",
    }
)

# Script commands: KEYS start after the script (or its SHA1) and numkeys.
SCRIPT_COMMANDS: Final = frozenset(
    {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"}
)

# Subcommands of SCRIPT that change the script cache, so every primary
# must run them.
EVERY_PRIMARY_SCRIPT_SUBCOMMANDS: Final = frozenset({"LOAD", "FLUSH"})


def route(args: tuple[CommandArg, ...]) -> int | Target:
    """Return the slot of the key that decides where `args` runs, or a `Target`.

    Raises `ValueError` for a script command whose numkeys is missing or
    not an integer.
    """
    if not args:
        raise ValueError("a command needs at least its name")
    name = _command_name(args[0])
    if name in SCRIPT_COMMANDS:
        return _script_route(args)
    if name in KEYLESS_COMMANDS:
        changes_scripts = (
            name == "SCRIPT"
            and len(args) > 1
            and _command_name(args[1]) in EVERY_PRIMARY_SCRIPT_SUBCOMMANDS
        )
        return Target.EVERY_PRIMARY if changes_scripts else Target.ANY_NODE
    if len(args) < 2:
        return Target.ANY_NODE
    return _slot_of(_key_bytes(args[1]))


def _script_route(args: tuple[CommandArg, ...]) -> int | Target:
    """Route EVAL, EVALSHA and FCALL by their first key, if they have one."""
    if len(args) < 3:
        raise ValueError(f"{_command_name(args[0])} needs a script and numkeys")
    try:
        numkeys = int(args[2])
    except (TypeError, ValueError):
        raise ValueError(
            f"{_command_name(args[0])} numkeys must be an integer, got {args[2]!r}"
        ) from None
    if numkeys < 1 or len(args) < 4:
        return Target.ANY_NODE
    return _slot_of(_key_bytes(args[3]))


def _command_name(arg: CommandArg) -> str:
    """Return a command or subcommand name in upper case."""
    if isinstance(arg, bytes):
        return arg.decode(errors="replace").upper()
    return str(arg).upper()


def _key_bytes(arg: CommandArg) -> bytes:
    """Return a key as the bytes the server hashes."""
    if isinstance(arg, bytes):
        return arg
    try:
        return str(arg).encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"key is not encodable as UTF-8: {exc.reason}") from None
