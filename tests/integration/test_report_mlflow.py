"""`gateway report --log-to-mlflow` against a real sqlite MLflow registry (the demo's)."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gateway.commands.cli import main
from gateway.commands.demo import MODEL_NAME
from gateway.commands.report_mlflow import REASON_TAG, RUN_TAG, VERDICT_TAG
from tests.helpers import START, record, write_csv, write_log


def test_the_report_becomes_a_run_and_a_tag_on_the_challengers_version(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records, outcomes = [], []
    for n in range(400):
        variant = "champion" if n % 2 else "challenger"
        request_id = f"r{n}"
        records.append(
            record(
                request_id,
                variant=variant,
                model=MODEL_NAME,
                model_version="1" if variant == "champion" else "2",
                timestamp=START + n,
            )
        )
        outcomes.append([request_id, int(n % 10 == 0 if variant == "champion" else n % 10 < 6)])
    write_log(tmp_path / "logs" / "a.jsonl", records)
    path = write_csv(tmp_path / "o.csv", ["request_id", "outcome"], outcomes)
    argv = ["report", "--logs", str(tmp_path / "logs"), "--outcomes", str(path), "--json"]
    status = main(
        [*argv, "--log-to-mlflow", "gateway-reports", "--tracking-uri", tracking_uri], environ={}
    )
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"]["decision"] == "promote"

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("gateway-reports")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    metrics = run.data.metrics
    assert metrics["comparison.difference"] == pytest.approx(report["comparisons"][0]["difference"])
    assert metrics["srm.p_value"] == pytest.approx(report["srm"]["p_value"])
    assert metrics["variant.challenger.requests"] == 200
    assert run.data.params["challenger"] == "challenger"
    assert run.data.tags[VERDICT_TAG] == "promote"
    assert run.info.status == "FINISHED"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"report.json", "report.html"}
    logged = json.loads(
        Path(client.download_artifacts(run.info.run_id, "report.json", str(tmp_path))).read_text()
    )
    assert logged["verdict"] == report["verdict"]

    version = client.get_model_version(MODEL_NAME, "2")
    assert version.tags[VERDICT_TAG] == "promote"
    assert version.tags[REASON_TAG] == report["verdict"]["reason"]
    assert version.tags[RUN_TAG] == run.info.run_id
    assert VERDICT_TAG not in client.get_model_version(MODEL_NAME, "1").tags


def test_a_registry_without_the_model_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path / "logs" / "a.jsonl", [record("r1"), record("r2", variant="challenger")])
    status = main(
        [
            "report",
            "--logs",
            str(tmp_path / "logs"),
            "--log-to-mlflow",
            "x",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'empty.db'}",
        ],
        environ={},
    )
    captured = capsys.readouterr()
    assert status == 1
    # MLflow's own log lines (creating the empty database) come first; ours is the one error line.
    assert "Traceback" not in captured.err
    (line,) = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: --log-to-mlflow: ")
    assert "churn" in line
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}")
    assert client.get_experiment_by_name("x") is None
