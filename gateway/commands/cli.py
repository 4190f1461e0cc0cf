"""The `gateway` command: serve, check, rollout, logs summary and export, and demo."""

import argparse
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway import __version__
from gateway.commands import report as report_command
from gateway.core.config import GatewayConfig
from gateway.core.config_file import ConfigError, load_config, load_tokens

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# prometheus-client's multiprocess directory; gateway.observe.metrics reads it when first imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    environ = os.environ if environ is None else environ
    args = _parser(environ).parse_args(argv)
    if args.command == "demo":
        return _demo(args, environ)
    if args.command == "demo-traffic":
        from gateway.commands import demo_traffic

        return demo_traffic.run(args)
    if args.command == "logs":
        return _logs_export(args) if args.logs_command == "export" else _logs_summary(args)
    if args.command == "report":
        return report_command.run(args, sys.stdout, sys.stderr, environ=dict(environ))
    try:
        config = load_config(args.config, environ)
        if args.command in ("check", "serve") and config.auth is not None:
            # Serving needs the tokens; `rollout` and the readers do not.
            load_tokens(config.auth.tokens_file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        from gateway.serving.registry import bound_http_requests

        # An unreachable registry is an answer in seconds, not after MLflow's minutes of retries.
        bound_http_requests(config.registry_timeout_seconds)
        return _check(config)
    if args.command == "rollout":
        from gateway.commands import rollout as rollout_command

        return rollout_command.main(config, args)
    return _serve(config, args)


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the endpoints of a config file")
    _config_argument(serve, environ)
    serve.add_argument("--host", default=environ.get("GATEWAY_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(environ.get("GATEWAY_PORT", "8080")))
    serve.add_argument(
        "--workers",
        type=_positive,
        default=int(environ.get("GATEWAY_WORKERS", "1")),
        help="worker processes sharing the port (default 1)",
    )
    _logging_arguments(serve)

    check = commands.add_parser(
        "check", help="validate a config and resolve its aliases, then exit"
    )
    _config_argument(check, environ)

    rollout = commands.add_parser(
        "rollout", help="canary rollouts: status, set, promote, rollback, run"
    )
    from gateway.commands.rollout_args import add_arguments

    add_arguments(rollout, lambda command: _config_argument(command, environ))

    logs = commands.add_parser("logs", help="read inference logs")
    log_commands = logs.add_subparsers(dest="logs_command", required=True, metavar="COMMAND")
    summary = log_commands.add_parser(
        "summary", help="requests, errors, latency and mean prediction per endpoint and variant"
    )
    summary.add_argument("--dir", type=Path, required=True, help="the inference-log directory")
    summary.add_argument(
        "--since", help="ISO 8601 time, or a duration back from now: 90s, 30m, 1h, 2d"
    )
    summary.add_argument("--json", action="store_true", help="JSON instead of a table")
    export = log_commands.add_parser(
        "export",
        help="write the logs as Parquet partitioned by date, optionally as an inference table",
    )
    export.add_argument("--dir", type=Path, required=True, help="the inference-log directory")
    export.add_argument("--out", type=Path, required=True, help="the output directory")
    export.add_argument(
        "--since", help="ISO 8601 time, or a duration back from now: 90s, 30m, 1h, 2d"
    )
    export.add_argument("--until", help="the end of the window (excluded), as --since")
    export.add_argument(
        "--format",
        default="parquet",
        choices=["parquet", "databricks"],
        help="the log's own columns (default) or a Databricks inference table's",
    )
    export.add_argument(
        "--sampling-fraction",
        type=float,
        default=1.0,
        help="databricks format: the inference_log.sample_rate that wrote the logs (default 1.0)",
    )

    report_command.add_arguments(commands.add_parser("report", help=report_command.HELP))
    demo = commands.add_parser("demo", help="create a local demo registry and serve it")
    demo.add_argument(
        "--dir", type=Path, default=Path("gateway-demo"), help="default ./gateway-demo"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    _logging_arguments(demo)

    from gateway.commands import demo_traffic

    traffic = commands.add_parser(
        "demo-traffic", help="send synthetic customers to the demo and write their true outcomes"
    )
    demo_traffic.add_arguments(traffic)
    return parser


def _config_argument(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    parser.add_argument(
        "--config",
        default=environ.get("GATEWAY_CONFIG", "gateway.yaml"),
        help="path of gateway.yaml (default $GATEWAY_CONFIG or ./gateway.yaml)",
    )


def _logging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check(config: GatewayConfig, *, show: bool = True) -> int:
    """Resolve every variant against the registry; print what serves, and every problem."""
    from gateway.serving.registry import Registry, RegistryError

    registry = Registry(config.tracking_uri, config.registry_uri)
    problems = []
    for endpoint in config.endpoints:
        for variant in endpoint.variants:
            try:
                version = registry.resolve(endpoint.model, variant)
            except RegistryError as exc:
                problems.append(f"endpoint {endpoint.name} variant {variant.variant_name}: {exc}")
                continue
            if show:
                print(
                    f"{endpoint.name}\t{variant.variant_name}\t{version.uri}\tweight {variant.weight}"
                )
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def _wait_for_registry(config: GatewayConfig) -> int:
    """Resolve every variant, retrying while the registry is unreachable, up to the deadline."""
    from gateway.serving.registry import UNREACHABLE, Registry, RegistryError

    registry = Registry(config.tracking_uri, config.registry_uri)
    deadline = config.startup_deadline_seconds
    give_up_at = time.monotonic() + deadline
    attempt = 0
    while True:
        attempt += 1
        problems: list[tuple[str, RegistryError]] = []
        for endpoint in config.endpoints:
            for variant in endpoint.variants:
                try:
                    registry.resolve(endpoint.model, variant)
                except RegistryError as exc:
                    where = f"endpoint {endpoint.name} variant {variant.variant_name}"
                    problems.append((where, exc))
                    if exc.reason == UNREACHABLE:
                        break  # the others would wait for the same registry
        if not problems:
            return EXIT_OK
        left = give_up_at - time.monotonic()
        unreachable = all(problem.reason == UNREACHABLE for _, problem in problems)
        if unreachable and left > 0:
            pause = min(0.5 * 2 ** (attempt - 1), 5.0, left)
            logger.warning(
                "registry %s unreachable (attempt %d, giving up in %.0f s; retrying in %.1f s): %s",
                registry.registry_uri,
                attempt,
                left,
                pause,
                problems[0][1],
            )
            time.sleep(pause)
            continue
        for where, problem in problems:
            print(f"error: {where}: {problem}", file=sys.stderr)
        if unreachable:
            print(
                f"error: the registry {registry.registry_uri} was unreachable for "
                f"startup_deadline_seconds ({deadline:g} s, {attempt} attempts); giving up",
                file=sys.stderr,
            )
        return EXIT_FAILED


def _serve(config: GatewayConfig, args: argparse.Namespace) -> int:
    with _metrics_directory(args.workers):
        return _serve_with_metrics(config, args)


@contextlib.contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """An empty PROMETHEUS_MULTIPROC_DIR, before prometheus-client is first imported.

    The one given is made if missing and emptied, so counts of an earlier run never leak into this
    one; `--workers N` without one gets a temporary directory, removed at the end.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield
    elif workers > 1:
        directory = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        os.environ[MULTIPROC_ENV] = str(directory)
        try:
            yield
        finally:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(directory, ignore_errors=True)
    else:
        yield


def _serve_with_metrics(config: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.http.server import serve
    from gateway.observe.logconfig import configure_logging
    from gateway.serving.registry import bound_http_requests

    configure_logging(args.log_level, args.log_format)
    chosen = bound_http_requests(config.registry_timeout_seconds)
    if chosen:
        logger.debug("MLflow HTTP requests bounded: %s", chosen)
    # Resolve every alias before the port is bound: a typo fails here, at once, by name; an
    # unreachable registry is tried again until the start-up deadline.
    status = _wait_for_registry(config)
    if status != EXIT_OK:
        return status
    sock = _listen(args.host, args.port, args.workers)
    if sock is None:
        return EXIT_FAILED
    host, port = sock.getsockname()[:2]
    logger.info("listening on http://%s:%s with %d worker(s)", host, port, args.workers)
    return serve(
        config, sock, workers=args.workers, log_level=args.log_level, log_format=args.log_format
    )


def _listen(host: str, port: int, workers: int) -> socket.socket | None:
    """The server's socket, or None after saying on stderr why there is none."""
    from gateway.http.server import bind

    try:
        return bind(host, port, workers=workers)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return None


def _logs_summary(args: argparse.Namespace) -> int:
    from gateway.observe import log_summary

    return log_summary.run(
        args.dir,
        since=args.since,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
        now=datetime.now(UTC),
    )


def _logs_export(args: argparse.Namespace) -> int:
    from gateway.observe.export import write as export

    return export.run(
        args.dir,
        args.out,
        since=args.since,
        until=args.until,
        layout=args.format,
        sampling_fraction=args.sampling_fraction,
        stdout=sys.stdout,
        stderr=sys.stderr,
        now=datetime.now(UTC),
    )


def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from gateway.commands.demo import allow_demo_model_loading, build_demo
    from gateway.http.server import serve
    from gateway.observe.logconfig import configure_logging

    started = time.monotonic()
    configure_logging(args.log_level, args.log_format)
    allow_demo_model_loading()
    config_path = build_demo(args.dir)
    config = load_config(str(config_path), {})
    sock = _listen(args.host, args.port, workers=1)
    if sock is None:
        return EXIT_FAILED
    host, port = sock.getsockname()[:2]

    def banner() -> None:
        print(
            _DEMO_BANNER.format(
                seconds=time.monotonic() - started,
                url=f"http://{host}:{port}",
                config=config_path,
                directory=config_path.parent,
            ),
            flush=True,
        )

    return serve(
        config, sock, log_level=args.log_level, log_format=args.log_format, on_ready=banner
    )


_DEMO_BANNER = """
Gateway demo ready in {seconds:.1f}s on {url} (config: {config}); Ctrl+C stops it.

  curl -s {url}/invocations -H 'Content-Type: application/json' -H 'X-User-Id: alice' \\
    -d '{{"dataframe_split": {{"columns": ["tenure_months", "monthly_charges", "support_calls", "plan"], "data": [[3, 89.5, 4, "basic"], [48, 30.0, 0, "pro"]]}}}}'

  curl -s {url}/invocations -H 'Content-Type: application/json' \\
    -d '{{"dataframe_records": [{{"tenure_months": 3, "monthly_charges": 89.5, "support_calls": 4, "plan": "basic"}}]}}'

  printf 'tenure_months,monthly_charges,support_calls,plan\\n3,89.5,4,basic\\n' | \\
    curl -s {url}/invocations -H 'Content-Type: text/csv' --data-binary @-

  curl -s -i {url}/invocations -H 'Content-Type: application/json' -H 'x-gateway-variant: challenger' \\
    -d '{{"inputs": {{"tenure_months": [3], "monthly_charges": [89.5], "support_calls": [4], "plan": ["basic"]}}}}'

  curl -s {url}/endpoints

Then judge the split: 2,000 synthetic customers, their true churn labels, and the verdict.

  gateway demo-traffic --url {url} --outcomes {directory}/outcomes.csv
  gateway report --logs {directory}/inference-logs --outcomes {directory}/outcomes.csv \
    --metric accuracy --key request_id --html {directory}/report.html
"""
