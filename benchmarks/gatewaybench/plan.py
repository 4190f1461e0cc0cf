"""What is measured: the servers to start, the cells, and the requests' sizes and headers."""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.commands.demo import MODEL_NAME

CONNECTIONS = (1, 16, 64)
ROWS = (1, 32)
FEATURE_CONNECTIONS, FEATURE_ROWS = 16, 1
USER_IDS = 10_000
# Under the run's temporary directory; only row (c)'s server writes there, row (d)'s beside it.
INFERENCE_LOG_DIR = "inference-logs"
TRACED_LOG_DIR = "inference-logs-traced"
STICKY_HEADER = "X-User-Id"


class Features(StrEnum):
    """What a server does besides predicting with the champion."""

    NONE = "-"
    SINGLE = "single"
    SPLIT = "split 90/10 + sticky"
    OBSERVED = "split + sticky + log + metrics"
    TRACED = "split + sticky + log + metrics + tracing"


@dataclass(frozen=True)
class ServerSpec:
    """One server to start: MLflow's scoring server, or the gateway with a config."""

    key: str
    label: str
    workers: int
    features: Features
    gateway_config: dict[str, Any] | None = None
    # A checkout whose `gateway` package this server runs instead of the installed one.
    source: Path | None = None

    @property
    def name(self) -> str:
        """The server as the progress lines call it, with its worker flag."""
        flag = "-w" if self.gateway_config is None else "--workers"
        return f"{self.label} {flag} {self.workers}"

    @property
    def split(self) -> bool:
        """Whether the server splits traffic between champion and challenger."""
        return self.features in (Features.SPLIT, Features.OBSERVED, Features.TRACED)


@dataclass(frozen=True)
class Cell:
    """One measurement: a server under C connections sending R-row payloads."""

    server: ServerSpec
    connections: int
    rows: int
    # The table's `features` column: the server's features, lettered on the feature rows.
    label: str
    sticky_ids: bool = False


# The feature rows: gateway --workers 2 at 16 connections, 1 row, by server key.
FEATURE_WORKERS = 2
FEATURE_ROWS_BY_KEY = {
    "gateway-2": f"(a) {Features.SINGLE}",
    "gateway-split": f"(b) {Features.SPLIT}",
    "gateway-observed": f"(c) {Features.OBSERVED}",
    "gateway-traced": f"(d) {Features.TRACED}",
}
MATRIX_KEYS = ("mlflow", "gateway-1", "gateway-2")


def server_specs(tracking_uri: str, directory: Path, traces_url: str) -> list[ServerSpec]:
    """The yardstick and the five gateway configurations; row (d) exports to `traces_url`."""

    def config(features: Features) -> dict[str, Any]:
        return gateway_config(tracking_uri, directory, features, traces_url)

    return [
        ServerSpec("mlflow", "mlflow serve", 1, Features.NONE),
        ServerSpec("gateway-1", "gateway", 1, Features.SINGLE, config(Features.SINGLE)),
        ServerSpec("gateway-2", "gateway", 2, Features.SINGLE, config(Features.SINGLE)),
        ServerSpec(
            "gateway-split", "gateway", FEATURE_WORKERS, Features.SPLIT, config(Features.SPLIT)
        ),
        ServerSpec(
            "gateway-observed",
            "gateway",
            FEATURE_WORKERS,
            Features.OBSERVED,
            config(Features.OBSERVED),
        ),
        ServerSpec(
            "gateway-traced", "gateway", FEATURE_WORKERS, Features.TRACED, config(Features.TRACED)
        ),
    ]


def gateway_config(
    tracking_uri: str, directory: Path, features: Features, traces_url: str | None = None
) -> dict[str, Any]:
    """The gateway's config for a feature set, as a user writes it: no batching key (auto).

    Row (d) traces every request (sampled 100%, the worst case) to `traces_url`; the others have
    no `tracing` key, so a commit from before tracing reads their configs too (compare.py).
    """
    # `batching: auto` batches the benchmark's scikit-learn models (32 requests, 2 ms).
    endpoint: dict[str, Any] = {"name": MODEL_NAME, "model": MODEL_NAME}
    if features is Features.SINGLE:
        endpoint["variants"] = [{"alias": "champion", "weight": 1}]
    else:
        endpoint["variants"] = [
            {"alias": "champion", "weight": 90},
            {"alias": "challenger", "weight": 10},
        ]
        endpoint["sticky"] = {"header": STICKY_HEADER}
    observed = features in (Features.OBSERVED, Features.TRACED)
    log_dir = directory / (TRACED_LOG_DIR if features is Features.TRACED else INFERENCE_LOG_DIR)
    config: dict[str, Any] = {
        "tracking_uri": tracking_uri,
        "endpoints": [endpoint],
        "inference_log": {"dir": str(log_dir), "enabled": observed},
        "metrics": {"enabled": observed},
    }
    if features is Features.TRACED:
        config["tracing"] = {"enabled": True, "endpoint": traces_url, "sample_ratio": 1.0}
    return config


def cells(specs: Sequence[ServerSpec]) -> list[Cell]:
    """The matrix (interleaved, so that drift hits every server alike), then the feature rows."""
    by_key = {spec.key: spec for spec in specs}
    measured = [
        Cell(by_key[key], connections, rows, by_key[key].features)
        for rows in ROWS
        for connections in CONNECTIONS
        for key in MATRIX_KEYS
    ]
    # All three send the same X-User-Id headers, so only the gateway's work differs between them.
    measured += [
        Cell(by_key[key], FEATURE_CONNECTIONS, FEATURE_ROWS, label, sticky_ids=True)
        for key, label in FEATURE_ROWS_BY_KEY.items()
    ]
    return measured
