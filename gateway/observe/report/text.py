"""`gateway report`'s text rendering: the report document as a page a person reads in a terminal."""

from typing import Any

Report = dict[str, Any]


def _num(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool | int):
        return (
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _interval(pair: object) -> str:
    if not isinstance(pair, list) or len(pair) != 2:
        return "-"
    return f"[{_num(pair[0])}, {_num(pair[1])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    lines.extend(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
    return ["  " + line.rstrip() for line in lines]


def render_text(report: Report) -> str:
    """The report as text: verdict first, then split health, traffic, outcomes, drift, shadows."""
    verdict = report["verdict"]
    window = report["window"]
    lines = [
        f"Verdict: {verdict['decision']}. {verdict['reason']}",
        "",
        f"Endpoint {report['endpoint']}: {_num(report['records'])} records from "
        f"{window['first']} to {window['last']} ({report['files']} files, "
        f"{report['malformed_lines']} malformed lines); champion {report['champion']}, "
        f"challenger {report['challenger']}.",
        "",
    ]
    srm = report["srm"]
    shares = ", ".join(f"{k} {v:.3f}" for k, v in srm["expected_shares"].items())
    lines += [
        f"Split health (sample ratio, by {srm['unit']}): "
        f"{'healthy' if srm['healthy'] else 'MISMATCH'}, chi2 {_num(srm['statistic'])}, "
        f"p = {_num(srm['p_value'])}; observed {srm['observed']}, expected shares {shares}.",
        "",
        "Traffic (live: sticky, random):",
    ]
    rows = []
    for name, variant in report["variants"].items():
        latency = variant["latency_ms"]
        predictions = variant.get("predictions") or {}
        rows.append(
            [
                name,
                ",".join(variant["model_versions"]),
                _num(variant["requests"]),
                _num(variant["users"]),
                f"{variant['error_rate']:.2%}",
                _num(latency["p50"], 3),
                _num(latency["p95"], 3),
                _num(latency["p99"], 3),
                _num(predictions.get("mean")),
            ]
        )
    header = ["variant", "version", "requests", "users", "errors", "p50 ms", "p95 ms", "p99 ms"]
    lines += _table([*header, "mean prediction"], rows)
    for other in report["other_traffic"]:
        lines.append(
            f"  (not compared) {other['variant']} {other['routing']}: "
            f"{_num(other['requests'])} requests, {other['error_rate']:.2%} errors"
        )
    lines.append("")
    lines += _outcomes(report)
    lines += _drift(report)
    for shadow in report["shadow"]:
        lines.append(
            f"Shadow {shadow['variant']} (version {shadow['model_version']}): "
            f"{_num(shadow['records'])} records, {_num(shadow['rows_compared'])} rows compared, "
            f"{_num(shadow['rows_differing'])} differing."
        )
    lines += [f"Note: {note}" for note in report["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _outcomes(report: Report) -> list[str]:
    meta = report["outcomes"]
    if meta is None:
        return ["Outcomes: none given (--outcomes FILE).", ""]
    lines = [
        f"Outcomes ({meta['metric']}, unit: {meta['unit']}): {_num(meta['outcome_rows'])} rows, "
        f"{_num(meta['unmatched_rows'])} matched no live record."
    ]
    rows = [
        [name, _num(o["n"]), _num(o["mean"]), _interval(o["ci"])]
        for name, variant in report["variants"].items()
        if (o := variant["outcome"]) is not None
    ]
    lines += _table(["variant", "n", "mean", "95% interval"], rows)
    for c in report["comparisons"]:
        lines += [
            f"  {c['variant']} - {c['baseline']}: {_num(c['difference'])} "
            f"{_interval(c['ci'])}, p = {_num(c['p_value'])} ({c['test']}); always valid: "
            f"{_interval(c['sequential_ci'])}, p = {_num(c['sequential_p_value'])}",
        ]
        if c["samples_per_variant"] is not None:
            lines.append(
                f"  To detect {c['mde']} with 80% power: {_num(c['samples_per_variant'])} units "
                f"per variant ({_num(c['additional_samples'])} more)."
            )
    return [*lines, ""]


def _drift(report: Report) -> list[str]:
    drift = report["drift"]
    rows = [
        [
            f"{row['name']} ({row['reference']} -> {row['current']})",
            row["kind"],
            _num(row["ks_statistic"]),
            _num(row["psi"]),
            _num(row["ks_p_value"] if row["kind"] == "numeric" else row["chi2_p_value"]),
            "DRIFT" if row["drifted"] else "",
        ]
        for row in [*drift["features"], *drift["baseline"], *filter(None, [drift["predictions"]])]
    ]
    if not rows:
        return ["Drift: no JSON dataframe inputs to compare.", ""]
    return [
        f"Drift (samples of at most {_num(drift['sample_cap'])} records a side):",
        *_table(["feature", "kind", "KS", "PSI", "p", ""], rows),
        "",
    ]
