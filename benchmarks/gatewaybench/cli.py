"""The command line: its flags, and `main`, which runs the benchmark or its smoke check."""

import argparse
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from benchmarks.gatewaybench.checks import check_observability, check_predictions, smoke
from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.figures import add_ratios
from benchmarks.gatewaybench.measure import REWARM_SECONDS, WARMUP_SECONDS, measure_all, warm_up
from benchmarks.gatewaybench.plan import INFERENCE_LOG_DIR, USER_IDS, Features, server_specs
from benchmarks.gatewaybench.registry import MODELS, build_registry, model_features, payloads
from benchmarks.gatewaybench.report import (
    COLUMNS,
    disturbance_notes,
    environment,
    markdown_table,
    result_row,
    write_report,
)
from benchmarks.gatewaybench.servers import running_servers
from benchmarks.gatewaybench.sink import running_sink
from benchmarks.gatewaybench.targets import evaluate_targets
from benchmarks.gatewaybench.wrk import WRK_TIMEOUT, ensure_wrk

DESCRIPTION = """Throughput, latency, CPU and memory of the gateway against `mlflow models serve`, on loopback.

Run `python benchmarks/bench.py` (about 7 minutes on 2 cores). It builds the demo registry in a
temporary directory, starts `mlflow models serve` and the gateway in five configurations, checks
that all of them answer the same payloads with identical bytes, then drives each with `wrk` and
writes a Markdown table and a JSON file (`--out`, default benchmark-results/latest.md) with a
"targets" section. `--smoke` starts the same servers and only checks their answers (no wrk).

Exit status: 0 when every server answered correctly, whether or not the targets are met; 1 when a
server could not start, crashed, or answered differently from `mlflow models serve`.
"""

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "benchmark-results" / "latest.md"

# Every cell is measured in rounds: all cells once, then all again. A machine whose speed drifts
# (a neighbour, the hypervisor) then slows every server alike, and each figure is the median of
# its rounds. 21 cells x 3 rounds x (warm-up + 4 s) + a minute of set-up: about 7 minutes.
DEFAULT_DURATION_SECONDS = 12
DEFAULT_ROUNDS = 3
MAX_DURATION_SECONDS = 60
MAX_ROUNDS = 10


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "the model of the reference figures for mlflow models serve; forest: that "
        "LogisticRegression as champion and a 15-tree RandomForest as challenger",
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
    bodies = payloads(model_features(args.model))
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as temporary:
        directory = Path(temporary)
        print(f"building the {args.model} registry in {directory} (about 15 s)", flush=True)
        tracking_uri = build_registry(args.model, directory / "registry")
        with (
            running_sink() as sink,
            running_servers(
                server_specs(tracking_uri, directory, sink.url), directory, tracking_uri
            ) as servers,
        ):
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
            results = measure_all(wrk, servers, bodies, directory, args.duration, args.rounds)
            observed = next(s for s in servers if s.spec.features is Features.OBSERVED)
            observability = check_observability(observed, directory / INFERENCE_LOG_DIR)
            # What row (d) exported: proof that its figures include the cost of tracing on.
            traces = {"exports": sink.exports, "bytes": sink.bytes}
    add_ratios(results)
    targets = evaluate_targets(results, observability, args.model)
    table = markdown_table(COLUMNS, [result_row(r) for r in results])
    document = {
        "environment": environment(wrk),
        "settings": settings,
        "results": [asdict(r) for r in results],
        "observability": asdict(observability),
        "traces": traces,
        "targets": [asdict(t) for t in targets],
    }
    notes = disturbance_notes(results)
    print("\n" + write_report(args.out, document, table, targets, notes))
    print(f"written: {args.out} and {args.out.with_suffix('.json')}")
    return 0
