"""What `gateway report` costs on a large log: its time and peak memory against a plain DuckDB scan.

Run `python benchmarks/report_bench.py` (two to three minutes to write the files on 2 cores, then
the timings; `--dir DIR` keeps them for the next run). It writes 1,000,000 real inference-log records (gateway.core.record.build_record; a
50/50 split sticky by 200,000 users, one request in a hundred an error, one in fifty forced) into
8 JSON Lines files, and an outcomes CSV with a row for every live request, then runs, each in a
fresh process, `SELECT count(*)` over the files with DuckDB and `gateway report --json`
(logs only; with outcomes; with outcomes under a 256MB DuckDB memory limit), and the command's
start-up alone (`--help`: the interpreter and the CLI's imports). For each it prints the wall time and the peak RSS of that process
(`os.wait4`'s resource usage of the child). The target is a report within 5x the count's time.
Records, users and outcomes come from fixed seeds, so every figure but the timings repeats.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gateway.core.record import build_record, user_key_hash
from gateway.core.routing import choose_sticky

SECRET = b"a-secret-for-the-report-benchmark"
SPLIT = {"champion": 50, "challenger": 50}
START = 1_764_547_200.0  # 2025-12-01T00:00:00Z
PLANS = ("basic", "plus", "pro")
USERS = 200_000
COUNT_SQL = (
    "SELECT count(*) FROM read_json({files}, format = 'newline_delimited', ignore_errors = true)"
)


def write_part(arguments: tuple[Path, int, int, int]) -> None:
    """Records `first` to `first + count` into one file, and their outcomes into a CSV part."""
    directory, part, first, count = arguments
    rng = np.random.default_rng(part)
    users = rng.integers(0, USERS, count)
    sticky: dict[str, str] = {}
    with (
        (directory / "logs" / f"inference-bench-{part:04d}.jsonl").open("w") as log,
        (directory / f"outcomes-{part:04d}.csv").open("w") as outcomes,
    ):
        for offset in range(count):
            n = first + offset
            user = f"user-{users[offset]}"
            variant = sticky.get(user) or sticky.setdefault(
                user, choose_sticky("churn", user, SPLIT)
            )
            forced = rng.uniform() < 0.02
            if forced:
                variant = "challenger"
            error = rng.uniform() < 0.01
            row = [int(rng.integers(1, 72)), round(float(rng.uniform(10, 120)), 2),
                   int(rng.poisson(1.5)), PLANS[int(rng.integers(3))]]  # fmt: skip
            body = json.dumps({"dataframe_split": {"columns": ["tenure_months",
                "monthly_charges", "support_calls", "plan"], "data": [row]}})  # fmt: skip
            record = build_record(
                request_id=f"req-{n:08d}",
                timestamp=START + n * 0.0864,
                endpoint="churn",
                model="churn",
                variant=variant,
                model_version="1" if variant == "champion" else "2",
                routing="forced" if forced else "sticky",
                split=SPLIT,
                user_key_hash=user_key_hash(user, SECRET),
                requester=None,
                client_request_id=None,
                status_code=500 if error else 200,
                duration_ms=float(rng.gamma(2.0, 2.0)),
                request_body=body.encode(),
                content_type="application/json",
                response_body=None
                if error
                else b'{"predictions": [%d]}' % int(rng.uniform() < 0.3),
                error="failed" if error else None,
                max_payload_bytes=None,
            )
            log.write(json.dumps(record, separators=(",", ":")) + "\n")
            if not forced:
                rate = 0.10 if variant == "champion" else 0.11
                outcomes.write(f"req-{n:08d},{int(rng.uniform() < rate)}\n")


def write_files(directory: Path, records: int, files: int) -> tuple[list[Path], Path]:
    """The log files and one outcomes CSV, written by a process per core."""
    (directory / "logs").mkdir(parents=True)
    per_file = records // files
    parts = [(directory, part, part * per_file, per_file) for part in range(files)]
    with multiprocessing.Pool() as pool:
        pool.map(write_part, parts)
    outcomes = directory / "outcomes.csv"
    with outcomes.open("w") as merged:
        merged.write("request_id,outcome\n")
        for part in range(files):
            path = directory / f"outcomes-{part:04d}.csv"
            merged.write(path.read_text())
            path.unlink()
    return sorted((directory / "logs").glob("*.jsonl")), outcomes


def measure(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB and stdout of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = child.stdout.read() if child.stdout else b""
    stderr = child.stderr.read() if child.stderr else b""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        sys.exit(f"{command[2:5]} failed: {stderr.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout.decode()


def main() -> None:
    """Write the files, time the count and the reports, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument(
        "--dir", type=Path, help="keep the files here, or reuse those a run left there"
    )
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="gateway-report-bench-"))
    started = time.perf_counter()
    if (directory / "outcomes.csv").exists():
        files, outcomes = sorted((directory / "logs").glob("*.jsonl")), directory / "outcomes.csv"
    else:
        files, outcomes = write_files(directory, args.records, args.files)
    size = sum(path.stat().st_size for path in files) / 2**20
    print(f"{len(files)} files: {args.records:,} records ({size:,.0f} MiB in {len(files)} files) and "
          f"{outcomes.stat().st_size / 2**20:,.0f} MiB of outcomes, ready in "
          f"{time.perf_counter() - started:.0f}s under {directory}")  # fmt: skip
    listed = "[" + ", ".join(f"'{path}'" for path in files) + "]"
    count_sql = COUNT_SQL.format(files=listed)
    count_code = f"import duckdb; print(duckdb.connect().execute({count_sql!r}).fetchall()[0][0])"
    logs = str(directory / "logs")
    runs = {
        "duckdb count(*)": [sys.executable, "-c", count_code],
        # What every `gateway` command pays before it reads a byte: the interpreter and imports.
        "report start-up only": [sys.executable, "-m", "gateway", "report", "--help"],
        "report (logs only)": [sys.executable, "-m", "gateway", "report", "--logs", logs, "--json"],
        "report (with outcomes)": [sys.executable, "-m", "gateway", "report", "--logs", logs,
                                   "--outcomes", str(outcomes), "--json"],
        "report (outcomes, 256MB)": [sys.executable, "-m", "gateway", "report", "--logs", logs,
                                     "--outcomes", str(outcomes), "--json",
                                     "--memory-limit", "256MB"],
    }  # fmt: skip
    figures = {}
    for name, command in runs.items():
        seconds, peak, stdout = measure(command)
        figures[name] = (seconds, peak)
        detail = _verdict(stdout) if name.startswith("report (") else stdout.strip()[:20]
        print(f"{name:<24} {seconds:7.2f}s  peak RSS {peak:7.0f} MiB  {detail}")
    base = figures["duckdb count(*)"][0]
    start_up = figures["report start-up only"][0]
    for name in list(runs)[2:]:
        seconds = figures[name][0]
        print(f"{name}: {seconds / base:.2f}x the count's time (target: at most 5x); "
              f"without start-up {(seconds - start_up) / base:.2f}x")  # fmt: skip


def _verdict(stdout: str) -> str:
    report = json.loads(stdout)
    return f"{report['records']:,} records, verdict {report['verdict']['decision']}"


if __name__ == "__main__":
    main()
