"""Lifecycle event JSON: byte for byte what the Rust crate writes and reads."""

from __future__ import annotations

import json
import time

import pytest

from wfe_valkey import InvalidEventError, LifecycleEvent, events
from wfe_valkey.events import format_timestamp, parse_timestamp

RUST_STARTED = (
    '{"event_time_utc":"2026-12-04T19:06:05.123456789Z","workflow_instance_id":"wf-1",'
    '"workflow_definition_id":"def-1","version":1,"reference":null,"event_type":"Started"}'
)

RUST_PAYLOADS = [
    RUST_STARTED,
    '{"event_time_utc":"2026-12-04T19:06:05Z","workflow_instance_id":"wf-2",'
    '"workflow_definition_id":"orders","version":4294967295,"reference":"order-77",'
    '"event_type":"Completed"}',
    '{"event_time_utc":"2026-01-31T00:00:00.500Z","workflow_instance_id":"wf-3",'
    '"workflow_definition_id":"d","version":0,"reference":null,'
    '"event_type":{"Error":{"message":"step \\"pay\\" failed:\\n\\ttimeout \\u001f"}}}',
    '{"event_time_utc":"1999-12-31T23:59:59.000001Z","workflow_instance_id":"wf-4",'
    '"workflow_definition_id":"d","version":2,"reference":null,'
    '"event_type":{"StepStarted":{"step_id":3,"step_name":"ProcessOrder"}}}',
    '{"event_time_utc":"2026-12-04T19:06:05.100200300Z","workflow_instance_id":"wf-ü-日本",'
    '"workflow_definition_id":"d","version":2,"reference":null,'
    '"event_type":{"StepCompleted":{"step_id":18446744073709551615,"step_name":null}}}',
    '{"event_time_utc":"2026-12-04T19:06:05.120Z","workflow_instance_id":"wf-5",'
    '"workflow_definition_id":"d","version":1,"reference":null,"event_type":"Resumed"}',
    '{"event_time_utc":"2026-12-04T19:06:05.123400Z","workflow_instance_id":"wf-6",'
    '"workflow_definition_id":"d","version":1,"reference":null,"event_type":"Suspended"}',
    '{"event_time_utc":"2026-12-04T19:06:05Z","workflow_instance_id":"wf-7",'
    '"workflow_definition_id":"d","version":1,"reference":null,"event_type":"Terminated"}',
]


@pytest.mark.parametrize("payload", RUST_PAYLOADS)
def test_rust_payload_writes_back_byte_for_byte(payload: str) -> None:
    event = LifecycleEvent.from_json(payload)

    assert event.to_json() == payload


def test_rust_example_parses_to_expected_fields() -> None:
    event = LifecycleEvent.from_json(RUST_STARTED)

    assert event.workflow_instance_id == "wf-1"
    assert event.workflow_definition_id == "def-1"
    assert event.version == 1
    assert event.reference is None
    assert event.event_type == events.Started()
    assert event.event_time_ns == 1_796_411_165_123_456_789


def test_data_variants_parse_to_their_classes() -> None:
    error = LifecycleEvent.from_json(RUST_PAYLOADS[2]).event_type
    started = LifecycleEvent.from_json(RUST_PAYLOADS[3]).event_type
    completed = LifecycleEvent.from_json(RUST_PAYLOADS[4]).event_type

    assert error == events.Error(message='step "pay" failed:\n\ttimeout \x1f')
    assert started == events.StepStarted(step_id=3, step_name="ProcessOrder")
    assert completed == events.StepCompleted(step_id=18446744073709551615, step_name=None)


def test_non_ascii_is_written_as_raw_utf8() -> None:
    event = LifecycleEvent("wf-ü", "定义", 1, events.Started(), event_time_ns=0)

    assert event.to_json() == (
        '{"event_time_utc":"1970-01-01T00:00:00Z","workflow_instance_id":"wf-ü",'
        '"workflow_definition_id":"定义","version":1,"reference":null,"event_type":"Started"}'
    )


def test_control_characters_use_serde_escapes() -> None:
    event = LifecycleEvent(
        "wf", "d", 1, events.Error(message='a"b\\c\nd\re\tf\bg\fh\x01i\x7f'), event_time_ns=0
    )

    assert '"message":"a\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\x7f"' in event.to_json()


def test_fields_in_any_order_and_unknown_fields_are_accepted() -> None:
    payload = (
        '{"event_type":"Completed","extra":[1,2],"version":3,"reference":"r",'
        '"workflow_definition_id":"d","workflow_instance_id":"wf",'
        '"event_time_utc":"2026-12-04T19:06:05.123Z"}'
    )

    event = LifecycleEvent.from_json(payload)

    assert event.to_json() == (
        '{"event_time_utc":"2026-12-04T19:06:05.123Z","workflow_instance_id":"wf",'
        '"workflow_definition_id":"d","version":3,"reference":"r","event_type":"Completed"}'
    )


def test_missing_reference_reads_as_none() -> None:
    payload = (
        '{"event_time_utc":"2026-12-04T19:06:05Z","workflow_instance_id":"wf",'
        '"workflow_definition_id":"d","version":1,"event_type":"Started"}'
    )

    assert LifecycleEvent.from_json(payload).reference is None


