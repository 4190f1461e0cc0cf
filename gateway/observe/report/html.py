"""`gateway report --html`: the report document as one self-contained HTML file with inline SVG.

No script, no style sheet or font from the network: the charts are SVG drawn here (line charts of
traffic share and latency over time, intervals of the outcome per variant and of the difference), so
the file opens offline in any browser and can be attached to a ticket or an MLflow run. The time
charts use buckets of a second, minute, hour or day, whichever cuts the window into at least six.
"""

import html
import math
from collections.abc import Sequence
from typing import Any, Final

Report = dict[str, Any]

WIDTH: Final = 720
HEIGHT: Final = 220
_PAD: Final = (56, 16, 26, 36)  # left, right, top (the legend's row), bottom
_COLOURS: Final = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_STYLE: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:760px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}th:first-child,td:first-child{text-align:left}.verdict{padding:.8em 1em;
border-radius:6px;background:#f3f3f3;border-left:6px solid #888}.promote{border-color:#2ca02c}
.keep_champion{border-color:#d62728}.split_unhealthy{border-color:#ff7f0e}.drift{color:#d62728;
font-weight:600}svg text{font:11px system-ui,sans-serif;fill:#444}.note{color:#666}
"""


def _e(value: object) -> str:
    return html.escape("-" if value is None else str(value))


def _n(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _e(value)


def _scale(lo: float, hi: float, a: float, b: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _frame(y_lo: float, y_hi: float, y_label: str) -> list[str]:
    left, right, top, bottom = _PAD
    y = _scale(y_lo, y_hi, HEIGHT - bottom, top)
    parts = [
        f'<rect x="{left}" y="{top}" width="{WIDTH - left - right}" '
        f'height="{HEIGHT - top - bottom}" fill="none" stroke="#ccc"/>'
    ]
    for i in range(5):
        value = y_lo + (y_hi - y_lo) * i / 4
        parts.append(
            f'<text x="{left - 4}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>'
        )
    middle = (top + HEIGHT - bottom) // 2
    parts.append(
        f'<text x="12" y="{middle}" transform="rotate(-90 12 {middle})" '
        f'text-anchor="middle">{_e(y_label)}</text>'
    )
    return parts


def line_chart(
    series: dict[str, list[tuple[float, float]]], y_label: str, x_labels: Sequence[str]
) -> str:
    """An SVG line chart: one polyline (with dots) per named series over x = 0..len(x_labels)-1."""
    values = [v for points in series.values() for _, v in points if math.isfinite(v)]
    if not values:
        return '<p class="note">No data.</p>'
    y_lo, y_hi = min(0.0, min(values)), max(values) * 1.05 or 1.0
    left, right, top, bottom = _PAD
    x = _scale(0, max(1, len(x_labels) - 1), left + 8, WIDTH - right - 8)
    y = _scale(y_lo, y_hi, HEIGHT - bottom, top)
    parts = _frame(y_lo, y_hi, y_label)
    step = max(1, len(x_labels) // 6)
    for i in range(0, len(x_labels), step):
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - bottom + 14}" text-anchor="middle">'
            f"{_e(x_labels[i])}</text>"
        )
    for index, (name, points) in enumerate(series.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points if math.isfinite(v))
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        parts += [
            f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>'
            for i, v in points
            if math.isfinite(v)
        ]
        parts.append(
            f'<text x="{WIDTH - right - 110 * index}" y="{top - 8}" '
            f'text-anchor="end" style="fill:{colour}">{_e(name)}</text>'
        )
    return _svg(parts, HEIGHT)


def interval_chart(
    rows: list[tuple[str, float, float, float]],
    zero_line: bool,
    colours: Sequence[str] = _COLOURS,
) -> str:
    """An SVG of horizontal intervals (label, estimate, low, high), one per line."""
    rows = [r for r in rows if all(isinstance(v, float | int) and math.isfinite(v) for v in r[1:])]
    if not rows:
        return '<p class="note">No intervals.</p>'
    height = 30 + 28 * len(rows)
    lo = min(min(r[2] for r in rows), 0.0 if zero_line else math.inf)
    hi = max(max(r[3] for r in rows), 0.0 if zero_line else -math.inf)
    pad = (hi - lo) * 0.08 or 0.01
    x = _scale(lo - pad, hi + pad, 170, WIDTH - 230)
    parts = []
    if zero_line:
        parts.append(
            f'<line x1="{x(0):.1f}" y1="6" x2="{x(0):.1f}" y2="{height - 18}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for i, (label, estimate, low, high) in enumerate(rows):
        cy = 22 + 28 * i
        colour = colours[i % len(colours)]
        parts += [
            f'<text x="4" y="{cy + 4}">{_e(label)}</text>',
            f'<line x1="{x(low):.1f}" y1="{cy}" x2="{x(high):.1f}" y2="{cy}" '
            f'stroke="{colour}" stroke-width="3"/>',
            f'<circle cx="{x(estimate):.1f}" cy="{cy}" r="5" fill="{colour}"/>',
            f'<text x="{WIDTH - 220}" y="{cy + 4}">{estimate:.4g} [{low:.4g}, {high:.4g}]</text>',
        ]
    return _svg(parts, height)


def _svg(parts: list[str], height: int) -> str:
    body = "".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img">{body}</svg>'
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _series(report: Report) -> tuple[list[str], dict[str, dict[str, dict[str, Any]]]]:
    rows = report["series"]["rows"]
    hours = sorted({row["hour"] for row in rows})
    by_variant: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in report["variants"]}
    for row in rows:
        by_variant.setdefault(row["variant"], {})[row["hour"]] = row
    return hours, by_variant


def render_html(report: Report) -> str:
    """The whole report as one HTML document."""
    verdict = report["verdict"]
    hours, by_variant = _series(report)
    unit = report["series"]["unit"]
    totals = {h: sum(v.get(h, {}).get("requests", 0) for v in by_variant.values()) for h in hours}
    share = {
        name: [
            (float(i), rows[h]["requests"] / totals[h]) for i, h in enumerate(hours) if h in rows
        ]
        for name, rows in by_variant.items()
    }
    p95 = {
        name: [
            (float(i), float(rows[h]["p95_ms"]))
            for i, h in enumerate(hours)
            if h in rows and rows[h]["p95_ms"] is not None
        ]
        for name, rows in by_variant.items()
    }
    labels = [(h[11:19] if unit == "second" else h[5:16]) if h else "" for h in hours]
    srm = report["srm"]
    sections = [
        f"<h1>Report: endpoint {_e(report['endpoint'])}</h1>",
        f'<div class="verdict {_e(verdict["decision"])}"><b>{_e(verdict["decision"])}</b>: '
        f"{_e(verdict['reason'])}</div>",
        f"<p>{_n(report['records'])} records, {_e(report['window']['first'])} to "
        f"{_e(report['window']['last'])}; champion <b>{_e(report['champion'])}</b>, challenger "
        f"<b>{_e(report['challenger'])}</b>. Split health ({_e(srm['unit'])}): "
        f"<b>{'healthy' if srm['healthy'] else 'sample ratio mismatch'}</b>, "
        f"p = {_n(srm['p_value'])}.</p>",
        "<h2>Traffic</h2>",
        _table(
            [
                "variant",
                "versions",
                "requests",
                "users",
                "error rate",
                "p50 ms",
                "p95 ms",
                "p99 ms",
            ],
            [
                [
                    _e(name),
                    _e(",".join(v["model_versions"])),
                    _n(v["requests"]),
                    _n(v["users"]),
                    f"{v['error_rate']:.2%}",
                    _n(v["latency_ms"]["p50"], 3),
                    _n(v["latency_ms"]["p95"], 3),
                    _n(v["latency_ms"]["p99"], 3),
                ]
                for name, v in report["variants"].items()
            ],
        ),
        f"<h2>Traffic share by {_e(unit)}</h2>",
        line_chart(share, "share", labels),
        f"<h2>p95 latency by {_e(unit)} (ms)</h2>",
        line_chart(p95, "ms", labels),
        *_outcome_section(report),
        *_drift_section(report),
    ]
    notes = "".join(f'<p class="note">{_e(note)}</p>' for note in report["notes"])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>gateway report: {_e(report['endpoint'])}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(sections)}{notes}</body></html>\n"
    )


def _outcome_section(report: Report) -> list[str]:
    if report["outcomes"] is None:
        return ["<h2>Outcomes</h2>", '<p class="note">No outcome files given.</p>']
    meta = report["outcomes"]
    rows = [
        (name, v["outcome"]["mean"], *v["outcome"]["ci"])
        for name, v in report["variants"].items()
        if v["outcome"]
    ]
    diffs = []
    for c in report["comparisons"]:
        diffs.append((f"{c['variant']} - {c['baseline']}", c["difference"], *c["ci"]))
        diffs.append(("always valid", c["difference"], *c["sequential_ci"]))
    return [
        f"<h2>Outcome: {_e(meta['metric'])} (unit: {_e(meta['unit'])}), 95% intervals</h2>",
        interval_chart(rows, zero_line=False),
        "<h2>Difference, challenger minus champion</h2>",
        interval_chart(diffs, zero_line=True, colours=("#333", "#888")),
        _table(
            ["comparison", "difference", "p-value", "always-valid p"],
            [
                [
                    _e(f"{c['variant']} - {c['baseline']}"),
                    _n(c["difference"]),
                    _n(c["p_value"]),
                    _n(c["sequential_p_value"]),
                ]
                for c in report["comparisons"]
            ],
        ),
    ]


def _drift_section(report: Report) -> list[str]:
    drift = report["drift"]
    rows = [*drift["features"], *drift["baseline"], *filter(None, [drift["predictions"]])]
    return [
        "<h2>Drift</h2>",
        _table(
            ["feature", "reference", "current", "kind", "KS", "PSI", "p-value", ""],
            [
                [
                    _e(r["name"]),
                    _e(r["reference"]),
                    _e(r["current"]),
                    _e(r["kind"]),
                    _n(r["ks_statistic"]),
                    _n(r["psi"]),
                    _n(r["ks_p_value"] if r["kind"] == "numeric" else r["chi2_p_value"]),
                    '<span class="drift">drift</span>' if r["drifted"] else "",
                ]
                for r in rows
            ],
        ),
    ]
