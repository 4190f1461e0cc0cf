"""`gateway logs summary`: per endpoint and variant, traffic, errors, latency and mean prediction.

The files are read a line at a time and folded into one small accumulator per (endpoint, variant),
so memory stays flat however many records there are. Latency percentiles come from a log-bucketed
histogram (the DDSketch scheme): bucket `i` holds the values in (g**(i-1), g**i] with
g = (1 + a) / (1 - a), and reports 2 * g**i / (g + 1), which is within a relative `a` = 1% of every
value in the bucket. Latencies from 1 microsecond to a day fit in fewer than 1,300 buckets.

Shadow records (`routing: shadow`) are copies of requests that a live variant answered, so they get
rows of their own (`candidate (shadow)`) and stay out of the endpoint's total; their share is the
fraction of the endpoint's live requests that were mirrored to them.
"""

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, NamedTuple, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_RELATIVE_ERROR: Final = 0.01
_GAMMA: Final = (1 + _RELATIVE_ERROR) / (1 - _RELATIVE_ERROR)
_LOG_GAMMA: Final = math.log(_GAMMA)
_SMALLEST_MS: Final = 1e-3  # below a microsecond counts as zero
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_RELATIVE: Final = re.compile(r"(\d+)([smhd])")


@dataclass(frozen=True)
class VariantSummary:
    """What the inference log says about one variant (or shadow) of an endpoint."""

    endpoint: str
    variant: str
    shadow: bool
    requests: int
    share: float
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_prediction: float | None


class Summary(NamedTuple):
    """The rows of a summary and how many lines could not be read as records."""

    variants: list[VariantSummary]
    malformed: int


class LatencyHistogram:
    """Quantiles of non-negative values within 1% relative error, in memory bounded by the range."""

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self._zeros = 0
        self.count = 0

    def add(self, value: float) -> None:
        """Count one value."""
        self.count += 1
        if value < _SMALLEST_MS:
            self._zeros += 1
        else:
            self._buckets[math.ceil(math.log(value) / _LOG_GAMMA)] += 1

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """The value at each quantile q in [0, 1] (None when empty), by the rank q * (count - 1)."""
        if self.count == 0:
            return [None for _ in qs]
        ranks = [q * (self.count - 1) for q in qs]
        found: list[float | None] = [0.0 if rank < self._zeros else None for rank in ranks]
        seen = self._zeros
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            for position, rank in enumerate(ranks):
                if found[position] is None and seen > rank:
                    found[position] = 2 * _GAMMA**index / (_GAMMA + 1)
        return found


@dataclass
class _Accumulator:
    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    prediction_sum: float = 0.0
    prediction_count: int = 0


def files_in(directory: Path) -> list[Path]:
    """The `*.jsonl` files of the directory, sorted by name."""
    return sorted(path for path in directory.glob("*.jsonl") if path.is_file())


