"""Whether a model version is batched (pure): the endpoint's setting and the model's flavor decide.

Merging concurrent requests into one `predict` call is only right for a model that predicts each
row independently of the other rows of its input. `batching: auto` (the default) batches the
flavors whose `predict` does so by contract, and leaves everything else alone:

- scikit-learn: estimators and pipelines predict row by row (transformers fitted beforehand);
- XGBoost, LightGBM, CatBoost: tree ensembles score each row on its own;
- ONNX, when its signature is named scalar columns (a tabular model): a tensor model may mix rows
  (sequences, attention), so only the tabular case is batched.

Not batched under `auto`: custom `python_function` models (their code may look at the whole
input), statsmodels (its time-series models take start and end rows, not independent rows), and
any other flavor. `batching: {max_batch_size, max_wait_ms}` batches any model; `off` none.
"""

from dataclasses import dataclass
from typing import Final, Literal

from gateway.core.config import Batching

# MLflow's pyfunc loader module of each flavor that predicts rows independently, and its name.
ROW_INDEPENDENT: Final = {
    "mlflow.sklearn": "scikit-learn",
    "mlflow.xgboost": "XGBoost",
    "mlflow.lightgbm": "LightGBM",
    "mlflow.catboost": "CatBoost",
}
TABULAR_ONLY: Final = {"mlflow.onnx": "ONNX"}
AUTO: Final = Batching()


@dataclass(frozen=True)
class BatchPolicy:
    """How a model version is served: batched with these settings, or not (None), and why."""

    settings: Batching | None
    reason: str

    @property
    def enabled(self) -> bool:
        """Whether concurrent requests are merged."""
        return self.settings is not None


def batch_policy(
    setting: Batching | Literal["auto", "off"], loader_module: str | None, tabular: bool
) -> BatchPolicy:
    """The policy for a model whose pyfunc loader is `loader_module` (`tabular`: named columns)."""
    if setting == "off":
        return BatchPolicy(None, "batching: off")
    if isinstance(setting, Batching):
        return BatchPolicy(setting, "batching set in the config")
    flavor = ROW_INDEPENDENT.get(loader_module or "")
    if flavor is not None:
        return BatchPolicy(AUTO, f"auto: {flavor} predicts each row independently")
    flavor = TABULAR_ONLY.get(loader_module or "")
    if flavor is not None and tabular:
        return BatchPolicy(AUTO, f"auto: a tabular {flavor} model predicts each row independently")
    if flavor is not None:
        return BatchPolicy(None, f"auto: a non-tabular {flavor} model may mix rows")
    kind = "a custom python_function" if loader_module == "mlflow.pyfunc.model" else "this flavor"
    return BatchPolicy(
        None, f"auto: {kind} model may look at the whole input; set batching to merge requests"
    )
