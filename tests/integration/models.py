"""pyfunc models that the tests register beside the demo's: their behaviour is under test control.

They are pickled by reference to this module, so a gateway in the test process loads the very
classes below and shares their module-level gate.
"""

import threading
import time
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

# Shadow predictions of GatedModel wait here until a test opens the gate.
GATE = threading.Event()
GATE.set()


class GatedModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Predicts 1 for every row once the gate is open: a slow shadow model on demand."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        if not GATE.wait(60):
            raise TimeoutError("the test never opened the gate")
        return [1] * len(model_input)


def register(
    name: str, alias: str, python_model: mlflow.pyfunc.PythonModel, tracking_uri: str
) -> str:
    """Log and register a pyfunc model, point `alias` at it, and return its version."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    # The demo's experiment keeps artifacts beside its registry, not in the working directory.
    experiment = mlflow.get_experiment_by_name("gateway-demo")
    assert experiment is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=f"test-{alias}"):
        # No requirements to infer: these models run only where the tests do, and MLflow's
        # inference of them imports the model in a subprocess (seconds per version).
        info = mlflow.pyfunc.log_model(
            name="model", python_model=python_model, registered_model_name=name, pip_requirements=[]
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient(tracking_uri, tracking_uri).set_registered_model_alias(name, alias, version)
    return version


class ConstantModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Predicts its own marker for every row: the answer tells which version computed it."""

    def __init__(self, marker: int) -> None:
        self.marker = marker

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        return [self.marker] * len(model_input)


class FlakyModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Predicts 1, but fails every request that has a row with `tenure_months` divisible by 3."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        if (model_input["tenure_months"].astype(int) % 3 == 0).any():
            raise ValueError("this challenger is broken for some customers")
        return [1] * len(model_input)


# Rows of every predict call of BatchProbeModel, in order: how requests were merged.
BATCH_CALLS: list[int] = []


class BatchProbeModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Predicts `tenure_months * 10 + support_calls` a row, records how many rows each call got,
    waits at GATE, and fails a call with a row whose `tenure_months` is 13 (a poisoned request).
    A row whose `tenure_months` is 14 is predicted as something JSON cannot encode."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[Any]:
        BATCH_CALLS.append(len(model_input))
        if not GATE.wait(60):
            raise TimeoutError("the test never opened the gate")
        tenure = model_input["tenure_months"].astype(int)
        if (tenure == 13).any():
            raise ValueError("poisoned row")
        predictions = (tenure * 10 + model_input["support_calls"].astype(int)).tolist()
        return [object() if t == 14 else p for t, p in zip(tenure, predictions, strict=True)]


# Shadow predictions of ShadowProbeModel: how many started, and the gate they wait at.
SHADOW_CALLS: list[int] = []
SHADOW_GATE = threading.Event()
SHADOW_GATE.set()


class ShadowProbeModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Counts its predict calls and waits at SHADOW_GATE: a shadow that is blocked on demand."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        SHADOW_CALLS.append(len(model_input))
        if not SHADOW_GATE.wait(60):
            raise TimeoutError("the test never opened the shadow gate")
        return [1] * len(model_input)


class BuggyModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Raises a plain Python exception for `tenure_months` 13; predicts 1 otherwise."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        if (model_input["tenure_months"].astype(int) == 13).any():
            raise ZeroDivisionError("a bug in the model")
        return [1] * len(model_input)


class BackendDownModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Fails every predict as a model whose backend is down: MLflow's INTERNAL_ERROR, a 500."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        raise MlflowException("the feature store is down", error_code=INTERNAL_ERROR)


# How SwitchModel predicts: "fast"; "sleep" (SWITCH_SLEEP_SECONDS a call); "hold" (at
# SWITCH_RELEASE). The thread of each of its calls, in order: the loop's, or a worker's.
SWITCH = {"mode": "fast"}
SWITCH_SLEEP_SECONDS = 0.3
SWITCH_THREADS: list[str] = []
SWITCH_HELD = threading.Event()
SWITCH_RELEASE = threading.Event()


class SwitchModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Predicts 1 a row, fast until the test makes it slow: a model that turns slow in service."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> list[int]:
        SWITCH_THREADS.append(threading.current_thread().name)
        if SWITCH["mode"] == "sleep":
            time.sleep(SWITCH_SLEEP_SECONDS)
        elif SWITCH["mode"] == "hold":
            SWITCH_HELD.set()
            if not SWITCH_RELEASE.wait(60):
                raise TimeoutError("the test never released the model")
        return [1] * len(model_input)
