"""Register the demo's churn models on an MLflow server: version 1 @champion, version 2 @challenger.

The compose stack runs this once, in the gateway image, against its tracking server
(MLFLOW_TRACKING_URI). The models and data are those of `gateway demo`; the artifacts go wherever
the server puts them (here S3, through the server's artifact proxy). When both aliases exist
already it changes nothing, so a restarted stack keeps its registry as ops left it.
"""

import logging
import os
import sys

import mlflow
from mlflow import MlflowClient  # noqa: TID251 (a script of its own: it sets the registry's aliases)
from mlflow.exceptions import MlflowException

from gateway.commands.demo import MODEL_NAME, VARIANTS, register_models

logger = logging.getLogger("seed")

EXPERIMENT = "gateway-demo"


def seed(client: MlflowClient) -> dict[str, str]:
    """Train and register what is missing; return each alias's version."""
    try:
        aliases = dict(client.get_registered_model(MODEL_NAME).aliases)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        aliases = {}
    if set(VARIANTS) <= set(aliases):
        logger.info("%s already has %s; nothing to do", MODEL_NAME, aliases)
        return {alias: aliases[alias] for alias in VARIANTS}

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(EXPERIMENT)
    return register_models(client, experiment_id, aliases)


def main() -> int:
    """Seed the registry at MLFLOW_TRACKING_URI; exit status 0 when both aliases resolve."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        logger.error("set MLFLOW_TRACKING_URI to the tracking server to seed")
        return 2
    versions = seed(MlflowClient())
    for alias, version in versions.items():
        print(f"models:/{MODEL_NAME}@{alias} -> version {version}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
