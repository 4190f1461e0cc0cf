"""The report's log side in DuckDB: read the inference logs into a slim table and aggregate it.

The `*.jsonl` files are read once, columnar, with an explicit schema (files of schema version 1,
without `split` or `client_request_id`, read as nulls there), into the table `records`: one row a
record of the chosen endpoint and time window, with the request body, the response's prediction
list and its first prediction as a number. A line that is not a JSON record, or lacks a request id,
time or status, counts as malformed and is left out. Every figure here is an SQL aggregate over
that table; nothing is fetched a record at a time, so memory stays within DuckDB's
`memory_limit` (it spills to its temporary directory beyond it) whatever the size of the logs.

Live records are those routed `sticky` or `random`: they are what the split decided. Forced
(`x-gateway-variant`), shadow and fallback records are shown but stay out of the comparison and the
sample-ratio check: a fallback record is the second record of a request whose live record (its
variant's failed attempt, with its error) already counts it, under the variant the split chose. Time series and shadow agreement are in gateway.observe.report.series.
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import duckdb

logger = logging.getLogger(__name__)

LIVE_ROUTINGS: Final = ("sticky", "random")
LIVE_SQL: Final = "routing IN ('sticky', 'random')"
_MALFORMED: Final = "(request_id IS NULL OR ts IS NULL OR status_code IS NULL OR endpoint IS NULL)"
_COLUMNS: Final = (
    "{schema_version: 'INTEGER', request_id: 'VARCHAR', client_request_id: 'VARCHAR', "
    "timestamp: 'TIMESTAMP', endpoint: 'VARCHAR', model: 'VARCHAR', variant: 'VARCHAR', "
    "model_version: 'VARCHAR', routing: 'VARCHAR', split: 'JSON', user_key_hash: 'VARCHAR', "
    "status_code: 'INTEGER', duration_ms: 'DOUBLE', request: 'VARCHAR', "
    "request_encoding: 'VARCHAR', response: 'VARCHAR'}"
)


class ReportInputError(Exception):
    """An input the report cannot use; the message is one line for the user.

    `usage` tells a problem with what the report was asked to read (a missing directory, an
    unknown column) from inputs that are readable but hold nothing to report on.
    """

    def __init__(self, message: str, *, usage: bool = True) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class LoadInfo:
    """What reading the logs found: files, malformed lines, the endpoint and the window's records."""

    files: int
    malformed: int
    endpoint: str
    model: str | None
    records: int
    first: datetime | None
    last: datetime | None


@dataclass(frozen=True)
class VariantTraffic:
    """One variant's traffic by routing class (live, forced, shadow or fallback)."""

    variant: str
    kind: str
    model_versions: tuple[str, ...]
    requests: int
    users: int | None
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Assignment:
    """Units assigned per live variant, and the splits in force, each with how many units saw it."""

    unit: str
    observed: dict[str, int]
    splits: list[tuple[int, dict[str, int]]]


def connect(memory_limit: str = "2GB", spill: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to `spill` (a directory) beyond `memory_limit`."""
    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = '{_setting(memory_limit)}'")
    if spill is not None:
        con.execute("SET temp_directory = $path", {"path": str(spill)})
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    return con


def _setting(value: str) -> str:
    if not value.replace(".", "").replace(" ", "").isalnum():
        raise ReportInputError(f"memory limit: not a size such as 2GB: {value!r}")
    return value


def _files_sql(files: list[Path]) -> str:
    return "[" + ", ".join("'" + str(path).replace("'", "''") + "'" for path in files) + "]"


def load_records(
    con: duckdb.DuckDBPyConnection,
    directory: Path,
    *,
    endpoint: str | None,
    since: datetime | None,
    until: datetime | None,
) -> LoadInfo:
    """Read every `*.jsonl` of `directory` into the table `records` (endpoint and window only)."""
    if not directory.is_dir():
        raise ReportInputError(f"--logs: no such directory: {directory}")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise ReportInputError(f"--logs: no *.jsonl files in {directory}")
    # One table, filtered in place: a second copy of every record would double the peak memory.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE records AS
        SELECT *, {_MALFORMED} AS malformed,
               try_cast(json_extract(predictions, '$[0]') AS DOUBLE) AS prediction
        FROM (SELECT request_id, client_request_id, "timestamp" AS ts, endpoint, model, variant,
                     model_version, routing, split::VARCHAR AS split, user_key_hash,
                     status_code, duration_ms, request, request_encoding,
                     json_extract(try_cast(response AS JSON), '$.predictions') AS predictions
              FROM read_json({_files_sql(files)}, format = 'newline_delimited',
                             ignore_errors = true, columns = {_COLUMNS}))
        WHERE {_MALFORMED} OR (($since IS NULL OR ts >= $since) AND ($until IS NULL OR ts < $until))""",
        {"since": _naive(since), "until": _naive(until)},
    )
    malformed = scalar(con, "SELECT count(*) FROM records WHERE malformed")
    endpoints = [
        row[0]
        for row in con.execute(
            "SELECT endpoint FROM records WHERE NOT malformed "
            "GROUP BY endpoint ORDER BY count(*) DESC, endpoint"
        ).fetchall()
    ]
    chosen = _choose_endpoint(endpoint, endpoints, windowed=since is not None or until is not None)
    con.execute(
        "DELETE FROM records WHERE malformed OR endpoint <> $endpoint", {"endpoint": chosen}
    )
    count, model, first, last = con.execute(
        "SELECT count(*), mode(model), min(ts), max(ts) FROM records"
    ).fetchone() or (0, None, None, None)
    logger.debug("read %d records of %s from %d files", count, chosen, len(files))
    return LoadInfo(len(files), malformed, chosen, model, int(count), first, last)


