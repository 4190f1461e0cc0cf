"""One invocation through the service: each ends as one Outcome and leaves exactly one record."""

import asyncio
import json
import random
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from gateway.core.config import GatewayConfig
from gateway.core.config_file import parse_config
from gateway.core.errors import GatewayError, ShedError
from gateway.core.record import user_key_hash
from gateway.core.routing import choose_sticky
from gateway.serving.accounting import Accountant
from gateway.serving.outcome import Invocation, Outcome
from gateway.serving.service import FORCE_HEADER, InvocationService
from tests.helpers import (
    POISONED_AGE,
    FakeClock,
    FakePool,
    FakePyfunc,
    ManualExecutor,
    MemoryLogWriter,
    fake_model,
)

SECRET = "a-secret-of-sixteen-characters"
CONFIG = parse_config(
    f"""
    metrics: {{enabled: false}}
    inference_log: {{user_key_secret: {SECRET}}}
    endpoints:
      - name: solo
        model: solo
        variants: [{{alias: champion}}]
      - name: churn
        model: churn
        variants: [{{alias: champion, weight: 90}}, {{alias: challenger, weight: 10}}]
        sticky: {{header: X-User-Id}}
      - name: locked
        model: locked
        variants: [{{alias: champion}}]
        allow_override: false
      - name: loading
        model: loading
        variants: [{{alias: champion}}]
      - name: batched
        model: batched
        variants: [{{alias: champion}}]
        batching: {{max_batch_size: 8, max_wait_ms: 0}}
      - name: rows
        model: rows
        variants: [{{alias: champion, weight: 50}}, {{alias: challenger, weight: 50}}]
        sticky: {{field: plan}}
    """,
    {},
)
JSON = "application/json"


def body(*ages: int) -> bytes:
    """A request with one row an age."""
    rows = [[age, "basic"] for age in ages]
    return json.dumps({"dataframe_split": {"columns": ["age", "plan"], "data": rows}}).encode()


def answer(*ages: int) -> bytes:
    """The fake model's answer for these ages."""
    return json.dumps({"predictions": [age * 10 for age in ages]}).encode()


def make_pool() -> FakePool:
    """Every variant loaded (version 3 for champions, 4 for the challenger) but `loading`'s."""
    models = {
        (endpoint.name, name): fake_model(
            FakePyfunc(), "4" if name == "challenger" else "3", endpoint.model
        )
        for endpoint in CONFIG.endpoints
        if endpoint.name != "loading"
        for name in endpoint.weights
    }
    return FakePool(models, {endpoint.name: endpoint.weights for endpoint in CONFIG.endpoints})


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """One worker thread, shut down after the test."""
    with ThreadPoolExecutor(1) as pool:
        yield pool


def make_service(
    executor: Executor, config: GatewayConfig = CONFIG, seed: int = 7, **options: Any
) -> tuple[InvocationService, MemoryLogWriter]:
    """A service on the fake pool, with an accountant writing to memory."""
    writer = MemoryLogWriter()
    accountant = Accountant(config, writer)  # type: ignore[arg-type]
    service = InvocationService(
        config,
        make_pool(),  # type: ignore[arg-type]
        executor,
        accountant,
        rng=random.Random(seed),
        **options,
    )
    return service, writer


def invocation(
    endpoint: str | None,
    data: bytes = b"",
    content_type: str | None = JSON,
    headers: Mapping[str, str] | None = None,
) -> Invocation:
    """An invocation as the edge hands it over."""
    return Invocation(
        request_id="req-1",
        endpoint=endpoint,
        body=data,
        content_type=content_type,
        headers=dict(headers or {}),
        wall=1_700_000_000.0,
        started=time.perf_counter(),
    )


@dataclass(frozen=True)
class Expected:
    """An outcome and its one record (None: no record), as a test expects them."""

    status: int
    error_code: str | None
    variant: str | None
    model_version: str | None
    routing: str | None
    split: dict[str, int] | None
    body: bytes | None = None
    message: str | None = None
    recorded: bool = True


PREDICT_FAILED = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized "
    "input Dataframe is compatible with the model for inference."
)
SOLO = {"champion": 1}
CHURN = {"champion": 90, "challenger": 10}

