"""A cell's figures: what one round measured, the medians over rounds, ratios against MLflow."""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


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