def parse_since(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or `now` less a duration: 90s, 30m, 1h, 2d."""
    match = _RELATIVE.fullmatch(text.strip())
    try:
        if match:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
        since = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        raise ValueError(
            f"--since: expected an ISO 8601 time such as 2024-05-01T12:00:00Z or a duration "
            f"such as 90s, 30m, 1h or 2d, got {text!r}"
        ) from None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


class _Record(NamedTuple):
    key: tuple[str, str, bool]  # endpoint, variant, shadow
    duration_ms: float
    failed: bool
    response: object


def summarize(paths: Iterable[Path], since: datetime | None) -> Summary:
    """Fold the records of the files, a line at a time, into one row per endpoint and variant."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    accumulators: dict[tuple[str, str, bool], _Accumulator] = {}
    malformed = 0
    for path in paths:
        with path.open("rb") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = _read(line, since)
                except (ValueError, TypeError, KeyError, OverflowError):
                    malformed += 1
                    continue
                if record is not None:
                    _add(accumulators.setdefault(record.key, _Accumulator()), record)
    return Summary(_rows(accumulators), malformed)


NOT_ROUTED = "(not routed)"


def _read(line: bytes, since: datetime | None) -> _Record | None:
    """The record on a line, or None if it is older than `since`; raises if it is malformed."""
    fields = json.loads(line)
    endpoint, variant = fields["endpoint"], fields["variant"]
    if variant is None:
        # Refused before a variant was chosen (a bad content type, say): a row of its own.
        variant = NOT_ROUTED
    if not isinstance(endpoint, str) or not isinstance(variant, str):
        raise TypeError("endpoint and variant must be strings")
    duration_ms = float(fields["duration_ms"])
    if not 0 <= duration_ms < math.inf:
        raise ValueError(f"duration_ms must be finite and >= 0, got {duration_ms}")
    timestamp = datetime.fromisoformat(fields["timestamp"])
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    failed = int(fields["status_code"]) >= 400 or fields.get("error") is not None
    if since is not None and timestamp < since:
        return None
    shadow = fields.get("routing") == "shadow"
    return _Record((endpoint, variant, shadow), duration_ms, failed, fields.get("response"))


def _add(accumulator: _Accumulator, record: _Record) -> None:
    accumulator.requests += 1
    accumulator.latency.add(record.duration_ms)
    if record.failed:
        accumulator.errors += 1
        return
    for value in _prediction_values(record.response):
        accumulator.prediction_sum += value
        accumulator.prediction_count += 1


def _prediction_values(response: object) -> list[float]:
    """The numbers in a response's `predictions`: scalars, or the first number of each row."""
    if not isinstance(response, str):
        return []
    try:
        predictions = json.loads(response).get("predictions")
    except (ValueError, AttributeError):
        return []
    rows = predictions if isinstance(predictions, list) else [predictions]
    values = []
    for row in rows:
        cells = row.values() if isinstance(row, dict) else row if isinstance(row, list) else [row]
        first = next((cell for cell in cells if _is_number(cell)), None)
        if first is not None:
            values.append(float(first))
    return values


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rows(accumulators: dict[tuple[str, str, bool], _Accumulator]) -> list[VariantSummary]:
    live: Counter[str] = Counter()
    for (endpoint, _, shadow), accumulator in accumulators.items():
        if not shadow:
            live[endpoint] += accumulator.requests
    rows = []
    # Live variants first, then shadows, each by name, so a table reads the same every time.
    ordered = sorted(accumulators.items(), key=lambda item: (item[0][0], item[0][2], item[0][1]))
    for (endpoint, variant, shadow), accumulator in ordered:
        p50, p95, p99 = accumulator.latency.quantiles([0.5, 0.95, 0.99])
        rows.append(
            VariantSummary(
                endpoint=endpoint,
                variant=f"{variant} (shadow)" if shadow else variant,
                shadow=shadow,
                requests=accumulator.requests,
                share=accumulator.requests / live[endpoint] if live[endpoint] else 0.0,
                errors=accumulator.errors,
                error_rate=accumulator.errors / accumulator.requests,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                mean_prediction=(
                    accumulator.prediction_sum / accumulator.prediction_count
                    if accumulator.prediction_count
                    else None
                ),
            )
        )
    return rows


_COLUMNS: Final = (
    "endpoint",
    "variant",
    "requests",
    "share",
    "errors",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "mean prediction",
)


def render_table(summaries: Sequence[VariantSummary], malformed: int) -> str:
    """A plain text table, one row per variant, numbers aligned right; then the malformed count."""
    cells = [
        [
            row.endpoint,
            row.variant,
            str(row.requests),
            f"{row.share:.1%}",
            f"{row.error_rate:.1%}",
            *(_number(value, ".1f") for value in (row.p50_ms, row.p95_ms, row.p99_ms)),
            _number(row.mean_prediction, ".4g"),
        ]
        for row in summaries
    ]
    widths = [
        max(len(line[column]) for line in [list(_COLUMNS), *cells])
        for column in range(len(_COLUMNS))
    ]
    lines = [
        "  ".join(
            text.ljust(width) if column < 2 else text.rjust(width)
            for column, (text, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in [list(_COLUMNS), *cells]
    ]
    if not summaries:
        lines.append("(no records)")
    if malformed:
        lines.append(f"{malformed} malformed line(s) skipped")
    return "\n".join(lines) + "\n"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def to_json(summaries: Sequence[VariantSummary], malformed: int) -> str:
    """The summary as a JSON document: `variants` (one object a row) and `malformed_lines`."""
    document = {
        "variants": [dataclasses.asdict(row) for row in summaries],
        "malformed_lines": malformed,
    }
    return json.dumps(document, indent=2) + "\n"


def run(
    directory: Path, *, since: str | None, as_json: bool, out: TextIO, err: TextIO, now: datetime
) -> int:
    """The command: summarise the directory's logs onto `out`; problems go to `err`."""
    if not directory.is_dir():
        print(f"error: {directory} is not a directory", file=err)
        return EXIT_USAGE
    try:
        start = None if since is None else parse_since(since, now)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    try:
        summary = summarize(files_in(directory), start)
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=err)
        return EXIT_FAILED
    render = to_json if as_json else render_table
    out.write(render(summary.variants, summary.malformed))
    return EXIT_OK