def test_offset_timestamps_convert_to_utc() -> None:
    assert parse_timestamp("2026-12-04T21:06:05.5+02:00") == parse_timestamp(
        "2026-12-04T19:06:05.500Z"
    )


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_000_000, "1970-01-01T00:00:00.001Z"),
        (1_000, "1970-01-01T00:00:00.000001Z"),
        (1, "1970-01-01T00:00:00.000000001Z"),
        (120_000_000, "1970-01-01T00:00:00.120Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
    ],
)
def test_format_timestamp_uses_shortest_of_0_3_6_9_digits(nanos: int, text: str) -> None:
    assert format_timestamp(nanos) == text
    assert parse_timestamp(text) == nanos


def test_new_event_carries_current_time_with_nanoseconds() -> None:
    before = time.time_ns()
    event = LifecycleEvent.new("wf", "d", 1, events.Started())
    after = time.time_ns()

    assert before <= event.event_time_ns <= after
    assert event.reference is None
    text = json.loads(event.to_json())["event_time_utc"]
    assert parse_timestamp(text) == event.event_time_ns
    assert text.endswith("Z")


def test_event_time_utc_is_an_aware_datetime() -> None:
    event = LifecycleEvent.from_json(RUST_STARTED)

    assert event.event_time_utc.isoformat() == "2026-12-04T19:06:05.123456+00:00"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"workflow_instance_id":"wf"}', "no 'event_time_utc' field"),
        (
            RUST_STARTED.replace('"version":1', '"version":"1"'),
            "'version' must be a JSON integer, got \"1\"",
        ),
        (RUST_STARTED.replace('"version":1', '"version":4294967296'), "version must be from 0"),
        (RUST_STARTED.replace('"Started"', '"Exploded"'), "unknown event_type 'Exploded'"),
        (RUST_STARTED.replace("2026-12-04T19", "2026-13-04T19"), "not a valid time"),
        (RUST_STARTED.replace("2026-12-04T19", "yesterday"), "not an RFC 3339 timestamp"),
        (RUST_STARTED.replace('"reference":null', '"reference":5'), "reference must be a str"),
        (RUST_STARTED.replace('"Started"', '{"Error":{}}'), "no 'message' field"),
    ],
)
def test_invalid_payload_raises_invalid_event_error(payload: str, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        LifecycleEvent.from_json(payload)


def test_invalid_event_error_is_a_value_error() -> None:
    assert issubclass(InvalidEventError, ValueError)


def test_constructor_rejects_wrong_types() -> None:
    with pytest.raises(TypeError, match="workflow_instance_id must be a str"):
        LifecycleEvent(1, "d", 1, events.Started())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="event_type must be one of the event types"):
        LifecycleEvent("wf", "d", 1, "Started")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version must be from 0 to 4294967295"):
        LifecycleEvent("wf", "d", -1, events.Started())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (
            RUST_STARTED.replace('"reference":null', '"reference":null,"x":' + "[" * 100_000),
            "not valid JSON",
        ),
        (
            RUST_STARTED.replace("2026-12-04T19:06:05.123456789Z", "9999-12-31T23:59:59-01:00"),
            "outside the years 0001 to 9999",
        ),
        (
            RUST_STARTED.replace("2026-12-04T19:06:05.123456789Z", "0001-01-01T00:00:00+01:00"),
            "outside the years 0001 to 9999",
        ),
        (
            RUST_STARTED.replace("2026-12-04T19:06:05.123456789Z", "2026-12-04T19:06:05+99:99"),
            "invalid offset",
        ),
        (RUST_STARTED.replace("2026-", "٢٠٢٦-"), "not an RFC 3339 timestamp"),
        (RUST_STARTED.replace('"wf-1"', '"\\ud800"'), "not encodable as UTF-8"),
        (RUST_STARTED.replace('"version":1', '"version":1,"version":2'), "'version' twice"),
    ],
)
def test_hostile_payload_raises_invalid_event_error(payload: str, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        LifecycleEvent.from_json(payload)


def test_utf16_bytes_are_rejected() -> None:
    with pytest.raises(InvalidEventError, match="not valid UTF-8"):
        LifecycleEvent.from_json(RUST_STARTED.encode("utf-16"))


def test_utf8_bytes_parse() -> None:
    assert LifecycleEvent.from_json(RUST_STARTED.encode()).to_json() == RUST_STARTED


def test_extreme_years_write_four_digits() -> None:
    first = parse_timestamp("0001-01-01T00:00:00Z")
    last = parse_timestamp("9999-12-31T23:59:59.999999999Z")

    assert format_timestamp(first) == "0001-01-01T00:00:00Z"
    assert format_timestamp(last) == "9999-12-31T23:59:59.999999999Z"


def test_constructor_rejects_time_beyond_year_9999() -> None:
    with pytest.raises(ValueError, match="outside the years 0001 to 9999"):
        LifecycleEvent("wf", "d", 1, events.Started(), event_time_ns=10**30)
