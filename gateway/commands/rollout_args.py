"""The flags of `gateway rollout`: apart from the command, so that building the parser is cheap.

The command itself (gateway.commands.rollout) talks to the registry and reads the logs; the
command line imports this module for every `gateway` invocation, so it imports neither.
"""

import argparse
from collections.abc import Callable
from pathlib import Path

from gateway.core.judging import KEYS, METRICS, Metric
from gateway.core.rollout import DEFAULT_STEPS, Guard, parse_steps


def add_arguments(
    parser: argparse.ArgumentParser, add_config: Callable[[argparse.ArgumentParser], None]
) -> None:
    """The `rollout` subcommands and their flags; `add_config` adds the shared --config flag."""
    commands = parser.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="aliases, versions, weights and live figures")
    set_ = commands.add_parser("set", help="set the live weights, e.g. champion=75,challenger=25")
    set_.add_argument("weights")
    promote = commands.add_parser(
        "promote", help="the champion alias moves to the challenger's version"
    )
    rollback = commands.add_parser("rollback", help="all traffic back to the champion")
    run = commands.add_parser("run", help="an automatic canary with a guard")
    run.add_argument("--steps", type=parse_steps, default=DEFAULT_STEPS, help="default 5,25,50,100")
    run.add_argument("--interval", type=float, default=60.0, help="seconds between judgements")
    run.add_argument("--min-requests", type=int, default=Guard.min_requests)
    run.add_argument("--max-error-rate-increase", type=float, default=Guard.max_error_rate_increase)
    run.add_argument("--max-p99-ratio", type=float, default=Guard.max_p99_ratio)
    run.add_argument(
        "--max-holds", type=int, default=3, help="intervals that cannot be judged before giving up"
    )
    quality = run.add_argument_group(
        "quality gate", "judge the challenger's outcomes too, as `gateway report` joins them"
    )
    quality.add_argument(
        "--outcomes",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="CSV, Parquet or JSON Lines outcomes, re-read at every interval (repeatable)",
    )
    quality.add_argument(
        "--logs", type=Path, help="inference-log directory (default: the config's)"
    )
    quality.add_argument("--key", choices=KEYS, default="request_id")
    quality.add_argument("--outcome-column", default="outcome")
    quality.add_argument("--metric", choices=METRICS, default=Metric.MEAN.value)
    quality.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="roll back when worse by more than this; advance when no worse (default 0)",
    )
    quality.add_argument(
        "--require-superior", action="store_true", help="advance only when better than the champion"
    )
    quality.add_argument("--alpha", type=float, default=0.05)
    for command in (status, set_, promote, rollback, run):
        add_config(command)
        command.add_argument("--endpoint", help="default: the config's first endpoint")
        command.add_argument("--champion", default="champion", help="the champion variant's name")
        command.add_argument(
            "--challenger", default="challenger", help="the challenger variant's name"
        )
        command.add_argument("--tracking-uri", help="overrides the config's tracking URI")
    for command in (set_, promote, rollback, run):
        command.add_argument(
            "--dry-run", action="store_true", help="print what would change; change nothing"
        )
    for command in (status, run):
        command.add_argument(
            "--gateway",
            action="append",
            default=[],
            metavar="URL",
            help="a gateway replica to scrape (repeatable)",
        )
        command.add_argument(
            "--prometheus", metavar="URL", help="a Prometheus server to query instead"
        )
