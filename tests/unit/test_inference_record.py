import base64
import hashlib
import json
import random
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.core.record import build_record, iso_millis, should_sample, user_key_hash
from gateway.core.routing import Routing
from tests.helpers import documented_record_fields

SECRET = b"test-secret"
RECORD_FIELDS = documented_record_fields()
# 2024-05-01T12:34:56.789Z
EPOCH = datetime(2024, 5, 1, 12, 34, 56, 789_000, tzinfo=UTC).timestamp()
JSON_BODY = b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}'


def record(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "request_id": "req-1",
        "timestamp": EPOCH,
        "endpoint": "churn",
        "model": "churn",
        "variant": "champion",
        "model_version": "3",
        "routing": "sticky",
        "split": {"champion": 90, "challenger": 10},
        "user_key_hash": user_key_hash("alice", SECRET),
        "requester": None,
        "client_request_id": None,
        "status_code": 200,
        "duration_ms": 12.3456789,
        "request_body": JSON_BODY,
        "content_type": "application/json",
        "response_body": b'{"predictions": [0.25]}',
        "error": None,
        "max_payload_bytes": None,
    }
    return build_record(**{**arguments, **overrides})


def test_record_has_exactly_the_documented_fields_in_order() -> None:
    assert "split" in RECORD_FIELDS
    assert list(record()) == RECORD_FIELDS


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        (None, b'{"client_request_id": "abc-1", "inputs": [1]}', "abc-1"),
        ("from-header", b'{"client_request_id": "abc-1", "inputs": [1]}', "from-header"),
        (None, b'{"inputs": [1]}', None),
        (None, b'{"client_request_id": 7, "inputs": [1]}', None),
        (None, b'{"client_request_id": "x", "inputs": ', None),
        (None, b'["client_request_id"]', None),
    ],
)
def test_client_request_id_comes_from_the_header_else_the_json_body(
    header: str | None, body: bytes, expected: str | None
) -> None:
    built = record(client_request_id=header, request_body=body)
    assert built["client_request_id"] == expected


def test_records_carry_the_schema_version_and_the_split_of_the_decision() -> None:
    built = record()
    assert built["schema_version"] == 2
    assert built["split"] == {"champion": 90, "challenger": 10}


def test_record_field_values_and_types() -> None:
    built = record()
    assert built["request_id"] == "req-1"
    assert (built["endpoint"], built["model"], built["variant"]) == ("churn", "churn", "champion")
    assert built["model_version"] == "3"
    assert built["routing"] == "sticky"
    assert type(built["routing"]) is str
    assert built["user_key_hash"] == user_key_hash("alice", SECRET)
    assert built["status_code"] == 200
    assert built["duration_ms"] == 12.346
    assert built["request"] == JSON_BODY.decode()
    assert built["request_encoding"] == "utf-8"
    assert built["response"] == '{"predictions": [0.25]}'
    assert built["error"] is None
    assert built["truncated"] is False


def test_record_is_json_serialisable_as_is() -> None:
    built = record()
    assert json.loads(json.dumps(built)) == built


def test_timestamp_is_iso_8601_utc_with_milliseconds() -> None:
    timestamp = record()["timestamp"]
    assert timestamp == "2024-05-01T12:34:56.789Z"
    assert datetime.fromisoformat(timestamp) == datetime.fromtimestamp(EPOCH, UTC)


def test_timestamp_keeps_milliseconds_on_a_whole_second() -> None:
    assert record(timestamp=0.0)["timestamp"] == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize("routing", [*Routing, "sticky", "random", "forced", "shadow"])
def test_routing_accepts_the_four_words(routing: str) -> None:
    assert record(routing=routing)["routing"] == str(routing)


def test_routing_rejects_other_words() -> None:
    with pytest.raises(ValueError, match="weighted"):
        record(routing="weighted")


def test_error_record_has_no_response() -> None:
    built = record(status_code=400, response_body=None, error="bad input", model_version=None)
    assert (built["status_code"], built["response"], built["error"]) == (400, None, "bad input")
    assert built["model_version"] is None


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "text/csv", "TEXT/CSV"]
)
def test_json_and_csv_requests_are_stored_as_text(content_type: str) -> None:
    built = record(request_body=b"x,y\n1,\xc3\xa9\n", content_type=content_type)
    assert (built["request"], built["request_encoding"]) == ("x,y\n1,é\n", "utf-8")


@pytest.mark.parametrize("content_type", ["application/vnd.apache.parquet", "image/png", None])
def test_parquet_and_other_binary_requests_are_stored_as_base64(content_type: str | None) -> None:
    body = b"PAR1\x00\xff\x15\x04binary"
    built = record(request_body=body, content_type=content_type)
    assert built["request_encoding"] == "base64"
    assert base64.b64decode(built["request"]) == body


