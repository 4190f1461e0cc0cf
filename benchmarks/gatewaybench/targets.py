"""The verdicts: each goal the gateway is built for, met or not, read from a run's figures."""

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.gatewaybench.figures import Result
from benchmarks.gatewaybench.plan import (
    CONNECTIONS,
    FEATURE_CONNECTIONS,
    FEATURE_ROWS,
    FEATURE_ROWS_BY_KEY,
    FEATURE_WORKERS,
    ROWS,
    Features,
)

# Two medians closer than this are equal: the spread of one cell's rounds on a quiet 2-core
# machine. Used where a target compares two gateways ("never slower").
EQUAL_WITHIN = 0.03
# The memory target: a worker's RSS at the end of the run within this much of the same cell's
# earlier on (allocator noise, not growth per request).
RSS_GROWTH_LIMIT = 0.02


@dataclass(frozen=True)
class Target:
    """One goal, whether it was met, and the figures that decide it."""

    goal: str
    met: bool
    detail: str


@dataclass(frozen=True)
class Observability:
    """Whether the server of row (c) really logged and exposed metrics while it was measured."""

    inference_log_bytes: int
    metrics_status: int | None

    @property
    def active(self) -> bool:
        """Whether the server wrote inference-log records and answered /metrics with 200."""
        return self.inference_log_bytes > 0 and self.metrics_status == 200

    def describe(self) -> str:
        """The evidence in words, for a target's detail."""
        metrics = "no answer" if self.metrics_status is None else str(self.metrics_status)
        return f"inference log {self.inference_log_bytes:,} bytes, GET /metrics {metrics}"


def evaluate_targets(
    results: Sequence[Result], observability: Observability | None = None, model: str = "logistic"
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
    # Row (c) is the config a user writes: one endpoint, a 90/10 sticky split, the inference log
    # and metrics on, no `batching` key, --workers 2.
    where = (
        f"default config (row c: {FEATURE_ROWS} row, {FEATURE_CONNECTIONS} conns, "
        "split + sticky + log + metrics)"
    )
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
    targets += _single_connection_targets(results, model)
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


# The models whose champion is a plain LogisticRegression: the 1-connection targets are theirs.
PLAIN_CHAMPION_MODELS = ("logistic", "forest")
SINGLE_P50_MS = 1.0
SINGLE_P50_OF_MLFLOW = 5


def _single_connection_targets(results: Sequence[Result], model: str) -> list[Target]:
    """1 row, 1 connection, a plain LogisticRegression: p50 <= 1 ms and <= 1/5 of mlflow's."""
    if model not in PLAIN_CHAMPION_MODELS:
        return []
    at_one = [r for r in results if (r.connections, r.rows) == (1, 1)]
    gateways = [r for r in at_one if r.server == "gateway"]
    mlflow = next((r for r in at_one if r.features == Features.NONE), None)
    if not gateways:
        return []
    worst = max(r.p50_ms for r in gateways)
    each = ", ".join(f"--workers {r.workers}: {r.p50_ms:.2f} ms" for r in gateways)
    targets = [
        Target(
            f"1 row, 1 conn, plain LogisticRegression: gateway p50 <= {SINGLE_P50_MS:g} ms",
            worst <= SINGLE_P50_MS,
            each,
        )
    ]
    if mlflow is not None:
        targets.append(
            Target(
                f"1 row, 1 conn, plain LogisticRegression: gateway p50 <= 1/{SINGLE_P50_OF_MLFLOW}"
                " of mlflow's",
                worst * SINGLE_P50_OF_MLFLOW <= mlflow.p50_ms,
                f"{each}; mlflow serve {mlflow.p50_ms:.2f} ms = 1/{mlflow.p50_ms / worst:.1f}",
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
