"""`gateway report --log-to-mlflow`: the one place the report talks to MLflow.

It writes, through the MLflow client of the given tracking URI: a run in the named experiment
(created if missing) with the report's figures as metrics, its choices as params, and the JSON
and HTML reports as artifacts; and, on the challenger's registered model version (the newest
version it served in the window), the tags `gateway.report.verdict`, `gateway.report.reason` and
`gateway.report.run_id`, so the registry shows the verdict beside the version it concerns.
"""

import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from gateway.observe.report.html import render_html

logger = logging.getLogger(__name__)

VERDICT_TAG: Final = "gateway.report.verdict"
REASON_TAG: Final = "gateway.report.reason"
RUN_TAG: Final = "gateway.report.run_id"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_TAG: Final = 5000


class MlflowReportError(Exception):
    """MLflow refused or could not be reached; the message is one line."""


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numeric figures under MLflow metric names."""
    figures: dict[str, Any] = {
        "srm.p_value": report["srm"]["p_value"],
        "srm.healthy": float(report["srm"]["healthy"]),
        "records": report["records"],
        "malformed_lines": report["malformed_lines"],
    }
    for name, variant in report["variants"].items():
        prefix = f"variant.{_UNSAFE.sub('_', name)}"
        figures[f"{prefix}.requests"] = variant["requests"]
        figures[f"{prefix}.error_rate"] = variant["error_rate"]
        figures[f"{prefix}.latency_p95_ms"] = variant["latency_ms"]["p95"]
        if variant["users"] is not None:
            figures[f"{prefix}.users"] = variant["users"]
        if variant["outcome"] is not None:
            figures[f"{prefix}.outcome_n"] = variant["outcome"]["n"]
            figures[f"{prefix}.outcome_mean"] = variant["outcome"]["mean"]
    for comparison in report["comparisons"]:
        for key in ("difference", "p_value", "sequential_p_value"):
            figures[f"comparison.{key}"] = comparison[key]
        figures["comparison.ci_low"], figures["comparison.ci_high"] = comparison["ci"]
    return {name: float(value) for name, value in figures.items() if value is not None}


def _challenger_version(report: dict[str, Any]) -> str | None:
    variant = report["variants"].get(report["challenger"] or "")
    versions = [] if variant is None else variant["model_versions"]
    numeric = sorted((int(v), v) for v in versions if str(v).isdigit())
    return numeric[-1][1] if numeric else (versions[-1] if versions else None)


def log_report(
    report: dict[str, Any], *, experiment: str, tracking_uri: str, html_path: Path | None
) -> str:
    """Log the report as a run of `experiment` and tag the challenger's version; the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient  # noqa: TID251 - the report's one MLflow writer

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = _challenger_version(report)
    try:
        if report["model"] and version is not None:
            # Before the run is made: a registry without this version gets no half-logged report.
            client.get_model_version(report["model"], version)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(
            experiment_id,
            run_name=f"gateway-report-{report['endpoint']}",
            tags={VERDICT_TAG: report["verdict"]["decision"]},
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = {
            "endpoint": report["endpoint"],
            "champion": report["champion"],
            "challenger": report["challenger"],
            "srm_unit": report["srm"]["unit"],
            "metric": (report["outcomes"] or {}).get("metric"),
        }
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in report_metrics(report).items()],
            params=[Param(k, str(v)) for k, v in params.items() if v is not None],
        )
        with tempfile.TemporaryDirectory(prefix="gateway-report-") as directory:
            json_file = Path(directory) / "report.json"
            json_file.write_text(json.dumps(report, indent=2), encoding="utf-8")
            html_file = html_path or Path(directory) / "report.html"
            if html_path is None:
                html_file.write_text(render_html(report), encoding="utf-8")
            client.log_artifact(run_id, str(json_file))
            client.log_artifact(run_id, str(html_file))
        client.set_terminated(run_id)
        if report["model"] and version is not None:
            tags = {
                VERDICT_TAG: report["verdict"]["decision"],
                REASON_TAG: report["verdict"]["reason"][:_MAX_TAG],
                RUN_TAG: run_id,
            }
            for key, value in tags.items():
                client.set_model_version_tag(report["model"], version, key, value)
            logger.info("tagged %s version %s: %s", report["model"], version, tags[VERDICT_TAG])
    except MlflowException as exc:
        raise MlflowReportError(str(exc.message).splitlines()[0]) from exc
    except OSError as exc:
        raise MlflowReportError(str(exc)) from exc
    return str(run_id)
