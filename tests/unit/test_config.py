"""The config contract: shape, defaults, GATEWAY_* overrides, and errors that name the bad key."""

import textwrap

import pytest

from gateway.core.config import Batching
from gateway.core.config_file import ConfigError, load_config, parse_config

GOOD = textwrap.dedent(
    """
    tracking_uri: sqlite:///mlflow.db
    endpoints:
      - name: churn
        model: prod.ml.churn
        variants:
          - {alias: champion, weight: 90}
          - {alias: challenger, weight: 10}
        shadow: [candidate]
        sticky: {header: X-User-Id}
        refresh_seconds: 30
        batching: {max_batch_size: 32, max_wait_ms: 2}
      - name: fraud
        model: fraud
        variants:
          - {version: 7}
          - {stage: Production, weight: 0}
    inference_log:
      dir: ./inference-logs
    """
)


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ or {})
    return caught.value.problems


def test_design_example_loads_with_every_documented_key() -> None:
    config = parse_config(GOOD, {})
    churn, fraud = config.endpoints
    assert churn.model == "prod.ml.churn"
    assert [(v.variant_name, v.weight) for v in churn.variants] == [
        ("champion", 90),
        ("challenger", 10),
    ]
    assert churn.shadow == ("candidate",)
    assert churn.sticky is not None
    assert churn.sticky.header == "X-User-Id"
    assert isinstance(churn.batching, Batching)
    assert churn.batching.max_batch_size == 32
    assert [v.variant_name for v in fraud.variants] == ["v7", "production"]
    assert [v.reference for v in fraud.variants] == ["/7", "/Production"]


def test_defaults_leave_the_tracking_uri_to_mlflow() -> None:
    config = parse_config("endpoints: [{name: a, model: a, variants: [{alias: champion}]}]", {})
    assert config.tracking_uri is None
    assert config.registry_uri is None
    endpoint = config.endpoints[0]
    assert (endpoint.refresh_seconds, endpoint.allow_override, endpoint.variants[0].weight) == (
        30.0,
        True,
        1,
    )
    assert config.inference_log.user_key_secret is None


@pytest.mark.parametrize(
    ("variable", "value", "read"),
    [
        ("GATEWAY_TRACKING_URI", "http://mlflow:5000", lambda c: c.tracking_uri),
        ("GATEWAY_ENDPOINTS__0__REFRESH_SECONDS", "5", lambda c: c.endpoints[0].refresh_seconds),
        (
            "GATEWAY_ENDPOINTS__0__VARIANTS__1__WEIGHT",
            "50",
            lambda c: c.endpoints[0].variants[1].weight,
        ),
        ("GATEWAY_INFERENCE_LOG__DIR", "/var/log/gw", lambda c: c.inference_log.dir),
        ("GATEWAY_ENDPOINTS__1__ALLOW_OVERRIDE", "false", lambda c: c.endpoints[1].allow_override),
    ],
)
def test_environment_overrides_any_value(variable: str, value: str, read: object) -> None:
    config = parse_config(GOOD, {variable: value})
    assert callable(read)
    assert str(read(config)).lower() == value.lower() or read(config) == float(value)


def test_command_line_variables_are_not_config_keys() -> None:
    config = parse_config(GOOD, {"GATEWAY_PORT": "9000", "GATEWAY_CONFIG": "x.yaml", "OTHER": "1"})
    assert config.tracking_uri == "sqlite:///mlflow.db"


def test_an_override_of_a_missing_list_entry_is_reported() -> None:
    assert problems_of(GOOD, {"GATEWAY_ENDPOINTS__5__MODEL": "x"}) == [
        "GATEWAY_ENDPOINTS__5__MODEL: no setting at endpoints[5]"
    ]


