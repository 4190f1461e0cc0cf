"""The models under test: the registry each `--model` builds, and the request bodies."""

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from benchmarks.gatewaybench.plan import ROWS
from gateway.commands.demo import FEATURES, MODEL_NAME, build_demo, synthetic_customers

PAYLOAD_SEED = 11

# The model that the reference figures for `mlflow models serve` were taken with: a plain
# LogisticRegression on numeric columns, no preprocessing pipeline.
NUMERIC_FEATURES = ("tenure_months", "monthly_charges", "support_calls")
MODELS = ("pipeline", "logistic", "forest")
# The forest challenger of `--model forest`: a small RandomForest, as a user's challenger might be.
FOREST_TREES = 15


def payloads(features: Sequence[str]) -> dict[int, bytes]:
    """A `dataframe_split` JSON body per row count, from the demo's synthetic customers."""
    frame, _ = synthetic_customers(rows=max(ROWS), seed=PAYLOAD_SEED)
    columns = frame[list(features)]
    data = [
        [value.item() if hasattr(value, "item") else value for value in row]
        for row in columns.itertuples(index=False)
    ]
    return {
        rows: json.dumps(
            {"dataframe_split": {"columns": list(features), "data": data[:rows]}}
        ).encode()
        for rows in ROWS
    }


def build_logistic_registry(directory: Path, forest: bool = False) -> str:
    """A sqlite registry with `churn` v1 @champion and v2 @challenger as plain LogisticRegressions;
    with `forest`, the challenger is a RandomForest of FOREST_TREES trees instead."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from gateway.commands.demo import VARIANTS

    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    experiment = mlflow.create_experiment(
        "bench", artifact_location=(directory / "artifacts").as_uri()
    )
    frame, labels = synthetic_customers(rows=4_000, seed=7)
    features = frame[list(NUMERIC_FEATURES)].astype("float64")
    for alias, regularisation in VARIANTS.items():
        model = (
            RandomForestClassifier(n_estimators=FOREST_TREES, random_state=7)
            if forest and alias == "challenger"
            else LogisticRegression(C=regularisation)
        ).fit(features, labels)
        signature = infer_signature(features.head(20), model.predict(features.head(20)))
        with mlflow.start_run(experiment_id=experiment, run_name=f"bench-{alias}"):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                registered_model_name=MODEL_NAME,
                serialization_format="skops",
                # Trees hold node indices that skops cannot audit; this run trained them.
                skops_trusted_types=["sklearn.tree._tree.Tree"] if forest else None,
            )
        client.set_registered_model_alias(MODEL_NAME, alias, str(info.registered_model_version))
    return uri


def model_features(model: str) -> Sequence[str]:
    """The columns the `--model` reads, and so the columns of the request bodies."""
    return FEATURES if model == "pipeline" else NUMERIC_FEATURES


def build_registry(model: str, directory: Path) -> str:
    """Build the `--model`'s registry in `directory`; return its tracking URI."""
    if model in ("logistic", "forest"):
        return build_logistic_registry(directory, forest=model == "forest")
    config_path = build_demo(directory)
    return str(yaml.safe_load(config_path.read_text(encoding="utf-8"))["tracking_uri"])
