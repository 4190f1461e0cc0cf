"""The benchmark's smoke mode starts every server it measures and checks their answers."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench.py"
# Building the registry and starting six servers on 2 cores takes about a minute.
DEADLINE_SECONDS = 300
# On SIGTERM the benchmark stops its servers (SIGTERM, then SIGKILL after 20 s) before exiting.
STOP_SECONDS = 60
SERVERS = {("mlflow serve", "1"), ("gateway", "1"), ("gateway", "2")}


def _table_rows(markdown: str) -> set[tuple[str, str]]:
    """(server, workers) of each row of the report's table."""
    rows = set()
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.add((cells[0], cells[1]))
    return rows


def test_smoke_mode_gets_identical_answers_from_every_server(tmp_path: Path) -> None:
    out = tmp_path / "smoke.md"
    process = subprocess.Popen(
        [sys.executable, str(BENCH), "--smoke", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"bench.py --smoke did not finish in {DEADLINE_SECONDS} s:\n{output[-4000:]}")

    assert process.returncode == 0, output[-4000:]
    missing = SERVERS - _table_rows(out.read_text(encoding="utf-8"))
    assert not missing, f"servers missing from the report: {sorted(missing)}"
    assert out.with_suffix(".json").is_file()