def test_every_problem_is_listed_with_its_path_at_once() -> None:
    problems = problems_of(
        textwrap.dedent(
            """
            endpoints:
              - name: churn
                modle: churn
                variants:
                  - {alias: champion, weight: -5}
                  - {alias: challenger, version: 3}
                  - {stage: Prod}
                sticky: {header: a, field: b}
            """
        )
    )
    assert problems == [
        "endpoints[0].model: required",
        "endpoints[0].variants[0].weight: must be a number >= 0, got -5",
        "endpoints[0].variants[1]: give exactly one of `alias`, `version` or `stage`, got ['alias', 'version']",
        "endpoints[0].variants[2].stage: must be one of 'Production' or 'Staging', got 'Prod'",
        "endpoints[0].sticky: give exactly one of `header` or `field`",
        "endpoints[0].modle: unknown key (did you mean `model`?)",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("endpoints: []", "endpoints: must have at least 1 item(s)"),
        ("{}", "endpoints: required"),
        ("- a\n- b", "the top level must be a mapping, got list"),
        ("endpoints: [", "not valid YAML"),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x, weight: 0}]}]",
            "endpoints[0]: at least one variant needs a weight above 0",
        ),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x}, {alias: x}]}]",
            "endpoints[0]: variant names must be unique, repeated: x",
        ),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x}], shadow: [x]}]",
            "endpoints[0]: a shadow alias cannot also be a variant: x",
        ),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x}]}, {name: a, model: b, variants: [{alias: x}]}]",
            "(top level): endpoint names must be unique, repeated: a",
        ),
        (
            "endpoints: [{name: 'a b', model: a, variants: [{alias: x}]}]",
            "endpoints[0].name: must be letters",
        ),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x, weight: many}]}]",
            "weight: must be an integer, got 'many'",
        ),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x}], refresh_seconds: 0}]",
            "refresh_seconds: must be a number > 0",
        ),
        (
            "request_timeout_seconds: 0.5\n"
            "endpoints: [{name: a, model: a, variants: [{alias: x}], batching: {max_wait_ms: 500}}]",
            "(top level): batching.max_wait_ms must be below request_timeout_seconds (500 ms): a (500 ms)",
        ),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x}], batching: {max_batch_size: 0}}]",
            "endpoints[0].batching.max_batch_size: must be a number >= 1, got 0",
        ),
        (
            "endpoints: [{name: a, model: a, variants: [{alias: x}], batching: sometimes}]",
            "endpoints[0].batching: must be auto, off or a mapping of max_batch_size and "
            "max_wait_ms, got 'sometimes'",
        ),
        (
            "tracking_ur: x\nendpoints: [{name: a, model: a, variants: [{alias: x}]}]",
            "tracking_ur: unknown key (did you mean `tracking_uri`?)",
        ),
    ],
)
def test_bad_config_names_the_problem(text: str, problem: str) -> None:
    assert any(problem in found for found in problems_of(text)), problems_of(text)


def test_a_secret_is_never_echoed_in_an_error() -> None:
    text = "endpoints: [{name: a, model: a, variants: [{alias: x}]}]\ninference_log: {user_key_secret: hunter2}"
    problems = problems_of(text)
    assert problems == ["inference_log.user_key_secret: must have at least 16 character(s)"]


def test_load_config_reports_an_unreadable_file(tmp_path: object) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("/nonexistent/gateway.yaml", {})
    assert "cannot read the file" in str(caught.value)


def test_config_is_frozen() -> None:
    config = parse_config(GOOD, {})
    with pytest.raises(ValueError, match="frozen"):
        config.endpoints[0].variants[0].weight = 5  # type: ignore[misc]


def test_a_mapping_for_batching_reports_only_the_mappings_problem() -> None:
    problems = problems_of(
        "endpoints: [{name: a, model: a, variants: [{alias: x}], batching: {max_batch_size: 0}}]"
    )
    assert problems == ["endpoints[0].batching.max_batch_size: must be a number >= 1, got 0"]


def test_the_startup_deadline_and_registry_timeout_default_and_are_validated() -> None:
    endpoints = "endpoints: [{name: a, model: a, variants: [{alias: champion}]}]\n"
    config = parse_config(endpoints, {})
    assert (config.startup_deadline_seconds, config.registry_timeout_seconds) == (30.0, 10)
    problems = problems_of(endpoints + "startup_deadline_seconds: 0\nregistry_timeout_seconds: 0\n")
    assert [problem.split(":")[0] for problem in problems] == [
        "startup_deadline_seconds",
        "registry_timeout_seconds",
    ]


ONE = "endpoints: [{name: a, model: a, variants: [{alias: champion}]}]\n"


TWO = "endpoints: [{name: a, model: a, variants: [{alias: x}, {alias: y}]}]\n"
BIG_TWO = (
    "endpoints: [{name: a, model: a, variants: [{alias: x}, {alias: y}], "
    "batching: {max_batch_size: 200}}]\n"
)


