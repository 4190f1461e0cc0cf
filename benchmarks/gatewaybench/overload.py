"""The overload run: what requests that are served get when far more clients call than fit.

One gateway, `--workers 2` with log and metrics on, is driven in a closed loop (each connection
sends its next request as soon as it has an answer, and ignores `Retry-After`: the worst case)
first by a few connections, then by many. wrk reports one latency over every answer; here a 503
costs microseconds and would hide what the served requests waited, so the client is an asyncio
one that measures each answer by its status. It shares the machine's cores with the server.

Each request carries its own `x-request-id`, so a served request's latency as the client saw it
is matched with its `duration_ms` in the inference log (from the worker's first sight of the
request to its answer): the difference is time no gateway limit can bound (the kernel's socket
buffers, the worker's event loop before it reads the request, the client's own loop), and the
client's loop lag is measured alongside. A connection's first request is reported apart from
the rest: it waits for the worker to accept the connection, which under a flood of connections
takes far longer than any request on an accepted one. The gateway's own histograms, read from
`/metrics` before and after each phase, say how much of a worker's time was the wait for the
model version's queue and the predict itself.
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.plan import (
    INFERENCE_LOG_DIR,
    Features,
    ServerSpec,
    gateway_config,
)
from benchmarks.gatewaybench.registry import MODELS, build_registry, model_features, payloads
from benchmarks.gatewaybench.servers import running_servers
from gateway.core import rollout

DEFAULT_SECONDS = 10.0
DEFAULT_CONNECTIONS = (16, 1000)
WARMUP_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 10.0
# A request not answered in this long counts as a timeout, as wrk's --timeout 10s does.
ANSWER_TIMEOUT_SECONDS = 10.0


# The onset of a phase: every connection's first request arrives at once, before any limit has
# reacted. Served requests sent after it are also reported apart.
ONSET_SECONDS = 1.0
# How often the client's loop-lag probe asks to wake up.
LAG_PROBE_SECONDS = 0.005
# The writer thread writes what it holds within 50 ms; this leaves it ample time.
LOG_SETTLE_SECONDS = 1.0
# The gateway's histograms of the two parts of a worker's time that its limits bound.
QUEUE_HISTOGRAM = "gateway_queue_duration_seconds"
PREDICT_HISTOGRAM = "gateway_predict_duration_seconds"
HISTOGRAMS = (QUEUE_HISTOGRAM, PREDICT_HISTOGRAM)


@dataclass
class Answers:
    """What the connections of one phase got: latencies by status, and the errors."""

    latencies: dict[int, list[float]] = field(default_factory=dict)
    # The served requests' ids and latencies, to match with their inference-log records.
    served: dict[str, float] = field(default_factory=dict)
    # The ids of served requests that were the first on their connection.
    first: set[str] = field(default_factory=set)
    # How late the client's loop woke a probe that slept LAG_PROBE_SECONDS, each time.
    loop_lags: list[float] = field(default_factory=list)
    errors: int = 0
    # The latencies of served requests sent ONSET_SECONDS or more after the phase started.
    after_onset: list[float] = field(default_factory=list)

    def add(
        self, status: int, seconds: float, request_id: str, first: bool, after_onset: bool
    ) -> None:
        """One answer of `status` that took `seconds` from writing the request to the last byte;
        `first`: the first request of its connection; `after_onset`: sent after the onset."""
        self.latencies.setdefault(status, []).append(seconds)
        if status == 200:
            self.served[request_id] = seconds
            if first:
                self.first.add(request_id)
            if after_onset:
                self.after_onset.append(seconds)


@dataclass(frozen=True)
class PhaseFigures:
    """One phase's figures: served rate and latency, the share of 503s and their latency."""

    connections: int
    seconds: float
    answers: int
    served: int
    served_per_second: float
    served_p50_ms: float | None
    served_p99_ms: float | None
    shed_share: float
    shed_p50_ms: float | None
    shed_p99_ms: float | None
    other_statuses: dict[int, int]
    errors: int
    client_cpu_seconds: float
    # Served requests that were the first on their connection, and the later ones.
    first_served: int = 0
    first_p99_ms: float | None = None
    later_p50_ms: float | None = None
    later_p99_ms: float | None = None
    # Served requests sent after the phase's first ONSET_SECONDS.
    after_onset_p99_ms: float | None = None
    # The served requests found in the inference log: their time in the worker (`duration_ms`)
    # and the rest of what the client measured (outside the worker), each at p50 and p99.
    matched: int = 0
    worker_p50_ms: float | None = None
    worker_p99_ms: float | None = None
    outside_p50_ms: float | None = None
    outside_p99_ms: float | None = None
    client_lag_p99_ms: float | None = None
    # From the gateway's histograms over the phase: mean (exact) and p99 (interpolated within
    # a bucket, as PromQL's histogram_quantile does) of the queue wait and the predict.
    queue_mean_ms: float | None = None
    queue_p99_ms: float | None = None
    predict_mean_ms: float | None = None
    predict_p99_ms: float | None = None


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
    name: str,
    port: int,
    request: tuple[bytes, bytes],
    until: float,
    answers: Answers,
    polite: bool,
    onset_ends: float,
) -> None:
    """Send the request on one keep-alive connection, again and again, until the loop time
    `until`, each with an id of its own between `request`'s two halves; when `polite`, wait as
    long as a response's Retry-After says before the next."""
    head, tail = request
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError):
        answers.errors += 1
        return
    try:
        for sent in itertools.count():
            if loop.time() >= until:
                break
            request_id = f"{name}-{sent}"
            after_onset = loop.time() >= onset_ends
            started = time.perf_counter()
            writer.write(head + request_id.encode() + tail)
            status, retry_after = await asyncio.wait_for(
                _read_answer(reader), ANSWER_TIMEOUT_SECONDS
            )
            elapsed = time.perf_counter() - started
            answers.add(status, elapsed, request_id, sent == 0, after_onset)
            if polite and retry_after is not None:
                await asyncio.sleep(min(retry_after, max(0.0, until - loop.time())))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        answers.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _probe_lag(until: float, answers: Answers) -> None:
    """Sleep LAG_PROBE_SECONDS again and again, noting how late the client's loop woke up."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        asked = time.perf_counter()
        await asyncio.sleep(LAG_PROBE_SECONDS)
        answers.loop_lags.append(max(0.0, time.perf_counter() - asked - LAG_PROBE_SECONDS))


async def _phase(
    port: int, request: tuple[bytes, bytes], connections: int, seconds: float, polite: bool
) -> Answers:
    answers = Answers()
    now = asyncio.get_running_loop().time()
    until, onset_ends = now + seconds, now + ONSET_SECONDS
    # Ids unique to the phase: the inference log holds every phase's records.
    phase = f"overload-{time.time_ns():x}"
    await asyncio.gather(
        _probe_lag(until, answers),
        *(
            _connection(f"{phase}-{number}", port, request, until, answers, polite, onset_ends)
            for number in range(connections)
        ),
    )
    return answers


def worker_durations(log_dir: Path, request_ids: Iterable[str]) -> dict[str, float]:
    """The `duration_ms` of each of `request_ids` that has a served record in the inference log."""
    wanted = set(request_ids)
    found: dict[str, float] = {}
    for path in sorted(log_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if '"overload-' not in line:  # not one of the benchmark's own ids
                    continue
                try:
                    record = json.loads(line)
                except ValueError:  # a line still being written
                    continue
                request_id = record.get("request_id")
                if request_id in wanted and record.get("status_code") == 200:
                    found[request_id] = record["duration_ms"] / 1000
    return found


@dataclass(frozen=True)
class Histogram:
    """One histogram summed over its label sets: cumulative counts by upper bound, and its sum."""

    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    total: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def mean_ms(self) -> float | None:
        return self.total / self.count * 1000 if self.count else None

    def quantile_ms(self, quantile: float) -> float | None:
        """The quantile as PromQL's histogram_quantile reads it (the rollout guard's own)."""
        found = rollout.quantile(self.buckets, quantile)
        return None if found is None else found * 1000


def histograms(port: int) -> dict[str, Histogram]:
    """The queue and predict histograms the gateway exposes on `/metrics`, over every series."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse_histograms(response.read().decode())


