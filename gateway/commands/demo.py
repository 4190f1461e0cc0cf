"""The embedded demo: a local sqlite MLflow registry with two trained churn models and a config."""

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

MODEL_NAME = "churn"
FEATURES = ("tenure_months", "monthly_charges", "support_calls", "plan")
PLANS = ("basic", "plus", "pro")

CONFIG_TEMPLATE = """\
# Written by `gateway demo`: the demo registry's churn model, 90/10 champion/challenger.
tracking_uri: {tracking_uri}
endpoints:
  - name: churn
    model: {model}
    variants:
      - {{alias: champion, weight: 90}}
      - {{alias: challenger, weight: 10}}
    sticky:
      header: X-User-Id
inference_log:
  dir: {log_dir}
  # Records carry an HMAC of each X-User-Id, never the id; set your own secret in production.
  user_key_secret: demo-secret-change-me-in-production
"""


def synthetic_customers(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers with a churn label that depends on their features, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure_months": rng.integers(1, 72, rows).astype("int64"),
            "monthly_charges": rng.uniform(10.0, 120.0, rows).round(2),
            "support_calls": rng.poisson(1.5, rows).astype("int64"),
            "plan": rng.choice(PLANS, rows),
        }
    )
    plan_risk = frame["plan"].map({"basic": 0.8, "plus": 0.0, "pro": -0.6}).to_numpy()
    logit = (
        -0.05 * frame["tenure_months"]
        + 0.02 * frame["monthly_charges"]
        + 0.6 * frame["support_calls"]
        + plan_risk
        - 1.0
    )
    labels = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame, labels


def _pipeline(regularisation: float) -> object:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    encode = ColumnTransformer(
        [
            ("numbers", StandardScaler(), list(FEATURES[:3])),
            ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
        ]
    )
    return Pipeline([("encode", encode), ("classify", LogisticRegression(C=regularisation))])


# alias -> the regularisation of its logistic regression.
VARIANTS = {"champion": 1.0, "challenger": 0.05}


def register_models(client: Any, experiment_id: str, existing: Mapping[str, str]) -> dict[str, str]:
    """Train and register the demo's version of every alias missing from `existing`.

    Uses MLflow's current tracking URI for the runs; returns each alias's version.
    """
    import mlflow
    from mlflow.models import infer_signature

    versions = dict(existing)
    features, labels = synthetic_customers(rows=4_000, seed=7)
    for alias, regularisation in VARIANTS.items():
        if alias in versions:
            continue
        model = _pipeline(regularisation)
        model.fit(features, labels)  # type: ignore[attr-defined]
        with warnings.catch_warnings():
            # The integer columns are deliberate: the demo's data has no missing values.
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(features.head(20), model.predict(features.head(20)))  # type: ignore[attr-defined]
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"demo-{alias}"):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                input_example=features.head(3),
                registered_model_name=MODEL_NAME,
                serialization_format="skops",
            )
        versions[alias] = str(info.registered_model_version)
        client.set_registered_model_alias(MODEL_NAME, alias, versions[alias])
        logger.info("registered %s version %s as @%s", MODEL_NAME, versions[alias], alias)
    return {alias: versions[alias] for alias in VARIANTS}


def build_demo(directory: Path) -> Path:
    """Create (or reuse) the demo registry in `directory`; return the path of its gateway.yaml."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{directory / 'mlflow.db'}"
    config_path = directory / "gateway.yaml"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        aliases = client.get_registered_model(MODEL_NAME).aliases
    except MlflowException:
        aliases = {}
    if set(VARIANTS) <= set(aliases) and config_path.exists():
        logger.info("reusing the demo registry in %s", directory)
        return config_path

    logger.info("creating the demo registry in %s (about 15 s, once)", directory)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("gateway-demo")
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(
            "gateway-demo", artifact_location=(directory / "artifacts").as_uri()
        )
    )
    # A registry left half-made by an interrupted first run is completed, not duplicated.
    register_models(client, experiment_id, dict(aliases))
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            tracking_uri=tracking_uri, model=MODEL_NAME, log_dir=directory / "inference-logs"
        ),
        encoding="utf-8",
    )
    return config_path


def allow_demo_model_loading() -> None:
    """The demo loads only models it trained itself, so it may opt in to deserialising them."""
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