def test_a_text_request_that_is_not_utf8_is_stored_as_base64() -> None:
    built = record(request_body=b"\xff\xfe", content_type="text/csv")
    assert built["request_encoding"] == "base64"
    assert base64.b64decode(built["request"]) == b"\xff\xfe"


def test_bodies_within_the_cap_are_not_truncated() -> None:
    built = record(max_payload_bytes=len(JSON_BODY))
    assert built["request"] == JSON_BODY.decode()
    assert built["truncated"] is False


def test_request_over_the_cap_is_cut_and_flagged() -> None:
    built = record(max_payload_bytes=10)
    assert built["request"] == JSON_BODY[:10].decode()
    assert built["truncated"] is True


def test_response_over_the_cap_is_cut_and_flagged() -> None:
    built = record(
        response_body=b'{"predictions": [' + b"0.5, " * 100 + b"0.5]}", max_payload_bytes=200
    )
    assert len(built["response"].encode()) == 200
    assert built["request"] == JSON_BODY.decode()
    assert built["truncated"] is True


# "é" is 2 bytes, "€" 3, "😀" 4: every cut inside a character must drop that character whole.
@pytest.mark.parametrize("character", ["é", "€", "😀"])
@pytest.mark.parametrize("limit", range(1, 13))
def test_truncation_never_splits_a_utf8_character(character: str, limit: int) -> None:
    text = "a" + character * 5
    built = record(request_body=text.encode(), response_body=text.encode(), max_payload_bytes=limit)
    for stored in (built["request"], built["response"]):
        assert "\ufffd" not in stored
        assert text.startswith(stored)
        assert len(stored.encode()) <= limit
        # Nothing is lost but the one character the cut went through.
        assert limit - len(stored.encode()) < len(character.encode())


def test_binary_request_is_cut_before_base64() -> None:
    body = bytes(range(256))
    built = record(
        request_body=body, content_type="application/vnd.apache.parquet", max_payload_bytes=100
    )
    assert base64.b64decode(built["request"]) == body[:100]
    assert built["truncated"] is True


def test_user_key_hash_is_32_hex_digits_and_never_the_key() -> None:
    hashed = user_key_hash("alice", SECRET)
    assert re.fullmatch(r"[0-9a-f]{32}", hashed)
    assert "alice" not in hashed


def test_user_key_hash_is_stable_for_a_secret() -> None:
    assert user_key_hash("alice", SECRET) == user_key_hash("alice", SECRET)
    assert user_key_hash("alice", SECRET) != user_key_hash("bob", SECRET)


def test_user_key_hash_depends_on_the_secret() -> None:
    assert user_key_hash("alice", b"one secret") != user_key_hash("alice", b"another secret")


def test_user_key_hash_is_not_a_plain_hash_of_the_key() -> None:
    plain = {
        hashlib.sha256(b"alice").hexdigest()[:32],
        hashlib.md5(b"alice").hexdigest(),
        hashlib.blake2b(b"alice", digest_size=16).hexdigest(),
    }
    assert user_key_hash("alice", SECRET) not in plain


REQUEST_IDS = [f"request-{i}" for i in range(10_000)]


def test_rate_one_keeps_every_request_and_zero_none() -> None:
    assert all(should_sample(request_id, 1.0) for request_id in REQUEST_IDS)
    assert not any(should_sample(request_id, 0.0) for request_id in REQUEST_IDS)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_outside_zero_to_one_is_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        should_sample("request-1", rate)


def test_sampling_is_a_function_of_the_request_id() -> None:
    first = [should_sample(request_id, 0.3) for request_id in REQUEST_IDS]
    assert first == [should_sample(request_id, 0.3) for request_id in REQUEST_IDS]


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_sampling_keeps_about_the_rate(rate: float) -> None:
    kept = sum(should_sample(request_id, rate) for request_id in REQUEST_IDS)
    # Binomial(10,000, rate): 5 standard deviations; the ids are fixed, so the count is too.
    tolerance = 5 * (len(REQUEST_IDS) * rate * (1 - rate)) ** 0.5
    assert abs(kept - len(REQUEST_IDS) * rate) <= tolerance


def test_a_higher_rate_keeps_every_request_a_lower_rate_kept() -> None:
    low = {request_id for request_id in REQUEST_IDS if should_sample(request_id, 0.1)}
    high = {request_id for request_id in REQUEST_IDS if should_sample(request_id, 0.4)}
    assert low <= high


def test_record_timestamps_are_what_datetime_writes() -> None:
    rng = random.Random(11)
    stamps = [0.0, 1.0, 0.9995, 0.0005, 1_764_563_777.9999996, 1_764_563_777.0004999]
    stamps += [rng.uniform(0, 4e9) for _ in range(20_000)]
    stamps += [round(rng.uniform(1.7e9, 1.8e9), 3) for _ in range(20_000)]
    for stamp in stamps:
        expected = (
            datetime.fromtimestamp(stamp, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        assert iso_millis(stamp) == expected, stamp