@pytest.mark.parametrize(
    ("text", "threads", "limit"),
    [
        # `auto` batches up to 32 requests a call, one batch at a time: 2 x 1 x 32, below the floor
        (ONE, 4, 256),
        (TWO, 4, 256),  # two variants, two batches at once: 128, below the floor too
        (BIG_TWO, 4, 800),  # two variants of 200-request batches: 2 x 2 x 200
        (BIG_TWO, 1, 400),  # but no more batches at once than threads: 2 x 1 x 200
        (
            "endpoints:\n"
            "  - {name: a, model: a, variants: [{alias: x}], batching: {max_batch_size: 300}}\n"
            "  - {name: b, model: b, variants: [{alias: x}], batching: off}\n",
            4,
            600,
        ),
        # nothing batched: 2 x 4 threads x 1 = 8 is below the floor
        ("endpoints: [{name: a, model: a, variants: [{alias: x}], batching: off}]\n", 4, 256),
        (ONE + "max_in_flight: 10\n", 4, 10),
    ],
    ids=[
        "auto",
        "two variants",
        "large batches",
        "one thread",
        "the largest batch",
        "the floor",
        "explicit",
    ],
)
def test_max_in_flight_is_derived_from_threads_and_batch_size_unless_given(
    text: str, threads: int, limit: int
) -> None:
    assert parse_config(text, {}).in_flight_limit(threads) == limit


@pytest.mark.parametrize(
    ("text", "environ", "seconds"),
    [
        (ONE, {}, 1.0),
        (ONE + "max_queue_ms: 250\n", {}, 0.25),
        (ONE, {"GATEWAY_MAX_QUEUE_MS": "50"}, 0.05),
        (ONE + "max_queue_ms: 0\n", {}, None),
        (ONE, {"GATEWAY_MAX_QUEUE_MS": "null"}, None),
    ],
    ids=["default", "set", "from the environment", "0 is off", "null is off"],
)
def test_max_queue_ms_defaults_to_a_second_and_0_or_null_turns_it_off(
    text: str, environ: dict[str, str], seconds: float | None
) -> None:
    assert parse_config(text, environ).max_queue_seconds == seconds


def test_the_limits_are_validated_and_overridden_from_the_environment() -> None:
    assert parse_config(ONE, {"GATEWAY_MAX_IN_FLIGHT": "32"}).max_in_flight == 32
    problems = problems_of(ONE + "max_in_flight: 0\nmax_queue_ms: -1\n")
    assert problems == [
        "max_in_flight: must be a number >= 1, got 0",
        "max_queue_ms: must be a number >= 0.0, got -1",
    ]


def test_fallback_names_one_of_the_endpoint_s_variants() -> None:
    text = "endpoints: [{name: a, model: a, variants: [{alias: champion}, {version: 7}], %s}]"
    assert parse_config(text % "fallback: champion", {}).endpoints[0].fallback == "champion"
    assert parse_config(text % "fallback: v7", {}).endpoints[0].fallback == "v7"
    assert parse_config(text % "shadow: [x]", {}).endpoints[0].fallback is None
    assert problems_of(text % "fallback: champ") == [
        "endpoints[0]: fallback must name one of the endpoint's variants (champion, v7), "
        "got 'champ'"
    ]
    assert problems_of(text % "shadow: [c], fallback: c")[0].startswith(
        "endpoints[0]: fallback must name one of the endpoint's variants"
    )


ONE_ENDPOINT = "endpoints: [{name: a, model: a, variants: [{alias: champion}]}]\n"


def test_tracing_is_off_by_default_and_leaves_unset_values_to_the_otel_variables() -> None:
    tracing = parse_config(ONE_ENDPOINT, {}).tracing
    assert tracing.enabled is False
    assert (tracing.service_name, tracing.endpoint, tracing.sample_ratio) == (None, None, None)


def test_tracing_is_turned_on_from_the_environment() -> None:
    environ = {
        "GATEWAY_TRACING__ENABLED": "true",
        "GATEWAY_TRACING__ENDPOINT": "http://collector:4318/v1/traces",
        "GATEWAY_TRACING__SAMPLE_RATIO": "0.25",
    }
    tracing = parse_config(ONE_ENDPOINT, environ).tracing
    assert tracing.enabled is True
    assert tracing.endpoint == "http://collector:4318/v1/traces"
    assert tracing.sample_ratio == 0.25


@pytest.mark.parametrize(
    ("tracing", "problem"),
    [
        ("{endpoint: collector:4318}", "tracing.endpoint: must be an http:// or https:// URL"),
        ("{endpoint: 'http://'}", "tracing.endpoint: must be an http:// or https:// URL"),
        ("{sample_ratio: 1.5}", "tracing.sample_ratio: must be a number <= 1"),
        ("{sample_ratio: -0.1}", "tracing.sample_ratio: must be a number >= 0"),
        ("{service_name: ''}", "tracing.service_name: must have at least 1 character(s)"),
        ("{enable: true}", "tracing.enable: unknown key (did you mean `enabled`?)"),
        ("{enabled: maybe}", "tracing.enabled: must be true or false"),
    ],
)
def test_bad_tracing_settings_are_named(tracing: str, problem: str) -> None:
    (found,) = problems_of(ONE_ENDPOINT + f"tracing: {tracing}\n")
    assert found.startswith(problem)
