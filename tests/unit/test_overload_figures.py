"""The overload benchmark's arithmetic: the gateway's histograms over a phase, and the matching
of served requests with their inference-log records."""

import argparse
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks.gatewaybench.overload import (
    PREDICT_HISTOGRAM,
    QUEUE_HISTOGRAM,
    Answers,
    _difference,
    cpu_list,
    parse_histograms,
    worker_durations,
)

BUCKETS = (0.01, 0.05, 0.1)


def _exposition(queue_seconds: dict[str, list[float]]) -> str:
    """What a gateway's /metrics says after these queue waits, by variant (prometheus-client's
    own exposition, as the gateway's is)."""
    registry = CollectorRegistry()
    queue = Histogram(
        QUEUE_HISTOGRAM.removesuffix("_seconds"),
        "queue",
        ["variant"],
        unit="seconds",
        buckets=BUCKETS,
        registry=registry,
    )
    Histogram(PREDICT_HISTOGRAM, "predict", buckets=BUCKETS, registry=registry)
    for variant, values in queue_seconds.items():
        for value in values:
            queue.labels(variant).observe(value)
    return generate_latest(registry).decode()


def test_the_histograms_are_summed_over_series_and_read_as_histogram_quantile_does() -> None:
    # 60 requests within 10 ms, 30 in (10, 50] ms, 10 in (50, 100] ms.
    text = _exposition(
        {"champion": [0.005] * 60 + [0.02] * 20, "challenger": [0.02] * 10 + [0.08] * 10}
    )
    queue = parse_histograms(text)[QUEUE_HISTOGRAM]
    assert queue.count == 100
    assert queue.mean_ms() == pytest.approx((0.005 * 60 + 0.02 * 30 + 0.08 * 10) * 10)
    # Rank 50 of 100 is in the first bucket, at 50/60 of it; rank 99 at 9/10 of the third.
    assert queue.quantile_ms(0.5) == pytest.approx(10 * 50 / 60)
    assert queue.quantile_ms(0.99) == pytest.approx(50 + 50 * 9 / 10)
    assert parse_histograms(text)[PREDICT_HISTOGRAM].quantile_ms(0.99) is None


def test_a_quantile_beyond_the_last_bound_is_that_bound() -> None:
    queue = parse_histograms(_exposition({"champion": [0.005] * 90 + [5.0] * 10}))[QUEUE_HISTOGRAM]
    assert queue.quantile_ms(0.99) == pytest.approx(100.0)


def test_a_phase_has_what_was_observed_between_two_readings() -> None:
    before = parse_histograms(_exposition({"champion": [0.005] * 40}))[QUEUE_HISTOGRAM]
    after = parse_histograms(_exposition({"champion": [0.005] * 40 + [0.08] * 10}))[QUEUE_HISTOGRAM]
    phase = _difference(after, before)
    assert phase.count == 10
    assert phase.mean_ms() == pytest.approx(80.0)
    assert phase.quantile_ms(0.5) == pytest.approx(75.0)


def test_served_requests_are_matched_with_their_served_records_only(tmp_path: Path) -> None:
    records = [
        {"request_id": "overload-a-0-0", "status_code": 200, "duration_ms": 12.5},
        {"request_id": "overload-a-0-1", "status_code": 503, "duration_ms": 0.1},
        {"request_id": "overload-a-1-0", "status_code": 200, "duration_ms": 3.0},
        {"request_id": "someone-else", "status_code": 200, "duration_ms": 1.0},
    ]
    lines = "".join(json.dumps(record) + "\n" for record in records)
    # The last line of a file being written may be cut short: it is skipped, not an error.
    (tmp_path / "part-1.jsonl").write_text(lines + '{"request_id": "overload-a-2-0", "sta')
    found = worker_durations(tmp_path, ["overload-a-0-0", "overload-a-0-1", "overload-a-2-0"])
    assert found == {"overload-a-0-0": pytest.approx(0.0125)}


@pytest.mark.parametrize(
    ("text", "cpus"), [("0", {0}), ("1,3", {1, 3}), ("0-2,5", {0, 1, 2, 5}), ("4-4", {4})]
)
def test_cpus_are_read_as_taskset_writes_them(text: str, cpus: set[int]) -> None:
    assert cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "0,,1", "1-2-3"])
def test_a_cpu_list_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a CPU list"):
        cpu_list(text)


def test_served_requests_sent_after_the_onset_are_kept_apart() -> None:
    answers = Answers()
    answers.add(200, 0.300, "a-0", first=True, after_onset=False)
    answers.add(503, 0.001, "b-0", first=True, after_onset=False)
    answers.add(200, 0.012, "a-1", first=False, after_onset=True)
    answers.add(503, 0.002, "b-1", first=False, after_onset=True)
    answers.add(200, 0.250, "b-2", first=False, after_onset=False)
    assert answers.after_onset == [0.012]
    assert sorted(answers.served.values()) == [0.012, 0.250, 0.300]
    assert answers.first == {"a-0"}
