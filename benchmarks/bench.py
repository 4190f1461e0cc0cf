"""Throughput, latency, CPU and memory of the gateway against `mlflow models serve`, on loopback.

Run `python benchmarks/bench.py` (about 7 minutes on 2 cores). It builds the demo registry in a
temporary directory, starts `mlflow models serve` and the gateway in five configurations, checks
that all of them answer the same payloads with identical bytes, then drives each with `wrk` and
writes a Markdown table and a JSON file (`--out`, default benchmark-results/latest.md) with a
"targets" section. `--smoke` starts the same servers and only checks their answers (no wrk).

Exit status: 0 when every server answered correctly, whether or not the targets are met; 1 when a
server could not start, crashed, or answered differently from `mlflow models serve`.
"""

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml

from gateway import __version__ as gateway_version
from gateway.commands.demo import FEATURES, MODEL_NAME, build_demo, synthetic_customers

# Run as a script, this file's own directory is on the path, not the one that holds `benchmarks`.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.plan import (
    CONNECTIONS,
    FEATURE_CONNECTIONS,
    FEATURE_ROWS,
    FEATURE_ROWS_BY_KEY,
    FEATURE_WORKERS,
    INFERENCE_LOG_DIR,
    ROWS,
    STICKY_HEADER,
    USER_IDS,
    Cell,
    Features,
    cells,
    server_specs,
)
from benchmarks.gatewaybench.procfs import RssSampler, cpu_snapshot, cpu_usage, worker_pids
from benchmarks.gatewaybench.servers import RunningServer, running_servers

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmark-results" / "latest.md"

# Every cell is measured in rounds: all cells once, then all again. A machine whose speed drifts
# (a neighbour, the hypervisor) then slows every server alike, and each figure is the median of
# its rounds. 21 cells x 3 rounds x (warm-up + 4 s) + a minute of set-up: about 7 minutes.
DEFAULT_DURATION_SECONDS = 12
DEFAULT_ROUNDS = 3
MAX_DURATION_SECONDS = 60
MAX_ROUNDS = 10
WARMUP_SECONDS = 2
# Before each later round of a cell: wrk's new connections, nothing left to warm up.
REWARM_SECONDS = 1
# Before the first round, every server serves each payload on this many connections, enough
# for the kernel to hand some to every worker.
WARM_UP_CONNECTIONS = 16
# Two medians closer than this are equal: the spread of one cell's rounds on a quiet 2-core
# machine. Used where a target compares two gateways ("never slower").
EQUAL_WITHIN = 0.03
# wrk's default (2 s) would count MLflow's slowest answers at 64 connections as timeouts and
# leave them out of its percentiles.
WRK_TIMEOUT = "10s"
SMOKE_REQUESTS = 20
HTTP_TIMEOUT_SECONDS = 30.0
# The memory target: a worker's RSS at the end of the run within this much of the same cell's
# earlier on (allocator noise, not growth per request).
RSS_GROWTH_LIMIT = 0.02
# Another process using more than this share of one core during a cell is worth a warning.
OTHER_CPU_WARNING_PERCENT = 10.0
PAYLOAD_SEED = 11

FORCE_HEADER = "x-gateway-variant"


@dataclass
class Result:
    """What one cell measured; ratios are against `mlflow models serve` at the same conns/rows."""

    server: str
    workers: int
    connections: int
    rows: int
    features: str
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float | None
    rss_mib_per_worker: float | None
    client_cpu_seconds: float
    other_cpu_percent: float
    steal_percent: float
    rps_ratio: float | None = None
    p99_ratio: float | None = None
    cpu_seconds_by_process: dict[str, float] = field(default_factory=dict)
    rss_mib_by_worker: dict[str, float] = field(default_factory=dict)
    wrk_output: str = ""
    # Each round's own figures, in the order they were measured (one entry for a single round).
    rounds: list["Round"] = field(default_factory=list)


@dataclass(frozen=True)
class Round:
    """One round of a cell: what wrk and the sampler saw in it."""

    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    rss_mib_per_worker: float | None


@dataclass(frozen=True)
class Target:
    """One goal, whether it was met, and the figures that decide it."""

    goal: str
    met: bool
    detail: str


# --- payloads and answers ------------------------------------------------------------------


