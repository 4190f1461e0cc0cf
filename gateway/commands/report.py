"""`gateway report`: which variant wins, from the inference logs and an outcomes file.

Parses the command line, builds the report (gateway.observe.report), and writes it as text, JSON
and HTML, and to MLflow when asked. Bad input is one line on stderr: exit 2 for a usage problem
(a missing directory or file, an unknown column), 1 when the report cannot be made (no records in
the window). A report that was made exits 0, whatever its verdict.
"""

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from gateway.core.judging import KEYS, METRICS

if TYPE_CHECKING:
    from gateway.observe.report.assemble import ReportOptions

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HELP: Final = "which variant wins: split health, outcomes, drift and a verdict from the logs"
SECRET_ENV: Final = "GATEWAY_INFERENCE_LOG__USER_KEY_SECRET"
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `gateway report`."""
    parser.add_argument("--logs", type=Path, required=True, help="the inference-log directory")
    parser.add_argument("--endpoint", help="the endpoint (default: the only one in the logs)")
    parser.add_argument("--since", help="ISO 8601 time, or a duration back from now: 30m, 2d")
    parser.add_argument("--until", help="ISO 8601 time, or a duration back from now")
    parser.add_argument(
        "--outcomes",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="outcome files: .csv, .parquet or .jsonl (several allowed)",
    )
    parser.add_argument(
        "--key",
        choices=KEYS,
        default="request_id",
        help="what an outcome row is keyed by; `user` reads the column user_id",
    )
    parser.add_argument("--outcome-column", default="outcome", help="default: outcome")
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="mean",
        help="mean of the outcome (default), or the predictions' quality against it as label",
    )
    parser.add_argument(
        "--user-key-secret", help=f"the log's user_key_secret for --key user (or ${SECRET_ENV})"
    )
    parser.add_argument("--covariate", help="a pre-experiment column of the outcomes: CUPED")
    parser.add_argument("--mde", type=float, help="the minimum detectable effect to plan for")
    parser.add_argument("--alpha", type=float, default=0.05, help="default 0.05")
    parser.add_argument("--baseline", type=Path, help="a .csv or .parquet of reference features")
    parser.add_argument("--champion", help="default: the variant named champion")
    parser.add_argument("--challenger", help="default: the variant named challenger")
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    parser.add_argument("--html", type=Path, metavar="OUT", help="also write a one-file HTML")
    parser.add_argument(
        "--log-to-mlflow",
        metavar="EXPERIMENT",
        help="log the report as an MLflow run and tag the challenger's model version",
    )
    parser.add_argument("--tracking-uri", help="the MLflow tracking URI for --log-to-mlflow")
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB's memory limit (2GB)")


def parse_time(option: str, text: str | None, now: datetime) -> datetime | None:
    """An ISO 8601 time (UTC unless it says otherwise) or `now` less a duration: 90s, 30m, 1h, 2d."""
    if text is None:
        return None
    match = _DURATION.fullmatch(text.strip())
    try:
        if match:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
        moment = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        from gateway.observe.report.data import ReportInputError

        raise ReportInputError(
            f"{option}: expected an ISO 8601 time such as 2024-05-01T12:00:00Z or a duration "
            f"such as 90s, 30m, 1h or 2d, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def options_from(
    args: argparse.Namespace, environ: Mapping[str, str], now: datetime
) -> "ReportOptions":
    """The report's options from parsed arguments and the environment."""
    from gateway.core.judging import Metric
    from gateway.observe.report.assemble import ReportOptions
    from gateway.observe.report.data import ReportInputError

    if not 0 < args.alpha < 1:
        raise ReportInputError(f"--alpha: must be between 0 and 1, got {args.alpha}")
    if args.log_to_mlflow and not args.tracking_uri and "MLFLOW_TRACKING_URI" not in environ:
        raise ReportInputError("--log-to-mlflow needs --tracking-uri (or $MLFLOW_TRACKING_URI)")
    return ReportOptions(
        logs=args.logs,
        endpoint=args.endpoint,
        since=parse_time("--since", args.since, now),
        until=parse_time("--until", args.until, now),
        outcomes=tuple(args.outcomes),
        key=args.key,
        outcome_column=args.outcome_column,
        metric=Metric(args.metric),
        user_key_secret=args.user_key_secret or environ.get(SECRET_ENV),
        covariate=args.covariate,
        mde=args.mde,
        alpha=args.alpha,
        baseline=args.baseline,
        champion=args.champion,
        challenger=args.challenger,
        memory_limit=args.memory_limit,
    )


def run(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    *,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> int:
    """Make the report and write it; the exit status."""
    import duckdb

    from gateway.observe.report.assemble import build_report
    from gateway.observe.report.data import ReportInputError

    environ = dict(os.environ) if environ is None else environ
    try:
        options = options_from(args, environ, now or datetime.now(UTC))
        report = build_report(options)
    except ReportInputError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE if exc.usage else EXIT_FAILED
    except duckdb.Error as exc:
        print(f"error: reading the logs: {str(exc).strip().splitlines()[0]}", file=err)
        return EXIT_FAILED
    if args.json:
        json.dump(report, out, indent=2, sort_keys=False)
        out.write("\n")
    else:
        from gateway.observe.report.text import render_text

        out.write(render_text(report))
    if args.html is not None:
        from gateway.observe.report.html import render_html

        try:
            args.html.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            print(f"error: --html: cannot write {args.html}: {exc.strerror}", file=err)
            return EXIT_FAILED
    if args.log_to_mlflow:
        from gateway.commands.report_mlflow import MlflowReportError, log_report

        try:
            log_report(
                report,
                experiment=args.log_to_mlflow,
                tracking_uri=args.tracking_uri or environ["MLFLOW_TRACKING_URI"],
                html_path=args.html,
            )
        except MlflowReportError as exc:
            print(f"error: --log-to-mlflow: {exc}", file=err)
            return EXIT_FAILED
    return EXIT_OK
