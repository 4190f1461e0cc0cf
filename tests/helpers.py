"""Helpers shared by the test modules (never import one test module from another)."""

import json
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.record import build_record, user_key_hash
from gateway.protocol import compat, payload
from gateway.protocol.frame_plan import make_plan
from gateway.protocol.payload import InputSpec
from gateway.serving.registry import LoadedModel, ModelVersion

REPO = Path(__file__).resolve().parents[1]
_FIELD_ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \|", re.MULTILINE)


def documented_record_fields() -> list[str]:
    """The inference-log fields, in order, as docs/inference-log.md documents them."""
    text = (REPO / "docs" / "inference-log.md").read_text(encoding="utf-8")
    return [match["name"] for match in _FIELD_ROW.finditer(text)]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a gateway's /metrics, keyed by (sample name, its labels)."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent): `sample(s, "gateway_requests_total", status="200")`.

    Labels not given are summed over.
    """
    wanted = set(labels.items())
    return sum(
        value for (found, pairs), value in samples.items() if found == name and wanted <= pairs
    )


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every inference-log record in a directory's files."""
    # JSON Lines are separated by "\n" alone: str.splitlines would also split a record at a
    # U+2028 or U+0085 that a request body holds inside a JSON string.
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").split("\n")
        if line
    ]


# Fakes for the serving layer's unit tests: a model, an executor and a log writer in memory.

AGE_SCHEMA = Schema([ColSpec("long", "age"), ColSpec("string", "plan")])
POISONED_AGE = 13  # a row that makes FakePyfunc raise a plain Python exception
UNENCODABLE_AGE = 14  # a row that FakePyfunc predicts as something JSON cannot encode


def input_spec(schema: Schema = AGE_SCHEMA) -> InputSpec:
    """The InputSpec a registry load makes of a model with this input schema, frame plan included."""
    metadata = Model(signature=ModelSignature(inputs=schema))

    def reference(document: dict[str, Any]) -> Any:
        return compat.enforce_schema(payload.parse_json(document, metadata, schema).data, schema)

    return InputSpec(metadata, schema, make_plan(metadata, schema, reference))


@dataclass(frozen=True)
class PredictCall:
    """One `predict` call a FakePyfunc received: each row's age, and the params."""

    ages: tuple[int, ...]
    params: dict[str, Any] | None


@dataclass
class FakePyfunc:
    """A pyfunc model predicting `age * 10` a row, recording every call's rows and params."""

    calls: list[PredictCall] = field(default_factory=list)

    def predict(self, data: pd.DataFrame, params: dict[str, Any] | None = None) -> list[Any]:
        """Record the call; raise for a poisoned row; an unencodable prediction for its row."""
        ages = tuple(int(age) for age in data["age"])
        self.calls.append(PredictCall(ages, params))
        if POISONED_AGE in ages:
            raise ValueError("poisoned row")
        return [object() if age == UNENCODABLE_AGE else age * 10 for age in ages]


def fake_model(pyfunc: FakePyfunc, version: str = "1", model: str = "churn") -> LoadedModel:
    """A loaded model whose pyfunc (planned or not) is the fake."""
    return LoadedModel(
        version=ModelVersion(model, version, None),
        pyfunc=pyfunc,
        spec=input_spec(),
        planned_pyfunc=pyfunc,
    )


@dataclass
class FakeClock:
    """A clock that moves only when the test moves it."""

    now: float = 0.0

    def __call__(self) -> float:
        """The current time, in seconds."""
        return self.now


class ManualExecutor(Executor):
    """An executor that runs nothing: it records each submitted call and the test completes it."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.futures: list[Future[Any]] = []
        self.shut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Record the call and return a future that only the test completes."""
        if self.shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[Any] = Future()
        self.submitted.append((fn, args))
        self.futures.append(future)
        return future


class MemoryLogWriter:
    """An inference-log writer that keeps the record builders it is given."""

    def __init__(self) -> None:
        self.submitted: list[Callable[[], dict[str, Any]]] = []

    def submit(self, record: Callable[[], dict[str, Any]]) -> None:
        """Keep a record builder."""
        self.submitted.append(record)

    def queue_depth(self) -> int:
        """Nothing is ever queued."""
        return 0

    def records(self) -> list[dict[str, Any]]:
        """Every record, built."""
        return [build() for build in self.submitted]


class FakePool:
    """The models and live weights a service reads, as fixed dictionaries."""

    def __init__(
        self, models: dict[tuple[str, str], LoadedModel], weights: dict[str, dict[str, int]]
    ) -> None:
        self.models = models
        self.live_weights = weights

    def get(self, endpoint: str, variant: str) -> LoadedModel | None:
        """The model of (endpoint, variant), or None: still loading."""
        return self.models.get((endpoint, variant))

    def weights(self, endpoint: str) -> dict[str, int]:
        """An endpoint's live weights."""
        return self.live_weights[endpoint]


# Inference-log records and outcome files for the report's tests, made with the real record code.
SECRET = "a-secret-of-the-deployment"
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan"]


def record(request_id: str, **overrides: Any) -> dict[str, Any]:
    """A real inference-log record (gateway.core.record.build_record) with test defaults.

    `user` (a raw user key) becomes `user_key_hash` under SECRET; `prediction` the response.
    """
    user = overrides.pop("user", None)
    prediction = overrides.pop("prediction", 0)
    row = overrides.pop("row", [3, 89.5, 4, "basic"])
    arguments: dict[str, Any] = {
        "request_id": request_id,
        "timestamp": START,
        "endpoint": "churn",
        "model": "churn",
        "variant": "champion",
        "model_version": "1",
        "routing": "sticky" if user is not None else "random",
        "split": {"champion": 50, "challenger": 50},
        "user_key_hash": None if user is None else user_key_hash(user, SECRET.encode()),
        "requester": None,
        "client_request_id": None,
        "status_code": 200,
        "duration_ms": 4.5,
        "request_body": json.dumps(
            {"dataframe_split": {"columns": FEATURES, "data": [row]}}
        ).encode(),
        "content_type": "application/json",
        "response_body": json.dumps({"predictions": [prediction]}).encode(),
        "error": None,
        "max_payload_bytes": None,
    }
    arguments.update(overrides)
    if arguments["status_code"] != 200:
        arguments["response_body"] = None
        arguments["error"] = arguments["error"] or "failed"
    return build_record(**arguments)


def write_log(
    path: Path, records: Iterable[dict[str, Any]], extra_lines: Iterable[str] = ()
) -> Path:
    """Records as JSON Lines (plus any raw lines), as the gateway's writer writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for item in records:
            file.write(json.dumps(item, separators=(",", ":")) + "\n")
        for line in extra_lines:
            file.write(line + "\n")
    return path


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> Path:
    """A small CSV file."""
    lines = [",".join(header), *(",".join(str(cell) for cell in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
