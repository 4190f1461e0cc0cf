"""Two commits of the gateway side by side: the same cells, measured in alternating rounds.

`python benchmarks/compare.py --base REV` checks REV out into a temporary git worktree, starts
the gateway of that checkout and the gateway of this one on the same registry, and measures each
cell on both, in rounds whose order alternates (base first, then this checkout first), so that
drift on the machine hits both alike. A change is a finding only when it is larger than the
spread of the rounds, which the table shows.
"""

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.figures import Result
from benchmarks.gatewaybench.measure import measure, warm_up
from benchmarks.gatewaybench.plan import Cell, Features, ServerSpec, gateway_config
from benchmarks.gatewaybench.registry import MODELS, build_registry, model_features, payloads
from benchmarks.gatewaybench.servers import running_servers
from benchmarks.gatewaybench.wrk import ensure_wrk

WORKERS = 2
# (features, connections, rows, sticky user ids): a lone request, and the feature rows' load.
CELLS = (
    (Features.SINGLE, 1, 1, False),
    (Features.SINGLE, 16, 1, False),
    (Features.SPLIT, 16, 1, True),
    (Features.OBSERVED, 16, 1, True),
)
REPOSITORY = Path(__file__).resolve().parents[2]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the base commit against this checkout; returns the exit status."""
    parser = argparse.ArgumentParser(prog="compare.py", description=__doc__)
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--model", choices=MODELS, default="logistic")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per cell (default 6)")
    parser.add_argument("--seconds", type=int, default=4, help="seconds a round (default 4)")
    parser.add_argument(
        "--batching",
        choices=["default", "explicit"],
        default="default",
        help="default: the config a user writes (what each commit does by default); explicit: "
        "max_batch_size 32, max_wait_ms 2 on both, to compare the request path alone",
    )
    args = parser.parse_args(argv)
    try:
        with _worktree(args.base) as base, tempfile.TemporaryDirectory() as temporary:
            explicit = args.batching == "explicit"
            rows = _compare(base, Path(temporary), args.model, args.rounds, args.seconds, explicit)
    except (BenchmarkError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_table(args.base, rows))
    return 0


@contextlib.contextmanager
def _worktree(revision: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="gateway-base-"))
    git = ["git", "-C", str(REPOSITORY)]
    subprocess.run([*git, "worktree", "add", "--detach", str(directory), revision], check=True)
    try:
        yield directory
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(directory)], check=False)


def _compare(
    base: Path, directory: Path, model: str, rounds: int, seconds: int, explicit: bool
) -> list[tuple[Cell, list[Result], list[Result]]]:
    wrk = ensure_wrk()
    bodies = payloads(model_features(model))
    tracking_uri = build_registry(model, directory / "registry")
    features = sorted({cell[0] for cell in CELLS})
    specs = [
        ServerSpec(
            f"{side}-{feature.name.lower()}",
            side,
            WORKERS,
            feature,
            _config(tracking_uri, directory / side, feature, explicit),
            base if side == "base" else None,
        )
        for side in ("base", "head")
        for feature in features
    ]
    with running_servers(specs, directory, tracking_uri) as servers:
        warm_up(wrk, servers, bodies, directory)
        by_key = {server.spec.key: server for server in servers}
        measured: list[tuple[Cell, list[Result], list[Result]]] = []
        for feature, connections, row_count, sticky in CELLS:
            sides: dict[str, list[Result]] = {"base": [], "head": []}
            for turn in range(rounds):
                order = ("base", "head") if turn % 2 == 0 else ("head", "base")
                for side in order:
                    server = by_key[f"{side}-{feature.name.lower()}"]
                    cell = Cell(server.spec, connections, row_count, str(feature), sticky)
                    result = measure(wrk, server, cell, bodies[row_count], directory, seconds, 1)
                    sides[side].append(result)
            print(f"measured {feature} at {connections} connection(s)", flush=True)
            measured.append((cell, sides["base"], sides["head"]))
    return measured


def _config(
    tracking_uri: str, directory: Path, feature: Features, explicit: bool
) -> dict[str, Any]:
    config = gateway_config(tracking_uri, directory, feature)
    if explicit:
        config["endpoints"][0]["batching"] = {"max_batch_size": 32, "max_wait_ms": 2}
    return config


def _table(base: str, rows: list[tuple[Cell, list[Result], list[Result]]]) -> str:
    lines = [
        f"base {base} against this checkout, --workers {WORKERS}; medians of the rounds "
        "(the spread is the rounds' min-max of req/s)",
        "",
        "| features | conns | base req/s (spread) | head req/s (spread) | change | base p50 ms "
        "| head p50 ms | base p99 ms | head p99 ms | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cell, old, new in rows:
        old_rps = statistics.median(r.requests_per_second for r in old)
        new_rps = statistics.median(r.requests_per_second for r in new)
        lines.append(
            f"| {cell.label} | {cell.connections} | {old_rps:,.0f} ({_spread(old)}) "
            f"| {new_rps:,.0f} ({_spread(new)}) | {new_rps / old_rps - 1:+.1%} "
            f"| {_median(old, 'p50_ms'):.2f} | {_median(new, 'p50_ms'):.2f} "
            f"| {_median(old, 'p99_ms'):.2f} | {_median(new, 'p99_ms'):.2f} "
            f"| {sum(r.errors for r in old + new)} |"
        )
    return "\n".join(lines)


def _spread(results: list[Result]) -> str:
    values = [r.requests_per_second for r in results]
    return f"{min(values):,.0f}-{max(values):,.0f}"


def _median(results: list[Result], name: str) -> float:
    return float(statistics.median(getattr(r, name) for r in results))