def payloads(features: Sequence[str]) -> dict[int, bytes]:
    """A `dataframe_split` JSON body per row count, from the demo's synthetic customers."""
    frame, _ = synthetic_customers(rows=max(ROWS), seed=PAYLOAD_SEED)
    columns = frame[list(features)]
    data = [
        [value.item() if hasattr(value, "item") else value for value in row]
        for row in columns.itertuples(index=False)
    ]
    return {
        rows: json.dumps(
            {"dataframe_split": {"columns": list(features), "data": data[:rows]}}
        ).encode()
        for rows in ROWS
    }


# The model that the reference figures for `mlflow models serve` were taken with: a plain
# LogisticRegression on numeric columns, no preprocessing pipeline.
NUMERIC_FEATURES = ("tenure_months", "monthly_charges", "support_calls")
MODELS = ("pipeline", "logistic")


def build_logistic_registry(directory: Path) -> str:
    """A sqlite registry with `churn` v1 @champion and v2 @challenger as plain LogisticRegressions."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from gateway.commands.demo import VARIANTS

    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    experiment = mlflow.create_experiment(
        "bench", artifact_location=(directory / "artifacts").as_uri()
    )
    frame, labels = synthetic_customers(rows=4_000, seed=7)
    features = frame[list(NUMERIC_FEATURES)].astype("float64")
    for alias, regularisation in VARIANTS.items():
        model = LogisticRegression(C=regularisation).fit(features, labels)
        signature = infer_signature(features.head(20), model.predict(features.head(20)))
        with mlflow.start_run(experiment_id=experiment, run_name=f"bench-{alias}"):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                registered_model_name=MODEL_NAME,
                serialization_format="skops",
            )
        client.set_registered_model_alias(MODEL_NAME, alias, str(info.registered_model_version))
    return uri


def _post(
    client: httpx.Client, server: RunningServer, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    try:
        return client.post(
            f"{server.url}/invocations",
            content=body,
            headers={"Content-Type": "application/json", **headers},
        )
    except httpx.HTTPError as exc:
        raise BenchmarkError(f"{server.spec.name}: request failed: {exc!r}") from exc


def warm_up(
    wrk: str, servers: Sequence[RunningServer], bodies: dict[int, bytes], directory: Path
) -> None:
    """Serve every payload on every worker of every server before anything is measured.

    A cell's own warm-up cannot do that at one connection: its connection reaches one worker,
    and the measured run's new connection may reach another one, still cold.
    """
    for server in servers:
        for rows, body in bodies.items():
            sticky = server.spec.split
            script = directory / f"warm-{'sticky' if sticky else 'plain'}-{rows}.lua"
            script.write_text(wrk_script(body, sticky_ids=sticky), encoding="utf-8")
            run_wrk(wrk, server.url, script, WARM_UP_CONNECTIONS, WARMUP_SECONDS)
        server.check_alive()
    print(f"warmed every worker of {len(servers)} servers", flush=True)


def check_predictions(
    servers: Sequence[RunningServer], bodies: dict[int, bytes]
) -> dict[int, bytes]:
    """Every server answers each payload with MLflow's bytes; returns MLflow's answers."""
    reference: dict[int, bytes] = {}
    with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as client:
        for server in servers:
            # A split endpoint is forced onto the champion, the version MLflow serves.
            headers = {FORCE_HEADER: "champion"} if server.spec.split else {}
            for rows, body in bodies.items():
                response = _post(client, server, body, headers)
                answer = response.content
                if server.spec.gateway_config is None:
                    _check_shape(server, rows, response)
                    reference[rows] = answer
                    continue
                variant = response.headers.get(FORCE_HEADER)
                if response.status_code != 200 or answer != reference[rows]:
                    raise BenchmarkError(
                        f"predictions differ for the {rows}-row payload: {server.spec.name} "
                        f"answered {response.status_code} {_clip(answer)}, mlflow serve answered "
                        f"200 {_clip(reference[rows])}"
                    )
                if variant != "champion":
                    raise BenchmarkError(
                        f"{server.spec.name} served variant {variant!r}, expected 'champion'"
                    )
    print("predictions identical on every server for " + ", ".join(f"{r}-row" for r in bodies))
    return reference


def _check_shape(server: RunningServer, rows: int, response: httpx.Response) -> None:
    try:
        predictions = response.json()["predictions"]
    except (ValueError, KeyError, TypeError):
        predictions = None
    if response.status_code != 200 or not isinstance(predictions, list) or len(predictions) != rows:
        raise BenchmarkError(
            f"{server.spec.name} answered {response.status_code} {_clip(response.content)} "
            f"for the {rows}-row payload; expected {rows} prediction(s)"
        )


def _clip(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --- smoke mode ----------------------------------------------------------------------------


def smoke(
    servers: Sequence[RunningServer], bodies: dict[int, bytes], reference: dict[int, bytes]
) -> list[dict[str, Any]]:
    """SMOKE_REQUESTS requests per server, as the load would send them; each answer checked."""
    rows_out = []
    with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as client:
        for server in servers:
            for index in range(SMOKE_REQUESTS):
                rows = ROWS[index % len(ROWS)]
                headers = {STICKY_HEADER: _user_id(index)} if server.spec.split else {}
                response = _post(client, server, bodies[rows], headers)
                _check_shape(server, rows, response)
                variant = response.headers.get(FORCE_HEADER, "champion")
                if variant == "champion" and response.content != reference[rows]:
                    raise BenchmarkError(
                        f"predictions differ: {server.spec.name} answered "
                        f"{_clip(response.content)} for the {rows}-row payload, mlflow serve "
                        f"answered {_clip(reference[rows])}"
                    )
            rows_out.append(
                {
                    "server": server.spec.label,
                    "workers": server.spec.workers,
                    "features": server.spec.features,
                    "answers checked": SMOKE_REQUESTS,
                }
            )
            print(f"{server.spec.name} ({server.spec.features}): {SMOKE_REQUESTS} correct answers")
    return rows_out


def _user_id(index: int) -> str:
    return f"user-{index % USER_IDS:05d}"


# --- wrk -----------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of wrk; installs the Debian package when running as root, else explains how."""
    path = shutil.which("wrk")
    if path is not None:
        return path
    command = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchmarkError(
            "wrk is not installed; install it (Debian/Ubuntu: `sudo apt-get update && "
            "sudo apt-get install -y wrk`), or run with --smoke to check the servers only"
        )
    print("wrk is not installed; running `apt-get update` and `" + " ".join(command) + "`")
    for step in (["apt-get", "update"], command):
        completed = subprocess.run(step, check=False, timeout=600)
        if completed.returncode != 0:
            raise BenchmarkError(f"`{' '.join(step)}` failed with status {completed.returncode}")
    path = shutil.which("wrk")
    if path is None:
        raise BenchmarkError("apt-get installed wrk, but it is not on PATH")
    return path


