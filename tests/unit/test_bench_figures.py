"""The benchmark's arithmetic: a cell's figures from its rounds, and the targets read from them."""

import pytest

from benchmarks.gatewaybench.figures import Result, Round, merge_rounds
from benchmarks.gatewaybench.plan import FEATURE_ROWS_BY_KEY
from benchmarks.gatewaybench.registry import MODELS
from benchmarks.gatewaybench.report import _MODEL_WORDS
from benchmarks.gatewaybench.targets import EQUAL_WITHIN, Target, _memory_target, evaluate_targets


def _round(
    rps: float,
    *,
    workers: int = 2,
    connections: int = 16,
    rows: int = 1,
    features: str = "single",
    p50: float = 1.0,
    p99: float = 2.0,
    cpu_ms: float = 0.5,
    rss: float = 300.0,
    errors: int = 0,
    server: str = "gateway",
) -> Result:
    requests = int(rps * 4)
    return Result(
        server=server,
        workers=workers,
        connections=connections,
        rows=rows,
        features=features,
        requests=requests,
        requests_per_second=rps,
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        cpu_ms_per_request=cpu_ms,
        rss_mib_per_worker=rss,
        client_cpu_seconds=1.0,
        other_cpu_percent=0.0,
        steal_percent=0.0,
        rounds=[Round(requests, rps, p50, p99, rss)],
    )


def test_a_cell_is_the_median_of_its_rounds_and_the_total_of_its_work() -> None:
    rounds = [
        _round(1000, p50=1.0, p99=3.0, cpu_ms=0.4, rss=300, errors=1),
        _round(400, p50=9.0, p99=30.0, cpu_ms=1.0, rss=310),  # a round the machine slowed
        _round(1100, p50=1.1, p99=2.5, cpu_ms=0.5, rss=305),
    ]
    cell = merge_rounds(rounds)
    assert (cell.requests_per_second, cell.p50_ms, cell.p99_ms) == (1000, 1.1, 3.0)
    assert (cell.requests, cell.errors, cell.rss_mib_per_worker) == (10_000, 1, 310)
    # CPU per request over all the rounds' requests, not a median.
    assert cell.cpu_ms_per_request == pytest.approx((4000 * 0.4 + 1600 * 1.0 + 4400 * 0.5) / 10_000)
    assert [r.requests_per_second for r in cell.rounds] == [1000, 400, 1100]


def _workers_target(one_rps: float, two_rps: float) -> Target:
    results = [
        _round(one_rps, workers=1, connections=1),
        _round(two_rps, workers=2, connections=1),
    ]
    return next(t for t in evaluate_targets(results) if "--workers 2" in t.goal)


def test_workers_2_within_the_noise_band_of_workers_1_is_not_slower() -> None:
    target = _workers_target(1000, 1000 * (1 - EQUAL_WITHIN / 2))
    assert target.met
    assert "slower" not in target.detail


def test_workers_2_below_the_noise_band_is_slower() -> None:
    target = _workers_target(1000, 1000 * (1 - EQUAL_WITHIN * 2))
    assert not target.met
    assert target.detail.startswith("slower at 1 conns/1 rows: 940.0 vs 1000.0 req/s")


def test_memory_compares_the_first_round_of_the_run_with_the_last() -> None:
    matrix = merge_rounds([_round(900, rss=300.0), _round(900, rss=301.0)])
    row_a = merge_rounds(
        [
            _round(900, features=FEATURE_ROWS_BY_KEY["gateway-2"], rss=302.0),
            _round(900, features=FEATURE_ROWS_BY_KEY["gateway-2"], rss=309.0),
        ]
    )
    (target,) = _memory_target([matrix, row_a])
    assert target.detail.startswith("300.0 -> 309.0 MiB (+9.0 MiB) after 10,800 more requests")
    assert not target.met  # 3% growth is over the 2% limit


def _single_connection(model: str, gateway_p50: float, mlflow_p50: float) -> list[Target]:
    results = [
        _round(400, server="mlflow serve", workers=1, connections=1, features="-", p50=mlflow_p50),
        _round(1100, workers=1, connections=1, p50=gateway_p50 * 0.9),
        _round(1000, workers=2, connections=1, p50=gateway_p50),
    ]
    return [t for t in evaluate_targets(results, model=model) if "1 conn" in t.goal]


@pytest.mark.parametrize(
    ("gateway_p50", "mlflow_p50", "met"),
    [(0.9, 5.0, [True, True]), (1.1, 6.0, [False, True]), (0.9, 4.0, [True, False])],
)
def test_one_connection_p50_is_judged_by_the_slower_gateway_against_1_ms_and_mlflow(
    gateway_p50: float, mlflow_p50: float, met: list[bool]
) -> None:
    targets = _single_connection("logistic", gateway_p50, mlflow_p50)
    assert [t.met for t in targets] == met
    assert "mlflow serve" in targets[1].detail


def test_one_connection_targets_belong_to_a_plain_logistic_champion_only() -> None:
    assert _single_connection("pipeline", 0.5, 5.0) == []
    assert len(_single_connection("forest", 0.5, 5.0)) == 2


@pytest.mark.parametrize("model", MODELS)
def test_every_model_of_the_benchmark_has_its_words_in_the_report(model: str) -> None:
    assert _MODEL_WORDS[model]
