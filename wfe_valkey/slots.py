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


class _Kind(enum.Enum):
    """Routing rule for a command name."""

    KEYED = "keyed by its first argument"
    SCRIPT = "keyed by its first KEYS argument"
    SCRIPT_ADMIN = "SCRIPT and a subcommand"
    KEYLESS = "any node"


# Command names as callers spell them (str or bytes, any case), mapped to
# how they are routed. Filled as names are seen; MAX_CACHED_NAMES bounds it.
_kinds: dict[CommandArg, _Kind] = {}
MAX_CACHED_NAMES: Final = 1024

# Slots of recently routed str and bytes keys. The providers route the same
# few queue keys over and over, so the cache saves the hashing. It is
# emptied when it reaches MAX_CACHED_SLOTS entries.
_slots: dict[CommandArg, int] = {}
MAX_CACHED_SLOTS: Final = 4096


def route(args: tuple[CommandArg, ...]) -> int | Target:
    """Return the slot of the key that decides where `args` runs, or a `Target`.

    Raises `ValueError` for a script command whose numkeys is missing or
    not an integer, and for a key that cannot be encoded.
    """
    if not args:
        raise ValueError("a command needs at least its name")
    kind = _kinds.get(args[0])
    if kind is None:
        kind = _learn_kind(args[0])

    if kind is _Kind.KEYED:
        if len(args) < 2:
            return Target.ANY_NODE
        return cached_key_slot(args[1])
    if kind is _Kind.SCRIPT:
        return _script_route(args)
    if kind is _Kind.SCRIPT_ADMIN:
        changes_scripts = (
            len(args) > 1 and _command_name(args[1]) in EVERY_PRIMARY_SCRIPT_SUBCOMMANDS
        )
        return Target.EVERY_PRIMARY if changes_scripts else Target.ANY_NODE
    return Target.ANY_NODE


def cached_key_slot(key: CommandArg) -> int:
    """Return the hash slot of `key`, remembered for the next call with the same key."""
    slot = _slots.get(key)
    return _cache_slot(key) if slot is None else slot


def _learn_kind(arg: CommandArg) -> _Kind:
    """Classify a command name and remember it."""
    name = _command_name(arg)
    if name in SCRIPT_COMMANDS:
        kind = _Kind.SCRIPT
    elif name == "SCRIPT":
        kind = _Kind.SCRIPT_ADMIN
    elif name in KEYLESS_COMMANDS:
        kind = _Kind.KEYLESS
    else:
        kind = _Kind.KEYED
    if len(_kinds) < MAX_CACHED_NAMES:
        _kinds[arg] = kind
    return kind


def _cache_slot(key: CommandArg) -> int:
    """Compute a key's slot and remember it when the key is a str or bytes."""
    slot = _slot_of(_key_bytes(key))
    if isinstance(key, (str, bytes)):
        if len(_slots) >= MAX_CACHED_SLOTS:
            _slots.clear()
        _slots[key] = slot
    return slot


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
