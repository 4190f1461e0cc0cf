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
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from gateway import __version__ as gateway_version

# Run as a script, this file's own directory is on the path, not the one that holds `benchmarks`.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.gatewaybench.checks import check_observability, check_predictions, smoke
from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.figures import Result, add_ratios
from benchmarks.gatewaybench.measure import REWARM_SECONDS, WARMUP_SECONDS, measure_all, warm_up
from benchmarks.gatewaybench.plan import (
    INFERENCE_LOG_DIR,
    USER_IDS,
    Features,
    server_specs,
)
from benchmarks.gatewaybench.registry import MODELS, build_registry, model_features, payloads
from benchmarks.gatewaybench.servers import running_servers
from benchmarks.gatewaybench.targets import Target, evaluate_targets
from benchmarks.gatewaybench.wrk import WRK_TIMEOUT, ensure_wrk, wrk_version

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmark-results" / "latest.md"

# Every cell is measured in rounds: all cells once, then all again. A machine whose speed drifts
# (a neighbour, the hypervisor) then slows every server alike, and each figure is the median of
# its rounds. 21 cells x 3 rounds x (warm-up + 4 s) + a minute of set-up: about 7 minutes.
DEFAULT_DURATION_SECONDS = 12
DEFAULT_ROUNDS = 3
MAX_DURATION_SECONDS = 60
MAX_ROUNDS = 10
# Another process using more than this share of one core during a cell is worth a warning.
OTHER_CPU_WARNING_PERCENT = 10.0


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
    bodies = payloads(model_features(args.model))
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as temporary:
        directory = Path(temporary)
        print(f"building the {args.model} registry in {directory} (about 15 s)", flush=True)
        tracking_uri = build_registry(args.model, directory / "registry")
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
            results = measure_all(wrk, servers, bodies, directory, args.duration, args.rounds)
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


if __name__ == "__main__":
    sys.exit(main())