def wrk_version(wrk: str) -> str:
    """wrk's version line (`wrk -v` prints it, then its usage, and exits with 1)."""
    completed = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    lines = (completed.stdout or completed.stderr).splitlines()
    return lines[0].strip() if lines else "wrk"


_STICKY_LUA = """
-- Each request carries the next of `users` fixed user ids in the `sticky_header` header; each
-- thread starts at a different id.
local thread_count = 0
function setup(thread)
  thread:set("first_user", thread_count * 4999)
  thread_count = thread_count + 1
end

local requests = {}
local current = 0
function init(args)
  for i = 1, users do
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers[sticky_header] = string.format("user-%05d", i - 1)
    requests[i] = wrk.format(nil, nil, headers)
  end
  current = (first_user or 0) % users
end

function request()
  current = current % users + 1
  return requests[current]
end
"""


def wrk_script(body: bytes, *, sticky_ids: bool) -> str:
    """Lua for wrk: POST `body` as JSON, with a varying X-User-Id header when `sticky_ids`."""
    text = body.decode("utf-8")
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    script = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        f"wrk.body = [{'=' * level}[{text}]{'=' * level}]",
    ]
    if sticky_ids:
        script += [f"users = {USER_IDS}", f'sticky_header = "{STICKY_HEADER}"', _STICKY_LUA]
    return "\n".join(script) + "\n"