OUTCOMES: dict[str, tuple[Invocation, Expected]] = {
    "served by a weighted draw": (
        invocation("solo", body(1, 2)),
        Expected(200, None, "champion", "3", "random", SOLO, answer(1, 2)),
    ),
    "plain /invocations is the first endpoint": (
        invocation(None, body(5)),
        Expected(200, None, "champion", "3", "random", SOLO, answer(5)),
    ),
    "served through the batcher": (
        invocation("batched", body(6)),
        Expected(200, None, "champion", "3", "random", SOLO, answer(6)),
    ),
    "a forced variant": (
        invocation("churn", body(3), headers={FORCE_HEADER: "challenger"}),
        Expected(200, None, "challenger", "4", "forced", CHURN, answer(3)),
    ),
    "an unknown endpoint": (
        invocation("nope", body(1)),
        Expected(404, "ENDPOINT_NOT_FOUND", None, None, None, None, recorded=False),
    ),
    "an unsupported media type": (
        invocation("solo", b"age\n1\n", content_type="text/plain"),
        Expected(415, "UNSUPPORTED_MEDIA_TYPE", None, None, None, None),
    ),
    "a model still loading": (
        invocation("loading", body(1)),
        Expected(
            503,
            "TEMPORARILY_UNAVAILABLE",
            None,
            None,
            "random",
            SOLO,
            message="Endpoint 'loading' variant 'champion' is still loading.",
        ),
    ),
    "an unknown forced variant": (
        invocation("churn", body(1), headers={FORCE_HEADER: "nobody"}),
        Expected(400, "INVALID_PARAMETER_VALUE", None, None, None, None),
    ),
    "a forced variant where the endpoint allows none": (
        invocation("locked", body(1), headers={FORCE_HEADER: "champion"}),
        Expected(400, "INVALID_PARAMETER_VALUE", None, None, None, None),
    ),
    "a body the protocol rejects": (
        invocation("solo", b'{"rows": []}'),
        Expected(400, "BAD_REQUEST", "champion", "3", "random", SOLO),
    ),
    "a model raising a plain Python exception": (
        invocation("solo", body(13)),
        Expected(400, "BAD_REQUEST", "champion", "3", "random", SOLO, message=PREDICT_FAILED),
    ),
    "a bug: predictions that cannot be encoded": (
        invocation("solo", body(14)),
        Expected(
            500,
            "INTERNAL_ERROR",
            "champion",
            "3",
            "random",
            SOLO,
            message="Internal error; see the gateway log.",
        ),
    ),
    "a bug in a batched prediction": (
        invocation("batched", body(14)),
        Expected(
            500,
            "INTERNAL_ERROR",
            "champion",
            "3",
            "random",
            SOLO,
            message="Internal error; see the gateway log.",
        ),
    ),
}


def check(outcome: Outcome, records: list[dict[str, Any]], expected: Expected) -> None:
    """The outcome and its records are what `expected` says."""
    assert outcome.status_code == expected.status
    assert (outcome.error.error_code if outcome.error else None) == expected.error_code
    assert outcome.body == expected.body
    if expected.message is not None:
        assert outcome.error is not None
        assert outcome.error.message == expected.message
    if expected.variant is None:
        assert outcome.parts == ()
    else:
        (part,) = outcome.parts
        assert (part.variant, part.model_version) == (expected.variant, expected.model_version)
    if not expected.recorded:
        assert records == []
        return
    (record,) = records
    assert {
        key: record[key]
        for key in ("status_code", "variant", "model_version", "routing", "split", "error")
    } == {
        "status_code": expected.status,
        "variant": expected.variant,
        "model_version": expected.model_version,
        "routing": expected.routing,
        "split": expected.split,
        "error": outcome.error.message if outcome.error else None,
    }
    assert record["response"] == (None if expected.body is None else expected.body.decode())
    assert record["request_id"] == outcome.invocation.request_id


