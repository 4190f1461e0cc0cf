"""Quiet logs: one line per kind per interval, and each Python warning once."""

import io
import logging
import warnings

import pytest

from gateway.observe.logconfig import logging_config
from gateway.observe.quiet import OncePerKind, QuietLog


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_kind_per_interval_then_a_count_of_what_was_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    quiet = QuietLog(logging.getLogger("gateway.test.quiet"), interval=10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="gateway.test.quiet")
    logged = [quiet.warning("a", "failed on %s", "a") for _ in range(5)]
    logged.append(quiet.warning("b", "failed on %s", "b"))
    clock.now = 10.0
    logged.append(quiet.warning("a", "failed on %s", "a"))
    assert logged == [True, False, False, False, False, True, True]
    assert [record.getMessage() for record in caplog.records] == [
        "failed on a",
        "failed on b",
        "failed on a (4 more like it held back)",
    ]


def test_a_cleared_log_writes_the_next_line_of_a_kind_at_once() -> None:
    quiet = QuietLog(logging.getLogger("gateway.test.quiet"), interval=10.0, clock=_Clock())
    assert [quiet.warning("a", "x"), quiet.warning("a", "x")] == [True, False]
    quiet.clear()
    assert [quiet.warning("a", "x"), quiet.warning("a", "x")] == [True, False]


def test_each_distinct_warning_is_logged_once() -> None:
    once = OncePerKind()
    records = [
        logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, text, None, None)
        for text in ("slow path", "slow path", "other", "slow path")
    ]
    assert [once.filter(record) for record in records] == [True, False, True, False]


def test_a_library_warning_repeated_on_every_call_reaches_the_log_once() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OncePerKind())
    captured = logging.getLogger("py.warnings")
    captured.addHandler(handler)
    propagate, captured.propagate = captured.propagate, False
    logging.captureWarnings(True)
    try:
        for _ in range(5):
            # What a model library does on every predict call: reset the registry, then warn.
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("delayed should be used with Parallel", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        captured.removeHandler(handler)
        captured.propagate = propagate
    assert stream.getvalue().count("UserWarning: delayed should be used") == 1


def test_the_servers_logging_sends_python_warnings_through_the_once_filter() -> None:
    config = logging_config()
    assert config["loggers"]["py.warnings"]["handlers"] == ["warnings"]
    assert config["handlers"]["warnings"]["filters"] == ["once"]
    assert config["filters"]["once"]["()"] is OncePerKind