def parse_histograms(text: str) -> dict[str, Histogram]:
    """The histograms of HISTOGRAMS in a Prometheus exposition, each summed over its series."""
    counts: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    totals = dict.fromkeys(HISTOGRAMS, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name not in counts:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                counts[family.name][bound] = counts[family.name].get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                totals[family.name] += sample.value
    return {
        name: Histogram(tuple(sorted(counts[name].items())), totals[name]) for name in HISTOGRAMS
    }


def _difference(after: Histogram, before: Histogram) -> Histogram:
    """What was observed between two readings of one histogram."""
    earlier = dict(before.buckets)
    return Histogram(
        tuple((bound, count - earlier.get(bound, 0.0)) for bound, count in after.buckets),
        after.total - before.total,
    )


def measure(
    port: int,
    request: tuple[bytes, bytes],
    connections: int,
    seconds: float,
    polite: bool = False,
    log_dir: Path | None = None,
) -> PhaseFigures:
    """Drive the gateway with `connections` for `seconds`; the figures of every answer.

    `polite` clients wait as Retry-After says after a 503; the others ask again at once. With
    `log_dir`, the gateway's inference log, each served request's time is also split into the
    part inside the worker and the rest.
    """
    before = histograms(port)
    cpu = time.process_time()
    started = time.perf_counter()
    answers = uvloop.run(_phase(port, request, connections, seconds, polite))
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu
    queue, predict = (_difference(histograms(port)[name], before[name]) for name in HISTOGRAMS)
    later = [s for request_id, s in answers.served.items() if request_id not in answers.first]
    first = [answers.served[request_id] for request_id in answers.first]
    served = answers.latencies.get(200, [])
    shed = answers.latencies.get(503, [])
    total = sum(len(values) for values in answers.latencies.values())
    inside: list[float] = []
    outside: list[float] = []
    if log_dir is not None:
        time.sleep(LOG_SETTLE_SECONDS)
        for request_id, worker in worker_durations(log_dir, answers.served).items():
            inside.append(worker)
            outside.append(max(0.0, answers.served[request_id] - worker))
    return PhaseFigures(
        connections=connections,
        seconds=round(elapsed, 2),
        answers=total,
        served=len(served),
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
        client_cpu_seconds=round(client_cpu, 2),
        first_served=len(first),
        first_p99_ms=_percentile_ms(first, 99),
        later_p50_ms=_percentile_ms(later, 50),
        later_p99_ms=_percentile_ms(later, 99),
        after_onset_p99_ms=_percentile_ms(answers.after_onset, 99),
        matched=len(inside),
        worker_p50_ms=_percentile_ms(inside, 50),
        worker_p99_ms=_percentile_ms(inside, 99),
        outside_p50_ms=_percentile_ms(outside, 50),
        outside_p99_ms=_percentile_ms(outside, 99),
        client_lag_p99_ms=_percentile_ms(answers.loop_lags, 99),
        queue_mean_ms=queue.mean_ms(),
        queue_p99_ms=queue.quantile_ms(0.99),
        predict_mean_ms=predict.mean_ms(),
        predict_p99_ms=predict.quantile_ms(0.99),
    )


def _request(body: bytes, port: int) -> tuple[bytes, bytes]:
    """The request in two halves, to be sent with its `x-request-id` value between them."""
    head = f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Request-Id: "
    tail = f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode(), tail.encode() + body


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(phases: Sequence[PhaseFigures]) -> str:
    """The phases as a Markdown table."""
    lines = [
        "| connections | served req/s | served p50 ms | served p99 ms "
        f"| p99 ms after {ONSET_SECONDS:g} s | 503 share | 503 p50 ms | 503 p99 ms | other "
        "| socket errors |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in phases:
        other = sum(p.other_statuses.values())
        lines.append(
            f"| {p.connections:,} | {p.served_per_second:,.0f} | {_ms(p.served_p50_ms)} "
            f"| {_ms(p.served_p99_ms)} | {_ms(p.after_onset_p99_ms)} | {p.shed_share:.1%} "
            f"| {_ms(p.shed_p50_ms)} "
            f"| {_ms(p.shed_p99_ms)} | {other} | {p.errors} |"
        )
    return "\n".join(lines)


def where_table(phases: Sequence[PhaseFigures]) -> str:
    """Where the served requests' time went, as a Markdown table."""
    lines = [
        "| connections | first on a connection: served, p99 ms | later: p50 ms | p99 ms "
        "| matched in the log | in the worker p50 ms | p99 ms | queue mean ms | p99 ms "
        "| predict mean ms | p99 ms | outside the worker p50 ms | p99 ms "
        "| client loop lag p99 ms | client CPU s |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in phases:
        lines.append(
            f"| {p.connections:,} | {p.first_served:,}, {_ms(p.first_p99_ms)} "
            f"| {_ms(p.later_p50_ms)} | {_ms(p.later_p99_ms)} | {p.matched:,} of {p.served:,} "
            f"| {_ms(p.worker_p50_ms)} | {_ms(p.worker_p99_ms)} | {_ms(p.queue_mean_ms)} "
            f"| {_ms(p.queue_p99_ms)} | {_ms(p.predict_mean_ms)} | {_ms(p.predict_p99_ms)} "
            f"| {_ms(p.outside_p50_ms)} | {_ms(p.outside_p99_ms)} "
            f"| {_ms(p.client_lag_p99_ms)} | {p.client_cpu_seconds:.1f} |"
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
    # On a small machine the client takes cores from the gateway it measures: pinned apart,
    # the gateway's own limits are what the figures show.
    parser.add_argument(
        "--server-cpus",
        type=cpu_list,
        help="run the gateway on these CPUs only, e.g. 0 or 0-1,4 (default: any)",
    )
    parser.add_argument(
        "--client-cpus", type=cpu_list, help="run the client on these CPUs only (default: any)"
    )
    return parser


def cpu_list(text: str) -> set[int]:
    """CPUs as `taskset -c` writes them: `0`, `0,2`, `0-3,6`."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            start, end = int(first), int(last or first)
            if start < 0 or end < start:
                raise ValueError(part)
            cpus.update(range(start, end + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list: {text!r}") from None
    return cpus


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
        allowed = os.sched_getaffinity(0)
        try:
            if args.server_cpus is not None:  # the gateway's processes inherit it when started
                os.sched_setaffinity(0, args.server_cpus)
            with running_servers([spec], directory, tracking_uri) as (server,):
                os.sched_setaffinity(0, args.client_cpus or allowed)
                request = _request(body, server.port)
                measure(server.port, request, 16, WARMUP_SECONDS)
                phases = []
                for connections in args.connections:
                    print(f"{connections} connections for {args.seconds:g} s ...", flush=True)
                    phases.append(
                        measure(
                            server.port,
                            request,
                            connections,
                            args.seconds,
                            args.honour_retry_after,
                            log_dir=directory / INFERENCE_LOG_DIR,
                        )
                    )
                    server.check_alive()
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(table(phases))
    print()
    print(where_table(phases))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(p) for p in phases], indent=2), encoding="utf-8")
    return 0