@dataclass(frozen=True)
class WrkFigures:
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> WrkFigures:
    """Requests, req/s, p50, p99 and errors (socket errors + non-2xx/3xx) from `wrk --latency`."""
    percentiles = {
        int(match["p"]): float(match["value"]) * _UNIT_MS[match["unit"]]
        for match in re.finditer(
            r"^\s+(?P<p>50|99)%\s+(?P<value>[\d.]+)(?P<unit>us|ms|s|m|h)\s*$",
            output,
            re.MULTILINE,
        )
    }
    requests = re.search(r"^\s+(\d+) requests in ", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if requests is None or rate is None or set(percentiles) != {50, 99}:
        raise BenchmarkError(f"cannot read wrk's output:\n{output}")
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors is not None:
        errors += sum(int(count) for count in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx is not None:
        errors += int(non_2xx.group(1))
    return WrkFigures(
        int(requests.group(1)), float(rate.group(1)), percentiles[50], percentiles[99], errors
    )


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: int) -> str:
    threads = min(connections, 2)
    command = [
        *(wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"),
        *("--timeout", WRK_TIMEOUT, "--latency", "-s", str(script), f"{url}/invocations"),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"wrk failed ({completed.returncode}):\n{completed.stderr}")
    return completed.stdout


def measure(
    wrk: str,
    server: RunningServer,
    cell: Cell,
    body: bytes,
    directory: Path,
    duration: int,
    warmup: int = WARMUP_SECONDS,
) -> Result:
    """Warm up, then drive the server for `duration` seconds, sampling its CPU and memory."""
    script = directory / f"wrk-{'sticky' if cell.sticky_ids else 'plain'}-{cell.rows}.lua"
    script.write_text(wrk_script(body, sticky_ids=cell.sticky_ids), encoding="utf-8")
    run_wrk(wrk, server.url, script, cell.connections, warmup)
    server.check_alive()
    workers = worker_pids(server.pid)
    before = cpu_snapshot(server.pid)
    with RssSampler(workers) as sampler:
        output = run_wrk(wrk, server.url, script, cell.connections, duration)
    cpu = cpu_usage(before, cpu_snapshot(server.pid))
    server.check_alive()
    figures = parse_wrk(output)
    peak = max(sampler.peaks.values()) if sampler.peaks else None
    return Result(
        server=server.spec.label,
        workers=server.spec.workers,
        connections=cell.connections,
        rows=cell.rows,
        features=cell.label,
        requests=figures.requests,
        requests_per_second=figures.requests_per_second,
        p50_ms=figures.p50_ms,
        p99_ms=figures.p99_ms,
        errors=figures.errors,
        cpu_ms_per_request=(
            cpu.server_seconds * 1000 / figures.requests if figures.requests else None
        ),
        rss_mib_per_worker=peak,
        client_cpu_seconds=round(cpu.client_seconds, 2),
        other_cpu_percent=round(cpu.other_percent, 1),
        steal_percent=round(cpu.steal_percent, 1),
        cpu_seconds_by_process={
            str(pid): round(seconds, 2) for pid, seconds in cpu.server_seconds_by_process.items()
        },
        rss_mib_by_worker={str(pid): round(rss, 1) for pid, rss in sampler.peaks.items()},
        wrk_output=output,
        rounds=[
            Round(
                figures.requests, figures.requests_per_second, figures.p50_ms, figures.p99_ms, peak
            )
        ],
    )


def merge_rounds(rounds: Sequence[Result]) -> Result:
    """One cell's figures from its rounds: medians of rates and latencies, totals of the rest."""
    first = rounds[0]
    requests = sum(r.requests for r in rounds)
    cpu_seconds = sum(
        r.cpu_ms_per_request * r.requests / 1000 for r in rounds if r.cpu_ms_per_request
    )
    by_process: dict[str, float] = {}
    rss_by_worker: dict[str, float] = {}
    for r in rounds:
        for pid, seconds in r.cpu_seconds_by_process.items():
            by_process[pid] = round(by_process.get(pid, 0.0) + seconds, 2)
        for pid, rss in r.rss_mib_by_worker.items():
            rss_by_worker[pid] = max(rss, rss_by_worker.get(pid, 0.0))
    peaks = [r.rss_mib_per_worker for r in rounds if r.rss_mib_per_worker is not None]
    return Result(
        server=first.server,
        workers=first.workers,
        connections=first.connections,
        rows=first.rows,
        features=first.features,
        requests=requests,
        requests_per_second=statistics.median(r.requests_per_second for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
        cpu_ms_per_request=cpu_seconds * 1000 / requests if requests and cpu_seconds else None,
        rss_mib_per_worker=max(peaks) if peaks else None,
        client_cpu_seconds=round(sum(r.client_cpu_seconds for r in rounds), 2),
        other_cpu_percent=round(statistics.mean(r.other_cpu_percent for r in rounds), 1),
        steal_percent=round(statistics.mean(r.steal_percent for r in rounds), 1),
        cpu_seconds_by_process=by_process,
        rss_mib_by_worker=rss_by_worker,
        wrk_output="\n".join(r.wrk_output for r in rounds),
        rounds=[each for r in rounds for each in r.rounds],
    )


def add_ratios(results: Sequence[Result]) -> None:
    """Fill each result's req/s and p99 ratios against MLflow at the same conns and rows."""
    yardstick = {(r.connections, r.rows): r for r in results if r.server == "mlflow serve"}
    for result in results:
        mlflow = yardstick.get((result.connections, result.rows))
        if mlflow is None:
            continue
        if mlflow.requests_per_second > 0:
            result.rps_ratio = result.requests_per_second / mlflow.requests_per_second
        if mlflow.p99_ms > 0:
            result.p99_ratio = result.p99_ms / mlflow.p99_ms


# --- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observability:
    """Whether the server of row (c) really logged and exposed metrics while it was measured."""

    inference_log_bytes: int
    metrics_status: int | None

    @property
    def active(self) -> bool:
        return self.inference_log_bytes > 0 and self.metrics_status == 200

    def describe(self) -> str:
        metrics = "no answer" if self.metrics_status is None else str(self.metrics_status)
        return f"inference log {self.inference_log_bytes:,} bytes, GET /metrics {metrics}"


def check_observability(server: RunningServer, log_dir: Path) -> Observability:
    """What row (c)'s server left: inference-log bytes on disk and the status of /metrics."""
    written = sum(path.stat().st_size for path in log_dir.rglob("*") if path.is_file())
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as client:
            status: int | None = client.get(f"{server.url}/metrics").status_code
    except httpx.HTTPError:
        status = None
    return Observability(written, status)


def evaluate_targets(
    results: Sequence[Result], observability: Observability | None = None
) -> list[Target]:
    """The goals the gateway is built for, checked against this run's figures."""

    def find(features: str, connections: int, rows: int, workers: int = 1) -> Result | None:
        return next(
            (
                r
                for r in results
                if r.features == features
                and r.connections == connections
                and r.rows == rows
                and r.workers == workers
            ),
            None,
        )

    targets: list[Target] = []
    mlflow = find(Features.NONE, FEATURE_CONNECTIONS, FEATURE_ROWS)
    observed = find(
        FEATURE_ROWS_BY_KEY["gateway-observed"], FEATURE_CONNECTIONS, FEATURE_ROWS, FEATURE_WORKERS
    )
    split = find(
        FEATURE_ROWS_BY_KEY["gateway-split"], FEATURE_CONNECTIONS, FEATURE_ROWS, FEATURE_WORKERS
    )
    where = f"{FEATURE_ROWS} row, {FEATURE_CONNECTIONS} conns, split + sticky + log + metrics"
    if mlflow is None or observed is None or split is None:
        targets.append(
            Target(f"{where}: the feature rows", False, "NOT MEASURED: a row is missing")
        )
    if mlflow is not None and observed is not None:
        ratio = observed.requests_per_second / mlflow.requests_per_second
        targets.append(
            Target(
                f"{where}: req/s >= 20x mlflow's",
                ratio >= 20,
                f"{observed.requests_per_second:.0f} vs {mlflow.requests_per_second:.0f} "
                f"req/s = {ratio:.1f}x",
            )
        )
        targets.append(
            Target(
                f"{where}: p99 <= 1/10 of mlflow's",
                observed.p99_ms * 10 <= mlflow.p99_ms,
                f"{observed.p99_ms:.2f} vs {mlflow.p99_ms:.2f} ms = "
                f"1/{mlflow.p99_ms / observed.p99_ms:.1f}",
            )
        )
    single_conn = [
        r for r in results if r.server == "gateway" and (r.connections, r.rows) == (1, 1)
    ]
    if single_conn:
        targets.append(
            Target(
                "1 row, 1 conn: gateway p50 <= 1 ms",
                all(r.p50_ms <= 1.0 for r in single_conn),
                ", ".join(f"--workers {r.workers}: {r.p50_ms:.2f} ms" for r in single_conn),
            )
        )
    if split is not None and observed is not None:
        change = observed.requests_per_second / split.requests_per_second - 1
        detail = (
            f"{observed.requests_per_second:.0f} vs {split.requests_per_second:.0f} req/s "
            f"({change:+.1%}); p50 {observed.p50_ms:.2f} vs {split.p50_ms:.2f} ms"
        )
        # A gateway that neither logs nor serves /metrics would meet this target for free.
        active = observability is None or observability.active
        if observability is not None:
            detail += f"; row (c) left {observability.describe()}"
            if not active:
                detail += ", so (c) did not log and expose metrics: their cost is not measured"
        targets.append(
            Target(
                "inference log + metrics on costs <= 10% req/s (c vs b)",
                active and change >= -0.10,
                detail,
            )
        )
    pairs = [
        (one, two)
        for rows in ROWS
        for connections in CONNECTIONS
        if (one := find(Features.SINGLE, connections, rows, workers=1)) is not None
        and (two := find(Features.SINGLE, connections, rows, workers=2)) is not None
    ]
    if pairs:
        slower = [
            f"{one.connections} conns/{one.rows} rows: {two.requests_per_second:.1f} vs "
            f"{one.requests_per_second:.1f} req/s"
            for one, two in pairs
            if two.requests_per_second < one.requests_per_second * (1 - EQUAL_WITHIN)
        ]
        ratios = [two.requests_per_second / one.requests_per_second for one, two in pairs]
        targets.append(
            Target(
                f"--workers 2 never slower than --workers 1 (medians; within "
                f"{EQUAL_WITHIN:.0%} is equal)",
                not slower,
                ("slower at " + "; ".join(slower) + "; " if slower else "")
                + f"{len(pairs)} cells, --workers 2 at {min(ratios):.2f}x-{max(ratios):.2f}x",
            )
        )
    targets += _memory_target(results)
    errors = sum(r.errors for r in results)
    failing = [
        f"{r.server} -w {r.workers} {r.connections} conns/{r.rows} rows {r.features}: {r.errors}"
        for r in results
        if r.errors
    ]
    targets.append(
        Target(
            "0 errors (non-2xx and socket errors)",
            errors == 0,
            f"{errors} errors in {sum(r.requests for r in results)} requests"
            + (": " + "; ".join(failing) if failing else ""),
        )
    )
    return targets


def _memory_target(results: Sequence[Result]) -> list[Target]:
    """RSS of gateway --workers 2 at the same setting early in the run and at its very end."""
    same = [
        r
        for r in results
        if r.server == "gateway"
        and r.workers == FEATURE_WORKERS
        and r.features in (Features.SINGLE, FEATURE_ROWS_BY_KEY["gateway-2"])
    ]
    setting = [r for r in same if (r.connections, r.rows) == (FEATURE_CONNECTIONS, FEATURE_ROWS)]
    if not setting or not setting[0].rounds:
        return []
    # The matrix cell's first round comes early in the run; row (a), the same server and setting,
    # is the last cell of a forward round, so its last round is at or near the end of the run.
    first, last = setting[0].rounds[0], setting[-1].rounds[-1]
    if first is last or first.rss_mib_per_worker is None or last.rss_mib_per_worker is None:
        return []
    served = sum(r.requests for r in same) - first.requests
    growth = last.rss_mib_per_worker - first.rss_mib_per_worker
    return [
        Target(
            f"memory flat: RSS per worker of gateway --workers {FEATURE_WORKERS} at "
            f"{FEATURE_CONNECTIONS} conns/{FEATURE_ROWS} row grows <= {RSS_GROWTH_LIMIT:.0%} "
            "over the run",
            growth <= first.rss_mib_per_worker * RSS_GROWTH_LIMIT,
            f"{first.rss_mib_per_worker:.1f} -> {last.rss_mib_per_worker:.1f} MiB "
            f"({growth:+.1f} MiB) after {served:,} more requests",
        )
    ]


# --- report --------------------------------------------------------------------------------

COLUMNS = (
    "server",
    "workers",
    "conns",
    "rows",
    "features",
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "CPU ms/req",
    "RSS MiB/worker",
    "req/s vs mlflow",
    "p99 vs mlflow",
)


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def result_row(result: Result) -> list[str]:
    return [
        result.server,
        str(result.workers),
        str(result.connections),
        str(result.rows),
        result.features,
        _number(result.requests_per_second, 0),
        _number(result.p50_ms, 2),
        _number(result.p99_ms, 2),
        str(result.errors),
        _number(result.cpu_ms_per_request, 2),
        _number(result.rss_mib_per_worker, 0),
        _ratio(result.rps_ratio),
        _ratio(result.p99_ratio),
    ]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table padded to line up in a terminal; numbers right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    numeric = [
        all(re.fullmatch(r"[\d.,x]+|n/a", row[i]) for row in rows) if rows else False
        for i in range(len(header))
    ]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (width + 1) + ":" if right else "-" * (width + 2)
            for width, right in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def environment(wrk: str | None) -> dict[str, Any]:
    """What the figures depend on: machine, interpreter, versions."""
    import mlflow

    cpu_model = "?"
    with contextlib.suppress(OSError):
        match = re.search(
            r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE
        )
        cpu_model = match.group(1).strip() if match else cpu_model
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "gateway": gateway_version,
        "wrk": wrk_version(wrk) if wrk else None,
    }


_MODEL_WORDS = {
    "pipeline": "the demo's scikit-learn Pipeline (ColumnTransformer: StandardScaler + OneHotEncoder, then LogisticRegression) on 4 columns",
    "logistic": "a plain scikit-learn LogisticRegression on 3 numeric columns",
}


def _preamble(env: dict[str, Any], settings: dict[str, Any]) -> str:
    machine = f"{env['cpus']} CPUs ({env['cpu_model']}), Python {env['python']}"
    versions = f"MLflow {env['mlflow']}, gateway {env['gateway']}"
    if env["wrk"]:
        versions += f", {env['wrk']}"
    text = f"{env['date']}; {machine}; {versions}.\n"
    if not settings["smoke"]:
        rounds = settings.get("rounds", 1)
        each = max(1, round(settings["duration_seconds"] / rounds))
        text += (
            f"Each cell: {rounds} round(s), all cells in turn; each round {each} s of wrk after a "
            f"{settings['warmup_seconds']} s warm-up ({settings.get('rewarm_seconds', 1)} s in "
            f"later rounds), in a closed loop (`-c conns -t min(conns, 2)`) on 127.0.0.1; "
            f"req/s, p50 and p99 are the medians of the rounds; "
            f"payloads are `dataframe_split` JSON. Ratios are gateway / mlflow serve at the same "
            f"conns and rows. Model: {_MODEL_WORDS[settings.get('model', 'pipeline')]}.\n"
        )
    return text


def disturbance_notes(results: Sequence[Result]) -> list[str]:
    """A warning when other processes or the hypervisor took a noticeable share of the CPU."""

    def taken(result: Result) -> float:
        return result.other_cpu_percent + result.steal_percent

    disturbed = [r for r in results if taken(r) > OTHER_CPU_WARNING_PERCENT]
    if not disturbed:
        return []
    worst = max(disturbed, key=taken)
    mean = sum(taken(r) for r in results) / len(results)
    return [
        f"Other processes (or the hypervisor, as steal time) took more than "
        f"{OTHER_CPU_WARNING_PERCENT:.0f}% of a core during {len(disturbed)} of {len(results)} "
        f"cells (mean {mean:.0f}%, at most {taken(worst):.0f}% during {worst.server} "
        f"-w {worst.workers}, {worst.connections} conns, {worst.rows} rows, {worst.features}); "
        f"those figures are lower than an undisturbed server gets on this machine. "
        f"`other_cpu_percent` and `steal_percent` in the JSON have it per cell."
    ]


def write_report(
    out: Path,
    document: dict[str, Any],
    table: str,
    targets: Sequence[Target],
    notes: Sequence[str] = (),
) -> str:
    """Write the Markdown report to `out` and the JSON document beside it; return the Markdown."""
    title = (
        "Gateway benchmark (smoke: answers checked, nothing measured)"
        if document["settings"]["smoke"]
        else "Gateway benchmark"
    )
    parts = [f"# {title}\n", _preamble(document["environment"], document["settings"]), table, ""]
    if targets:
        parts.append("## Targets\n")
        parts += [f"- **{'MET' if t.met else 'NOT MET'}** {t.goal}: {t.detail}" for t in targets]
        parts.append("")
    if notes:
        parts.append("## Notes\n")
        parts += [f"- {note}" for note in notes]
        parts.append("")
    markdown = "\n".join(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return markdown


# --- main ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="start every server and check its answers; no wrk"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="Markdown report; the JSON goes beside it (default benchmark-results/latest.md)",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="pipeline",
        help="pipeline: the demo's models (default); logistic: a plain LogisticRegression, "
        "the model of the reference figures for mlflow models serve",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        default=DEFAULT_DURATION_SECONDS,
        metavar="SECONDS",
        help=f"measured seconds per cell, over all rounds (default {DEFAULT_DURATION_SECONDS}, "
        f"at most {MAX_DURATION_SECONDS})",
    )
    parser.add_argument(
        "--rounds",
        type=_rounds,
        default=DEFAULT_ROUNDS,
        metavar="N",
        help=f"measure every cell N times, all cells in turn; figures are the rounds' medians "
        f"(default {DEFAULT_ROUNDS}, at most {MAX_ROUNDS})",
    )
    return parser


def _duration(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_DURATION_SECONDS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_DURATION_SECONDS}, got {value}")
    return value


def _rounds(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_ROUNDS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_ROUNDS}, got {value}")
    return value


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or the smoke check); returns the exit status."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    wrk = None if args.smoke else ensure_wrk()
    bodies = payloads(NUMERIC_FEATURES if args.model == "logistic" else FEATURES)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as temporary:
        directory = Path(temporary)
        print(f"building the {args.model} registry in {directory} (about 15 s)", flush=True)
        if args.model == "logistic":
            tracking_uri = build_logistic_registry(directory / "registry")
        else:
            config_path = build_demo(directory / "registry")
            tracking_uri = str(
                yaml.safe_load(config_path.read_text(encoding="utf-8"))["tracking_uri"]
            )
        specs = server_specs(tracking_uri, directory)
        with running_servers(specs, directory, tracking_uri) as servers:
            reference = check_predictions(servers, bodies)
            settings = {
                "model": args.model,
                "smoke": args.smoke,
                "duration_seconds": args.duration,
                "rounds": args.rounds,
                "warmup_seconds": WARMUP_SECONDS,
                "rewarm_seconds": REWARM_SECONDS,
                "wrk_timeout": WRK_TIMEOUT,
                "user_ids": USER_IDS,
            }
            if args.smoke:
                checked = smoke(servers, bodies, reference)
                table = markdown_table(
                    ["server", "workers", "features", "answers checked"],
                    [[str(row[key]) for key in row] for row in checked],
                )
                document = {
                    "environment": environment(None),
                    "settings": settings,
                    "smoke": checked,
                }
                print("\n" + write_report(args.out, document, table, []))
                return 0
            assert wrk is not None
            warm_up(wrk, servers, bodies, directory)
            results = _measure_all(wrk, servers, bodies, directory, args.duration, args.rounds)
            observed = next(s for s in servers if s.spec.features is Features.OBSERVED)
            observability = check_observability(observed, directory / INFERENCE_LOG_DIR)
    add_ratios(results)
    targets = evaluate_targets(results, observability)
    table = markdown_table(COLUMNS, [result_row(r) for r in results])
    document = {
        "environment": environment(wrk),
        "settings": settings,
        "results": [asdict(r) for r in results],
        "observability": asdict(observability),
        "targets": [asdict(t) for t in targets],
    }
    notes = disturbance_notes(results)
    print("\n" + write_report(args.out, document, table, targets, notes))
    print(f"written: {args.out} and {args.out.with_suffix('.json')}")
    return 0


def _measure_all(
    wrk: str,
    servers: Sequence[RunningServer],
    bodies: dict[int, bytes],
    directory: Path,
    duration: int,
    rounds: int,
) -> list[Result]:
    by_key = {server.spec.key: server for server in servers}
    planned = cells([server.spec for server in servers])
    each = max(1, round(duration / rounds))
    seconds = len(planned) * (WARMUP_SECONDS + each + (rounds - 1) * (REWARM_SECONDS + each))
    print(
        f"measuring {len(planned)} cells in {rounds} round(s) of {each} s, "
        f"about {seconds / 60:.1f} minutes",
        flush=True,
    )
    measured: list[list[Result]] = [[] for _ in planned]
    for turn in range(rounds):
        warmup = WARMUP_SECONDS if turn == 0 else REWARM_SECONDS
        # Every other round goes backwards: a server measured just after another at one setting
        # is measured just before it in the next round, so their order favours neither.
        order = list(enumerate(planned))
        for index, cell in order if turn % 2 == 0 else reversed(order):
            server = by_key[cell.server.key]
            result = measure(wrk, server, cell, bodies[cell.rows], directory, each, warmup)
            measured[index].append(result)
            print(
                f"[{turn + 1}/{rounds} {index + 1:2}/{len(planned)}] {server.spec.name:<20} "
                f"{cell.label:<38} {cell.connections:>2} conns {cell.rows:>2} rows: "
                f"{result.requests_per_second:8.1f} req/s  p50 {result.p50_ms:8.2f} ms  "
                f"p99 {result.p99_ms:8.2f} ms  errors {result.errors}",
                flush=True,
            )
    return [merge_rounds(results) for results in measured]


if __name__ == "__main__":
    sys.exit(main())
