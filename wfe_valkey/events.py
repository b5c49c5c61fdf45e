"""Lifecycle events and their JSON, exactly as the Rust crate writes it.

The Rust side serializes with serde's defaults: compact JSON with the fields
in declaration order, non-ASCII text as raw UTF-8, and the event type as an
externally tagged enum (``"Started"``, or ``{"Error":{"message":"..."}}``).
Timestamps are RFC 3339 in UTC with a ``Z`` and a fraction of 0, 3, 6 or 9
digits, the shortest that represents the nanoseconds exactly. An event read from a Rust
host's payload therefore writes back byte for byte the same text.

Time is kept as integer nanoseconds since the Unix epoch, because Python's
`datetime` stops at microseconds and Rust hosts send nanoseconds.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring
from typing import Any, ClassVar, Final

NANOS_PER_SECOND: Final = 1_000_000_000
MAX_U32: Final = 4_294_967_295
MAX_U64: Final = 18_446_744_073_709_551_615
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
JSON_NAMES: Final[dict[type, str]] = {str: "string", int: "integer"}
MIN_TIME_NS: Final = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1) * 1000
MAX_TIME_NS: Final = (
    (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - EPOCH)
    // timedelta(seconds=1)
    * NANOS_PER_SECOND
    + NANOS_PER_SECOND
    - 1
)


class InvalidEventError(ValueError):
    """A lifecycle event payload is not valid JSON of the expected shape."""


# Event types. Unit variants serialize as their bare name; variants with
# data as a one-key object named for the variant.


@dataclass(frozen=True)
class LifecycleEventType:
    """Base class of the event types; match on the subclasses."""

    tag: ClassVar[str] = ""

    def to_json_value(self) -> Any:
        """Return the value serde writes for this variant."""
        return self.tag


@dataclass(frozen=True)
class Started(LifecycleEventType):
    """The workflow started."""

    tag: ClassVar[str] = "Started"


@dataclass(frozen=True)
class Resumed(LifecycleEventType):
    """The workflow resumed after a suspension."""

    tag: ClassVar[str] = "Resumed"


@dataclass(frozen=True)
class Suspended(LifecycleEventType):
    """The workflow was suspended."""

    tag: ClassVar[str] = "Suspended"


@dataclass(frozen=True)
class Completed(LifecycleEventType):
    """The workflow completed."""

    tag: ClassVar[str] = "Completed"


@dataclass(frozen=True)
class Terminated(LifecycleEventType):
    """The workflow was terminated."""

    tag: ClassVar[str] = "Terminated"


@dataclass(frozen=True)
class Error(LifecycleEventType):
    """The workflow failed with `message`."""

    tag: ClassVar[str] = "Error"
    message: str = ""

    def to_json_value(self) -> Any:
        return {"Error": {"message": self.message}}


@dataclass(frozen=True)
class StepStarted(LifecycleEventType):
    """A step started; `step_name` is `None` for unnamed steps."""

    tag: ClassVar[str] = "StepStarted"
    step_id: int = 0
    step_name: str | None = None

    def to_json_value(self) -> Any:
        return {self.tag: {"step_id": self.step_id, "step_name": self.step_name}}


@dataclass(frozen=True)
class StepCompleted(LifecycleEventType):
    """A step completed; `step_name` is `None` for unnamed steps."""

    tag: ClassVar[str] = "StepCompleted"
    step_id: int = 0
    step_name: str | None = None

    def to_json_value(self) -> Any:
        return {self.tag: {"step_id": self.step_id, "step_name": self.step_name}}


UNIT_TYPES: Final[dict[str, LifecycleEventType]] = {
    cls.tag: cls() for cls in (Started, Resumed, Suspended, Completed, Terminated)
}


@dataclass(frozen=True)
class LifecycleEvent:
    """A change in one workflow's state, as WFE broadcasts it.

    `event_time_ns` is the event's time in nanoseconds since the Unix
    epoch, UTC; `event_time_utc` gives it as a `datetime` (microseconds).
    """

    workflow_instance_id: str
    workflow_definition_id: str
    version: int
    event_type: LifecycleEventType
    reference: str | None = None
    event_time_ns: int = field(default_factory=time.time_ns)

    def __post_init__(self) -> None:
        _check_str("workflow_instance_id", self.workflow_instance_id)
        _check_str("workflow_definition_id", self.workflow_definition_id)
        _check_int("version", self.version, MAX_U32)
        if self.reference is not None:
            _check_str("reference", self.reference)
        _check_event_type(self.event_type)
        _check_time(self.event_time_ns)

    @classmethod
    def new(
        cls,
        workflow_instance_id: str,
        workflow_definition_id: str,
        version: int,
        event_type: LifecycleEventType,
    ) -> LifecycleEvent:
        """Create an event stamped with the current time and no reference."""
        return cls(workflow_instance_id, workflow_definition_id, version, event_type)

    @property
    def event_time_utc(self) -> datetime:
        """The event's time as an aware UTC `datetime`, cut to microseconds."""
        return EPOCH + timedelta(microseconds=self.event_time_ns // 1000)

    def to_json(self) -> str:
        """Serialize exactly as the Rust crate does."""
        reference = "null" if self.reference is None else encode_basestring(self.reference)
        event_type = _dump(self.event_type.to_json_value())
        return (
            f'{{"event_time_utc":"{format_timestamp(self.event_time_ns)}",'
            f'"workflow_instance_id":{encode_basestring(self.workflow_instance_id)},'
            f'"workflow_definition_id":{encode_basestring(self.workflow_definition_id)},'
            f'"version":{self.version},'
            f'"reference":{reference},'
            f'"event_type":{event_type}}}'
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LifecycleEvent:
        """Parse a payload written by this library or by a Rust host.

        Fields may come in any order, unknown fields are ignored, and a
        missing `reference` is `None`. Raises `InvalidEventError` naming
        the field that is missing or wrong.
        """
        document = _load_object(text)
        try:
            return cls(
                event_time_ns=parse_timestamp(_field(document, "event_time_utc", str)),
                workflow_instance_id=_field(document, "workflow_instance_id", str),
                workflow_definition_id=_field(document, "workflow_definition_id", str),
                version=_field(document, "version", int),
                reference=document.get("reference"),
                event_type=_parse_event_type(_field(document, "event_type", object)),
            )
        except InvalidEventError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidEventError(f"invalid lifecycle event: {exc}") from None


def _load_object(text: str | bytes) -> dict[str, Any]:
    """Decode the payload (UTF-8 when bytes) into a JSON object.

    Duplicate keys are rejected, as serde rejects a field given twice.
    Nesting too deep for the parser is reported as invalid JSON.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEventError(f"lifecycle event is not valid UTF-8: {exc.reason}") from None
    try:
        document = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except RecursionError:
        raise InvalidEventError("lifecycle event is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, InvalidEventError):
            raise
        raise InvalidEventError(f"lifecycle event is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidEventError(
            f"lifecycle event must be a JSON object, got {type(document).__name__}"
        )
    return document


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise InvalidEventError(f"lifecycle event has the field {key!r} twice")
        document[key] = value
    return document


def _dump(value: Any) -> str:
    """Write compact JSON with raw UTF-8, as serde does."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    """Return a required field, checking its JSON type."""
    if name not in document:
        raise InvalidEventError(f"lifecycle event has no {name!r} field")
    value = document[name]
    if kind is not object and (not isinstance(value, kind) or isinstance(value, bool)):
        raise InvalidEventError(
            f"lifecycle event field {name!r} must be a JSON {JSON_NAMES[kind]}, "
            f"got {_dump(value)[:40]}"
        )
    return value


def _parse_event_type(value: Any) -> LifecycleEventType:
    """Read the externally tagged event type."""
    if isinstance(value, str):
        if value in UNIT_TYPES:
            return UNIT_TYPES[value]
        raise InvalidEventError(f"unknown event_type {value!r}")
    if not isinstance(value, dict) or len(value) != 1:
        raise InvalidEventError(
            f"event_type must be a variant name or an object with one key, got {_dump(value)[:80]}"
        )

    ((tag, body),) = value.items()
    if not isinstance(body, dict):
        raise InvalidEventError(f"event_type {tag!r} must hold an object")
    if tag == "Error":
        return Error(message=_field(body, "message", str))
    if tag in ("StepStarted", "StepCompleted"):
        step_class = StepStarted if tag == "StepStarted" else StepCompleted
        return step_class(step_id=_field(body, "step_id", int), step_name=body.get("step_name"))
    raise InvalidEventError(f"unknown event_type {tag!r}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name} is not encodable as UTF-8: {exc.reason}") from None


def _check_int(name: str, value: object, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be from 0 to {maximum}, got {value}")


def _check_time(nanos: object) -> None:
    if not isinstance(nanos, int) or isinstance(nanos, bool):
        raise TypeError(f"event_time_ns must be an int, got {type(nanos).__name__}")
    if not MIN_TIME_NS <= nanos <= MAX_TIME_NS:
        raise ValueError(
            f"event_time_ns {nanos} is outside the years 0001 to 9999 that RFC 3339 can write"
        )


def _check_event_type(event_type: object) -> None:
    """Check the event type and the fields of its variant."""
    if not isinstance(event_type, LifecycleEventType) or type(event_type) is LifecycleEventType:
        raise TypeError(
            "event_type must be one of the event types in wfe_valkey.events, "
            f"got {type(event_type).__name__}"
        )
    if isinstance(event_type, Error):
        _check_str("message", event_type.message)
    if isinstance(event_type, (StepStarted, StepCompleted)):
        _check_int("step_id", event_type.step_id, MAX_U64)
        if event_type.step_name is not None:
            _check_str("step_name", event_type.step_name)


# Timestamps

TIMESTAMP: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def format_timestamp(nanos: int) -> str:
    """Write RFC 3339 UTC with the shortest of 0, 3, 6 or 9 fraction digits."""
    seconds, fraction = divmod(nanos, NANOS_PER_SECOND)
    moment = EPOCH + timedelta(seconds=seconds)
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if fraction == 0:
        return text + "Z"
    if fraction % 1_000_000 == 0:
        return f"{text}.{fraction // 1_000_000:03d}Z"
    if fraction % 1000 == 0:
        return f"{text}.{fraction // 1000:06d}Z"
    return f"{text}.{fraction:09d}Z"


def parse_timestamp(text: str) -> int:
    """Read an RFC 3339 timestamp into nanoseconds since the epoch, UTC.

    Digits of the fraction beyond nanoseconds are dropped. Raises
    `InvalidEventError` when the text is not RFC 3339.
    """
    match = TIMESTAMP.fullmatch(text)
    if match is None:
        raise InvalidEventError(f"event_time_utc {text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise InvalidEventError(f"event_time_utc {text!r} is not a valid time: {exc}") from None

    whole = (moment - EPOCH) // timedelta(seconds=1)
    if offset not in ("Z", "z"):
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise InvalidEventError(f"event_time_utc {text!r} has an invalid offset {offset}")
        sign = 1 if offset[0] == "+" else -1
        whole -= sign * (hours * 3600 + minutes * 60)
    nanos = whole * NANOS_PER_SECOND + int((fraction or "").ljust(9, "0")[:9])
    if not MIN_TIME_NS <= nanos <= MAX_TIME_NS:
        raise InvalidEventError(f"event_time_utc {text!r} is outside the years 0001 to 9999")
    return nanos