@pytest.mark.parametrize(("request_", "expected"), list(OUTCOMES.values()), ids=list(OUTCOMES))
def test_an_invocation_ends_as_one_outcome_and_one_record(
    executor: ThreadPoolExecutor, request_: Invocation, expected: Expected
) -> None:
    service, writer = make_service(executor)
    outcome = asyncio.run(service.invoke(request_))
    check(outcome, writer.records(), expected)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("solo", Expected(413, "PAYLOAD_TOO_LARGE", None, None, None, None)),
        (None, Expected(413, "PAYLOAD_TOO_LARGE", None, None, None, None)),
        ("nope", Expected(413, "PAYLOAD_TOO_LARGE", None, None, None, None, recorded=False)),
    ],
    ids=["a known endpoint", "the first endpoint", "an unknown endpoint"],
)
def test_a_refused_invocation_is_recorded_once(
    executor: ThreadPoolExecutor, endpoint: str | None, expected: Expected
) -> None:
    service, writer = make_service(executor)
    error = GatewayError("PAYLOAD_TOO_LARGE", "The body is larger than 1024 bytes.")
    outcome = service.refuse(invocation(endpoint, body(1)), error)
    assert outcome.error is error
    check(outcome, writer.records(), expected)


@pytest.mark.parametrize("user_key", ["u-1", "u-2", "alice", "bob", "42", "prémium ✓"])
def test_sticky_routing_depends_on_the_user_key_alone(
    executor: ThreadPoolExecutor, user_key: str
) -> None:
    expected = choose_sticky("churn", user_key, CHURN)
    chosen = set()
    for seed in range(3):  # services with differently seeded draws: the key alone decides
        service, writer = make_service(executor, seed=seed)
        request = invocation("churn", body(2), headers={"x-user-id": user_key})
        outcome = asyncio.run(service.invoke(request))
        (record,) = writer.records()
        chosen.add((outcome.parts[0].variant, record["variant"], record["routing"]))
        assert record["user_key_hash"] == user_key_hash(user_key, SECRET.encode())
    assert chosen == {(expected, expected, "sticky")}


def test_sticky_routing_sends_a_share_of_keys_to_each_variant_near_its_weight(
    executor: ThreadPoolExecutor,
) -> None:
    service, _ = make_service(executor)
    endpoint = service.endpoint("churn")
    variants = [service.decide(endpoint, {"x-user-id": f"user-{n}"}).variant for n in range(2_000)]
    assert 0.05 < variants.count("challenger") / len(variants) < 0.15


def test_rows_split_between_variants_leave_one_record_each_with_its_own_rows(
    executor: ThreadPoolExecutor,
) -> None:
    weights = {"champion": 50, "challenger": 50}
    keys = [f"user-{n}" for n in range(8)]
    rows: list[tuple[int, str]] = [(age, key) for age, key in enumerate(keys, start=1)]
    data = json.dumps({"dataframe_split": {"columns": ["age", "plan"], "data": rows}}).encode()
    routed = {key: choose_sticky("rows", key, weights) for key in keys}
    assert set(routed.values()) == set(weights)  # these keys reach both variants
    service, writer = make_service(executor)
    outcome = asyncio.run(service.invoke(invocation("rows", data)))
    assert outcome.status_code == 200
    assert outcome.body == answer(*range(1, len(keys) + 1))
    assert sorted(part.variant for part in outcome.parts) == sorted(weights)
    records = writer.records()
    assert sorted(record["variant"] for record in records) == sorted(weights)
    for record in records:
        ages = [age for age, key in rows if routed[str(key)] == record["variant"]]
        assert record["routing"] == "sticky"
        assert record["split"] == weights
        assert json.loads(record["response"]) == {"predictions": [age * 10 for age in ages]}


async def settle() -> None:
    """Let every task that is ready run until it waits."""
    for _ in range(10):
        await asyncio.sleep(0)


def complete(executor: ManualExecutor, index: int) -> None:
    """Run the `index`th call submitted to the executor, as its worker thread would."""
    function, args = executor.submitted[index]
    future = executor.futures[index]
    try:
        future.set_result(function(*args))
    except Exception as exc:
        future.set_exception(exc)


def shed_check(outcome: Outcome, reason: str) -> None:
    """The outcome is a 503 shed for `reason`, with a retry hint and nothing of the request."""
    assert isinstance(outcome.error, ShedError)
    assert (outcome.status_code, outcome.error.error_code) == (503, "TEMPORARILY_UNAVAILABLE")
    assert (outcome.error.reason, outcome.error.retry_after) == (reason, 1)
    assert "basic" not in outcome.error.message


