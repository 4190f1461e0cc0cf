"""The report: the Markdown table, targets and notes, and the JSON document beside them."""

import contextlib
import json
import os
import platform
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.gatewaybench.figures import Result
from benchmarks.gatewaybench.targets import Target
from benchmarks.gatewaybench.wrk import wrk_version
from gateway import __version__ as gateway_version

# Another process using more than this share of one core during a cell is worth a warning.
OTHER_CPU_WARNING_PERCENT = 10.0


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
    """One row of the table, in the order of COLUMNS."""
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
    "forest": "a plain scikit-learn LogisticRegression on 3 numeric columns as champion, a "
    "15-tree RandomForest as challenger",
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