def _choose_endpoint(wanted: str | None, endpoints: list[str], *, windowed: bool) -> str:
    """The endpoint to report on: the one asked for, else the only one of the window."""
    if not endpoints:
        where = "in the time window" if windowed else "in the logs"
        raise ReportInputError(f"no records {where}", usage=False)
    if wanted is not None:
        if wanted not in endpoints:
            where = "in the time window" if windowed else "in the logs"
            raise ReportInputError(
                f"--endpoint: no records of {wanted!r} {where} (endpoints: {', '.join(endpoints)})",
                usage=not windowed,
            )
        return wanted
    if len(endpoints) > 1:
        raise ReportInputError(
            f"the logs hold several endpoints ({', '.join(endpoints)}): choose one with --endpoint"
        )
    return endpoints[0]


def _naive(moment: datetime | None) -> datetime | None:
    """A UTC time without a zone, as the table stores record times."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def scalar(
    con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None
) -> int:
    """The first column of the first row of a query as an int (0 for no row or NULL)."""
    row = con.execute(sql, params or {}).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def traffic(con: duckdb.DuckDBPyConnection) -> list[VariantTraffic]:
    """Requests, distinct users, errors and latency quantiles per variant and routing class."""
    rows = con.execute(
        f"""SELECT variant,
               CASE WHEN {LIVE_SQL} THEN 'live' WHEN routing = 'shadow' THEN 'shadow'
                    WHEN routing = 'fallback' THEN 'fallback' ELSE 'forced' END AS kind,
               list_sort(list_distinct(list(model_version))),
               count(*), count(DISTINCT user_key_hash), count(user_key_hash),
               count(*) FILTER (WHERE status_code <> 200),
               quantile_cont(duration_ms, [0.5, 0.95, 0.99])
        FROM records WHERE variant IS NOT NULL
        GROUP BY ALL ORDER BY kind, count(*) DESC, variant"""
    ).fetchall()
    result = []
    for variant, kind, versions, requests, users, hashed, errors, latency in rows:
        p50, p95, p99 = latency if latency is not None else (None, None, None)
        result.append(
            VariantTraffic(
                variant,
                kind,
                tuple(v for v in versions if v is not None),
                int(requests),
                int(users) if hashed else None,
                int(errors),
                errors / requests,
                p50,
                p95,
                p99,
            )
        )
    return result


def assignment(con: duckdb.DuckDBPyConnection) -> Assignment:
    """Units per live variant for the sample-ratio check, and the splits they were assigned under.

    When most live records were routed sticky with a user hash, the unit is the user (counted
    once, with the split of their first record); otherwise the unit is the request.
    """
    sticky, live = con.execute(
        f"""SELECT count(*) FILTER (WHERE routing = 'sticky' AND user_key_hash IS NOT NULL),
                   count(*) FROM records WHERE {LIVE_SQL} AND variant IS NOT NULL"""
    ).fetchone() or (0, 0)
    if live and 2 * sticky >= live:
        source = f"""SELECT user_key_hash, arg_min(variant, ts) AS variant, arg_min(split, ts) AS split
            FROM records WHERE {LIVE_SQL} AND routing = 'sticky' AND user_key_hash IS NOT NULL
              AND variant IS NOT NULL GROUP BY user_key_hash"""
        unit = "users"
    else:
        source = f"SELECT variant, split FROM records WHERE {LIVE_SQL} AND variant IS NOT NULL"
        unit = "requests"
    observed: dict[str, int] = {}
    splits: dict[str, int] = {}
    for variant, split, count in con.execute(
        f"SELECT variant, split, count(*) FROM ({source}) GROUP BY ALL ORDER BY variant"
    ).fetchall():
        observed[variant] = observed.get(variant, 0) + int(count)
        if split is not None:
            splits[split] = splits.get(split, 0) + int(count)
    weighted = [
        (count, {str(k): int(v) for k, v in json.loads(split).items()})
        for split, count in splits.items()
    ]
    return Assignment(unit, observed, weighted)