def test_a_request_past_max_in_flight_is_shed_before_routing_and_recorded_once() -> None:
    executor = ManualExecutor()
    service, writer = make_service(executor, max_in_flight=2)

    async def main() -> list[Outcome]:
        held = [asyncio.create_task(service.invoke(invocation("solo", body(n)))) for n in (1, 2)]
        await settle()
        assert len(executor.submitted) == 2  # both admitted, both predicting
        refused = await service.invoke(invocation("churn", body(3)))
        assert len(executor.submitted) == 2  # the third was never parsed nor predicted
        complete(executor, 0)
        first = await held[0]
        again = asyncio.create_task(service.invoke(invocation("solo", body(4))))
        await settle()
        complete(executor, 1)
        complete(executor, 2)
        return [first, refused, await held[1], await again]

    first, refused, second, again = asyncio.run(main())
    assert [o.status_code for o in (first, second, again)] == [200, 200, 200]
    shed_check(refused, "in_flight")
    assert "2 requests" in refused.error.message  # type: ignore[union-attr]
    records = writer.records()
    assert [r["status_code"] for r in records] == [503, 200, 200, 200]
    assert {k: records[0][k] for k in ("endpoint", "variant", "routing", "error")} == {
        "endpoint": "churn",
        "variant": None,
        "routing": None,
        "error": refused.error.message,  # type: ignore[union-attr]
    }


def test_a_request_that_waited_past_max_queue_for_its_thread_is_shed_there() -> None:
    executor = ManualExecutor()
    clock = FakeClock()
    service, writer = make_service(executor, clock=clock)  # CONFIG: max_queue_ms 1000

    async def main() -> tuple[Outcome, Outcome]:
        late = asyncio.create_task(service.invoke(invocation("solo", body(1))))
        await settle()
        clock.now += 1.0005  # the thread takes it only now
        complete(executor, 0)
        on_time = asyncio.create_task(service.invoke(invocation("solo", body(2))))
        await settle()
        clock.now += 1.0  # exactly max_queue: still in time
        complete(executor, 1)
        return await late, await on_time

    late, on_time = asyncio.run(main())
    shed_check(late, "queue_time")
    assert on_time.status_code == 200
    (part,) = late.parts
    assert part.variant == "champion"  # it was routed: the record says where it waited
    late_record, on_time_record = writer.records()
    assert (late_record["status_code"], late_record["variant"], late_record["routing"]) == (
        503,
        "champion",
        "random",
    )
    assert on_time_record["status_code"] == 200


def test_max_queue_ms_0_lets_a_request_wait_for_its_thread_at_will() -> None:
    executor = ManualExecutor()
    clock = FakeClock()
    config = CONFIG.model_copy(update={"max_queue_ms": 0})
    service, _ = make_service(executor, config, clock=clock)

    async def main() -> Outcome:
        task = asyncio.create_task(service.invoke(invocation("solo", body(1))))
        await settle()
        clock.now += 3600
        complete(executor, 0)
        return await task

    assert asyncio.run(main()).status_code == 200


class BrokenPyfunc(FakePyfunc):
    """A model whose backend is down: every predict raises MLflow's INTERNAL_ERROR (a 500)."""

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> list[Any]:
        """Fail as a model whose backend is down does."""
        raise MlflowException("the backend is down", error_code=INTERNAL_ERROR)


FALLBACK_CONFIG = parse_config(
    """
    metrics: {enabled: false}
    endpoints:
      - name: guarded
        model: guarded
        variants: [{alias: champion, weight: 0}, {alias: challenger, weight: 1}]
        fallback: champion
    """,
    {},
)
BACKEND_DOWN = "Failed to predict data. Error: the backend is down"


def fallback_service(
    executor: Executor, champion: FakePyfunc | None, challenger: FakePyfunc | None
) -> tuple[InvocationService, MemoryLogWriter]:
    """A service on the guarded endpoint; a variant without a model is still loading."""
    writer = MemoryLogWriter()
    models = {
        ("guarded", name): fake_model(pyfunc, version, "guarded")
        for name, pyfunc, version in (("champion", champion, "1"), ("challenger", challenger, "2"))
        if pyfunc is not None
    }
    pool = FakePool(models, {"guarded": {"champion": 0, "challenger": 1}})
    accountant = Accountant(FALLBACK_CONFIG, writer)  # type: ignore[arg-type]
    service = InvocationService(FALLBACK_CONFIG, pool, executor, accountant)  # type: ignore[arg-type]
    return service, writer


