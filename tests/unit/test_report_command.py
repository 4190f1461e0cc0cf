"""`gateway report` end to end in-process on synthetic logs: verdicts, JSON contract, errors."""

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.commands import report as report_command
from gateway.commands.cli import main
from gateway.core.routing import choose_sticky
from tests.helpers import SECRET, START, record, write_csv, write_log

SPLIT = {"champion": 50, "challenger": 50}


def experiment(
    directory: Path,
    *,
    rates: dict[str, float],
    users: int = 1500,
    seed: int = 11,
    drop_share: float = 0.0,
    covariate: bool = False,
) -> tuple[Path, Path]:
    """Logs of `users` sticky users (two requests each) and outcomes converting at `rates`."""
    rng = np.random.default_rng(seed)
    records, outcomes = [], []
    for n in range(users):
        user = f"user-{n}"
        variant = choose_sticky("churn", user, SPLIT)
        if variant == "challenger" and rng.uniform() < drop_share:
            continue
        propensity = rng.uniform()
        for visit in range(2):
            request_id = f"{user}-{visit}"
            records.append(
                record(
                    request_id,
                    user=user,
                    variant=variant,
                    model_version="1" if variant == "champion" else "2",
                    timestamp=START + n + 3000 * visit,
                    duration_ms=float(rng.gamma(2.0, 2.0)),
                    prediction=int(rng.uniform() < 0.3),
                )
            )
            converted = int(rng.uniform() < rates[variant] * (0.5 + propensity))
            outcomes.append([request_id, converted, round(propensity, 4)])
    logs = directory / "logs"
    write_log(logs / "inference-a.jsonl", records[: len(records) // 2])
    write_log(logs / "inference-b.jsonl", records[len(records) // 2 :])
    header = ["request_id", "outcome", *(["propensity"] if covariate else [])]
    rows = [row if covariate else row[:2] for row in outcomes]
    return logs, write_csv(directory / "outcomes.csv", header, rows)


def report_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["report", *argv, "--json"], environ={}) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_a_better_challenger_is_promoted_with_the_json_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, outcomes = experiment(tmp_path, rates={"champion": 0.10, "challenger": 0.20})
    report = report_json(capsys, "--logs", str(logs), "--outcomes", str(outcomes))
    assert report["verdict"]["decision"] == "promote"
    assert isinstance(report["srm"]["p_value"], float)
    assert report["srm"]["healthy"] is True
    assert set(report["variants"]) == {"champion", "challenger"}
    for variant in report["variants"].values():
        assert isinstance(variant["requests"], int)
        assert isinstance(variant["users"], int)
        assert isinstance(variant["error_rate"], float)
        assert set(variant["outcome"]) >= {"n", "mean", "ci"}
        assert (
            variant["outcome"]["ci"][0] < variant["outcome"]["mean"] < variant["outcome"]["ci"][1]
        )
    (comparison,) = report["comparisons"]
    assert (comparison["variant"], comparison["baseline"]) == ("challenger", "champion")
    assert comparison["unit"] == "user"
    assert comparison["ci"][0] < comparison["difference"] < comparison["ci"][1]
    assert comparison["p_value"] < 0.001
    assert comparison["sequential_p_value"] >= comparison["p_value"]
    assert {feature["name"] for feature in report["drift"]["features"]} == {
        "tenure_months",
        "monthly_charges",
        "support_calls",
        "plan",
    }
    assert all(isinstance(feature["psi"], float) for feature in report["drift"]["features"])


def test_a_worse_challenger_keeps_the_champion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, outcomes = experiment(tmp_path, rates={"champion": 0.20, "challenger": 0.08})
    report = report_json(capsys, "--logs", str(logs), "--outcomes", str(outcomes))
    assert report["verdict"]["decision"] == "keep_champion"


def test_no_effect_is_inconclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs, outcomes = experiment(tmp_path, rates={"champion": 0.15, "challenger": 0.15})
    report = report_json(capsys, "--logs", str(logs), "--outcomes", str(outcomes))
    assert report["verdict"]["decision"] == "inconclusive"


def test_a_variant_losing_records_makes_the_split_unhealthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, outcomes = experiment(
        tmp_path, rates={"champion": 0.10, "challenger": 0.20}, users=3000, drop_share=0.2
    )
    report = report_json(capsys, "--logs", str(logs), "--outcomes", str(outcomes))
    assert report["srm"]["healthy"] is False
    assert report["verdict"]["decision"] == "split_unhealthy"


def test_cuped_narrows_the_interval_of_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, outcomes = experiment(
        tmp_path, rates={"champion": 0.10, "challenger": 0.20}, covariate=True
    )
    plain = report_json(capsys, "--logs", str(logs), "--outcomes", str(outcomes))
    adjusted = report_json(
        capsys, "--logs", str(logs), "--outcomes", str(outcomes), "--covariate", "propensity"
    )
    width = [r["comparisons"][0]["ci"][1] - r["comparisons"][0]["ci"][0] for r in (plain, adjusted)]
    assert adjusted["comparisons"][0]["cuped"] is True
    assert width[1] < width[0]


def test_the_mde_plans_units_per_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, outcomes = experiment(tmp_path, rates={"champion": 0.15, "challenger": 0.15})
    report = report_json(capsys, "--logs", str(logs), "--outcomes", str(outcomes), "--mde", "0.01")
    comparison = report["comparisons"][0]
    assert comparison["samples_per_variant"] > 1000
    assert comparison["additional_samples"] > 0
    assert report["verdict"]["decision"] == "inconclusive"


def test_quality_metrics_score_each_variants_own_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(
        tmp_path / "logs" / "a.jsonl",
        [
            *(record(f"a{n}", prediction=n % 2) for n in range(200)),
            *(record(f"b{n}", prediction=n % 2, variant="challenger") for n in range(200)),
        ],
    )
    labels = [[f"a{n}", n % 2] for n in range(200)] + [[f"b{n}", 1 - n % 2] for n in range(200)]
    outcomes = write_csv(tmp_path / "labels.csv", ["request_id", "label"], labels)
    report = report_json(
        capsys,
        "--logs", str(tmp_path / "logs"), "--outcomes", str(outcomes),
        "--outcome-column", "label", "--metric", "accuracy",
    )  # fmt: skip
    assert report["variants"]["champion"]["outcome"]["mean"] == 1.0
    assert report["variants"]["challenger"]["outcome"]["mean"] == 0.0
    assert report["verdict"]["decision"] == "keep_champion"


def test_variants_not_named_champion_are_paired_by_weight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = {"blue": 70, "green": 20, "red": 10}
    write_log(
        tmp_path / "a.jsonl",
        [record(f"{name}{n}", variant=name, split=split) for name in split for n in range(3)],
    )
    report = report_json(capsys, "--logs", str(tmp_path))
    assert (report["champion"], report["challenger"]) == ("blue", "green")
    report = report_json(
        capsys, "--logs", str(tmp_path), "--champion", "red", "--challenger", "blue"
    )
    assert (report["champion"], report["challenger"]) == ("red", "blue")


def test_the_text_report_starts_with_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, outcomes = experiment(tmp_path, rates={"champion": 0.10, "challenger": 0.20}, users=300)
    assert main(["report", "--logs", str(logs), "--outcomes", str(outcomes)], environ={}) == 0
    text = capsys.readouterr().out
    assert text.startswith("Verdict: ")
    assert "Split health (sample ratio, by users): healthy" in text
    assert "challenger - champion:" in text


def test_the_html_report_is_one_file_with_inline_svg_and_nothing_from_the_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, outcomes = experiment(tmp_path, rates={"champion": 0.10, "challenger": 0.20}, users=300)
    page = tmp_path / "report.html"
    report_json(capsys, "--logs", str(logs), "--outcomes", str(outcomes), "--html", str(page))
    html = page.read_text(encoding="utf-8")
    assert html.count("<svg") >= 4
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--logs", "{tmp}/missing"], 2, "error: --logs: no such directory"),
        (["--logs", "{tmp}/logs", "--since", "yesterday"], 2, "error: --since: expected"),
        (["--logs", "{tmp}/logs", "--since", "2030-01-01"], 1, "error: no records in the time window"),
        (["--logs", "{tmp}/logs", "--outcomes", "{tmp}/nope.csv"], 2, "error: --outcomes: no such"),
        (["--logs", "{tmp}/logs", "--outcomes", "{tmp}/o.csv", "--outcome-column", "x"], 2, "error: --outcome-column"),
        (["--logs", "{tmp}/logs", "--outcomes", "{tmp}/o.csv", "--key", "user"], 2, "error: --key user needs"),
        (["--logs", "{tmp}/logs", "--champion", "nobody"], 2, "error: --champion: no live records"),
        (["--logs", "{tmp}/logs", "--alpha", "2"], 2, "error: --alpha"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_on_stderr_and_a_status(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    write_log(tmp_path / "logs" / "a.jsonl", [record("r1"), record("r2", variant="challenger")])
    write_csv(tmp_path / "o.csv", ["request_id", "outcome"], [["r1", 1]])
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(["report", *args], environ={}) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message)
    assert captured.err.count("\n") == 1


def test_the_secret_comes_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path / "logs" / "a.jsonl", [record("r1", user="alice")])
    outcomes = write_csv(tmp_path / "o.csv", ["user_id", "outcome"], [["alice", 1]])
    argv = ["report", "--logs", str(tmp_path / "logs"), "--outcomes", str(outcomes), "--json"]
    status = main([*argv, "--key", "user"], environ={report_command.SECRET_ENV: SECRET})
    assert status == 0
    assert json.loads(capsys.readouterr().out)["variants"]["champion"]["outcome"]["n"] == 1


def test_the_auc_compares_each_variants_scores_with_delong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(4)
    records, labels = [], []
    for n in range(600):
        variant = "champion" if n % 2 else "challenger"
        label = int(rng.uniform() < 0.4)
        signal = 1.5 if variant == "challenger" else 0.3
        score = float(1 / (1 + np.exp(-(signal * (2 * label - 1) + rng.normal()))))
        records.append(record(f"r{n}", variant=variant, prediction=round(score, 4)))
        labels.append([f"r{n}", label])
    write_log(tmp_path / "logs" / "a.jsonl", records)
    outcomes = write_csv(tmp_path / "labels.csv", ["request_id", "outcome"], labels)
    argv = ["--logs", str(tmp_path / "logs"), "--outcomes", str(outcomes), "--metric", "auc"]
    report = report_json(capsys, *argv)
    (comparison,) = report["comparisons"]
    assert comparison["test"] == "delong_z"
    assert comparison["unit"] == "record"
    assert report["variants"]["challenger"]["outcome"]["mean"] > 0.8
    assert report["verdict"]["decision"] == "promote"
