"""Which model versions are batched: `batching: auto` by flavor, an explicit setting, or off."""

import pytest

from gateway.core.batch_policy import AUTO, batch_policy
from gateway.core.config import Batching
from gateway.core.config_file import ConfigError, parse_config

EXPLICIT = Batching(max_batch_size=8, max_wait_ms=1)


@pytest.mark.parametrize(
    ("setting", "loader", "tabular", "expected", "reason"),
    [
        ("auto", "mlflow.sklearn", True, AUTO, "scikit-learn predicts each row independently"),
        ("auto", "mlflow.xgboost", True, AUTO, "XGBoost"),
        ("auto", "mlflow.lightgbm", False, AUTO, "LightGBM"),
        ("auto", "mlflow.catboost", True, AUTO, "CatBoost"),
        ("auto", "mlflow.onnx", True, AUTO, "tabular ONNX"),
        ("auto", "mlflow.onnx", False, None, "non-tabular ONNX model may mix rows"),
        ("auto", "mlflow.pyfunc.model", True, None, "custom python_function"),
        ("auto", "mlflow.statsmodels", True, None, "this flavor"),
        ("auto", None, True, None, "this flavor"),
        ("off", "mlflow.sklearn", True, None, "batching: off"),
        (EXPLICIT, "mlflow.pyfunc.model", False, EXPLICIT, "set in the config"),
    ],
)
def test_auto_batches_flavors_that_predict_rows_independently_and_nothing_else(
    setting: Batching | str,
    loader: str | None,
    tabular: bool,
    expected: Batching | None,
    reason: str,
) -> None:
    policy = batch_policy(setting, loader, tabular)  # type: ignore[arg-type]
    assert policy.settings == expected
    assert policy.enabled is (expected is not None)
    assert reason in policy.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "auto"),
        ("batching: auto", "auto"),
        ("batching: off", "off"),
        ("batching: {max_batch_size: 8, max_wait_ms: 1}", EXPLICIT),
    ],
)
def test_the_config_takes_auto_off_or_settings_and_defaults_to_auto(
    text: str, expected: Batching | str
) -> None:
    config = parse_config(
        f"endpoints: [{{name: a, model: a, variants: [{{alias: champion}}], {text}}}]"
        if text
        else "endpoints: [{name: a, model: a, variants: [{alias: champion}]}]",
        {},
    )
    assert config.endpoints[0].batching == expected


def test_an_unknown_batching_word_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.batching"):
        parse_config(
            "endpoints: [{name: a, model: a, variants: [{alias: c}], batching: sometimes}]", {}
        )


def test_the_environment_turns_batching_off() -> None:
    config = parse_config(
        "endpoints: [{name: a, model: a, variants: [{alias: champion}]}]",
        {"GATEWAY_ENDPOINTS__0__BATCHING": "off"},
    )
    assert config.endpoints[0].batching == "off"