def summary(record: dict[str, Any]) -> tuple[Any, ...]:
    """What a record says of who answered how."""
    return (record["variant"], record["routing"], record["status_code"], record["error"])


@pytest.mark.parametrize(
    ("challenger", "error"),
    [
        (BrokenPyfunc(), BACKEND_DOWN),
        (None, "Endpoint 'guarded' variant 'challenger' is still loading."),
    ],
    ids=["a 500 from predict", "a 503 while loading"],
)
def test_a_server_error_of_the_chosen_variant_is_answered_by_the_fallback_and_both_recorded(
    executor: ThreadPoolExecutor, challenger: FakePyfunc | None, error: str
) -> None:
    service, writer = fallback_service(executor, FakePyfunc(), challenger)
    outcome = asyncio.run(service.invoke(invocation("guarded", body(3))))
    assert (outcome.status_code, outcome.body) == (200, answer(3))
    assert [part.variant for part in outcome.parts] == ["champion"]
    assert outcome.decision is not None
    assert outcome.decision.routing == "fallback"
    assert outcome.attempt is not None
    assert outcome.attempt.decision is not None
    assert outcome.attempt.decision.variant == "challenger"
    attempt, served = writer.records()
    status = 500 if challenger else 503
    assert summary(attempt) == ("challenger" if challenger else None, "random", status, error)
    assert summary(served) == ("champion", "fallback", 200, None)
    assert served["response"] == answer(3).decode()
    assert attempt["request_id"] == served["request_id"]
    assert attempt["split"] == served["split"] == {"champion": 0, "challenger": 1}


def test_a_request_whose_fallback_fails_too_gets_the_fallback_s_error(
    executor: ThreadPoolExecutor,
) -> None:
    service, writer = fallback_service(executor, None, BrokenPyfunc())
    outcome = asyncio.run(service.invoke(invocation("guarded", body(3))))
    assert outcome.status_code == 503
    assert outcome.error is not None
    assert "'champion' is still loading" in outcome.error.message
    assert [summary(record)[:3] for record in writer.records()] == [
        ("challenger", "random", 500),
        (None, "fallback", 503),
    ]


@pytest.mark.parametrize(
    ("headers", "age", "status"),
    [
        ({}, POISONED_AGE, 400),  # a client error would fail on any variant
        ({FORCE_HEADER: "challenger"}, 3, 500),  # asked for by name: its error is the answer
    ],
    ids=["a client error", "a forced variant"],
)
def test_client_errors_and_forced_variants_never_fall_back(
    executor: ThreadPoolExecutor, headers: dict[str, str], age: int, status: int
) -> None:
    challenger = FakePyfunc() if status == 400 else BrokenPyfunc()
    service, writer = fallback_service(executor, FakePyfunc(), challenger)
    outcome = asyncio.run(service.invoke(invocation("guarded", body(age), headers=headers)))
    assert (outcome.status_code, outcome.attempt) == (status, None)
    (record,) = writer.records()
    assert (record["variant"], record["status_code"]) == ("challenger", status)


def test_a_request_arriving_at_a_full_worker_is_refused_on_arrival_without_a_record() -> None:
    executor = ManualExecutor()
    service, writer = make_service(executor, max_in_flight=2)

    async def main() -> list[ShedError | None]:
        held = [asyncio.create_task(service.invoke(invocation("solo", body(n)))) for n in (1, 2)]
        await settle()
        arrivals = [service.refuse_on_arrival(name) for name in ("churn", None, "nope")]
        complete(executor, 0)
        await held[0]
        arrivals.append(service.refuse_on_arrival("churn"))  # one slot free again
        complete(executor, 1)
        await held[1]
        return arrivals

    churn, plain, unknown, after = asyncio.run(main())
    assert churn is not None
    shed_check(Outcome(invocation("churn", b""), None, None, (), None, churn, 0.0), "in_flight")
    assert plain is not None  # plain /invocations: the first endpoint's
    assert unknown is None  # the app answers 404 for an endpoint that does not exist
    assert after is None
    assert [r["status_code"] for r in writer.records()] == [200, 200]  # no record of a refusal
