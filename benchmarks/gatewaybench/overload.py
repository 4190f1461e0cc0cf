"""The overload run: what requests that are served get when far more clients call than fit.

One gateway, `--workers 2` with log and metrics on, is driven in a closed loop (each connection
sends its next request as soon as it has an answer, and ignores `Retry-After`: the worst case)
first by a few connections, then by many. wrk reports one latency over every answer; here a 503
costs microseconds and would hide what the served requests waited, so the client is an asyncio
one that measures each answer by its status. It shares the machine's cores with the server.
"""

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.plan import Features, ServerSpec, gateway_config
from benchmarks.gatewaybench.registry import MODELS, build_registry, model_features, payloads
from benchmarks.gatewaybench.servers import running_servers

DEFAULT_SECONDS = 10.0
DEFAULT_CONNECTIONS = (16, 1000)
WARMUP_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 10.0
# A request not answered in this long counts as a timeout, as wrk's --timeout 10s does.
ANSWER_TIMEOUT_SECONDS = 10.0


@dataclass
class Answers:
    """What the connections of one phase got: latencies by status, and the errors."""

    latencies: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0

    def add(self, status: int, seconds: float) -> None:
        """One answer of `status` that took `seconds` from writing the request to the last byte."""
        self.latencies.setdefault(status, []).append(seconds)


@dataclass(frozen=True)
class PhaseFigures:
    """One phase's figures: served rate and latency, the share of 503s and their latency."""

    connections: int
    seconds: float
    answers: int
    served_per_second: float
    served_p50_ms: float | None
    served_p99_ms: float | None
    shed_share: float
    shed_p50_ms: float | None
    shed_p99_ms: float | None
    other_statuses: dict[int, int]
    errors: int
    client_cpu_seconds: float


def _percentile_ms(values: Sequence[float], percent: int) -> float | None:
    if len(values) < 2:
        return values[0] * 1000 if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1] * 1000


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, float | None]:
    """Read one HTTP/1.1 response with a Content-Length; its status and its Retry-After."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    retry_after = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            retry_after = float(value)
    await reader.readexactly(length)
    return status, retry_after


async def _connection(
    port: int, request: bytes, until: float, answers: Answers, polite: bool
) -> None:
    """Send `request` on one keep-alive connection, again and again, until the loop time `until`;
    when `polite`, wait as long as a response's Retry-After says before the next."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError):
        answers.errors += 1
        return
    try:
        while loop.time() < until:
            started = time.perf_counter()
            writer.write(request)
            status, retry_after = await asyncio.wait_for(
                _read_answer(reader), ANSWER_TIMEOUT_SECONDS
            )
            answers.add(status, time.perf_counter() - started)
            if polite and retry_after is not None:
                await asyncio.sleep(min(retry_after, max(0.0, until - loop.time())))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        answers.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _phase(
    port: int, request: bytes, connections: int, seconds: float, polite: bool
) -> Answers:
    answers = Answers()
    until = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(
        *(_connection(port, request, until, answers, polite) for _ in range(connections))
    )
    return answers


def measure(
    port: int, request: bytes, connections: int, seconds: float, polite: bool = False
) -> PhaseFigures:
    """Drive the gateway with `connections` for `seconds`; the figures of every answer.

    `polite` clients wait as Retry-After says after a 503; the others ask again at once.
    """
    cpu = time.process_time()
    started = time.perf_counter()
    answers = uvloop.run(_phase(port, request, connections, seconds, polite))
    elapsed = time.perf_counter() - started
    served = answers.latencies.get(200, [])
    shed = answers.latencies.get(503, [])
    total = sum(len(values) for values in answers.latencies.values())
    return PhaseFigures(
        connections=connections,
        seconds=round(elapsed, 2),
        answers=total,
        served_per_second=round(len(served) / elapsed, 1),
        served_p50_ms=_percentile_ms(served, 50),
        served_p99_ms=_percentile_ms(served, 99),
        shed_share=len(shed) / total if total else 0.0,
        shed_p50_ms=_percentile_ms(shed, 50),
        shed_p99_ms=_percentile_ms(shed, 99),
        other_statuses={
            status: len(values)
            for status, values in answers.latencies.items()
            if status not in (200, 503)
        },
        errors=answers.errors,
        client_cpu_seconds=round(time.process_time() - cpu, 2),
    )


def _request(body: bytes, port: int) -> bytes:
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(phases: Sequence[PhaseFigures]) -> str:
    """The phases as a Markdown table."""
    lines = [
        "| connections | served req/s | served p50 ms | served p99 ms | 503 share "
        "| 503 p50 ms | 503 p99 ms | other | socket errors |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in phases:
        other = sum(p.other_statuses.values())
        lines.append(
            f"| {p.connections:,} | {p.served_per_second:,.0f} | {_ms(p.served_p50_ms)} "
            f"| {_ms(p.served_p99_ms)} | {p.shed_share:.1%} | {_ms(p.shed_p50_ms)} "
            f"| {_ms(p.shed_p99_ms)} | {other} | {p.errors} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overload.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per phase")
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=list(DEFAULT_CONNECTIONS),
        help="one phase each, in this order (default: 16 1000)",
    )
    parser.add_argument("--model", choices=MODELS, default="pipeline")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    # The servers' environment has no GATEWAY_* variables (gatewaybench.servers): limits other
    # than the defaults go into the config.
    parser.add_argument(
        "--max-queue-ms", type=float, help="the gateway's max_queue_ms (default: its own default)"
    )
    parser.add_argument(
        "--standing-queue-ms",
        type=float,
        help="the gateway's standing_queue_ms, 0 for off (default: its own default)",
    )
    parser.add_argument(
        "--max-in-flight", type=int, help="the gateway's max_in_flight (default: derived)"
    )
    parser.add_argument(
        "--honour-retry-after",
        action="store_true",
        help="clients wait as a 503's Retry-After says (default: they ask again at once)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Build the registry, start the gateway, run every phase, print the table."""
    args = _parser().parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < max(args.connections) + 100 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="gateway-overload-") as temporary:
        directory = Path(temporary)
        tracking_uri = build_registry(args.model, directory / "registry")
        config = gateway_config(tracking_uri, directory, Features.OBSERVED)
        if args.max_queue_ms is not None:
            config["max_queue_ms"] = args.max_queue_ms
        if args.standing_queue_ms is not None:
            config["standing_queue_ms"] = args.standing_queue_ms
        if args.max_in_flight is not None:
            config["max_in_flight"] = args.max_in_flight
        spec = ServerSpec("gateway-overload", "gateway", args.workers, Features.OBSERVED, config)
        body = payloads(model_features(args.model))[1]
        try:
            with running_servers([spec], directory, tracking_uri) as (server,):
                request = _request(body, server.port)
                measure(server.port, request, 16, WARMUP_SECONDS)
                phases = []
                for connections in args.connections:
                    print(f"{connections} connections for {args.seconds:g} s ...", flush=True)
                    phases.append(
                        measure(
                            server.port, request, connections, args.seconds, args.honour_retry_after
                        )
                    )
                    server.check_alive()
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(table(phases))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(p) for p in phases], indent=2), encoding="utf-8")
    return 0
