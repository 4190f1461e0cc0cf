"""The gateway's configuration as frozen, typed models, each value checked (pure).

Reading `gateway.yaml` with its `GATEWAY_*` overrides, and reporting every problem with its
location, is `gateway.core.config_file`.
"""

import re
from functools import cached_property
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

ENV_PREFIX = "GATEWAY_"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Sticky(_Model):
    """Where a request's user key comes from: a header or a payload column."""

    header: str | None = None
    field: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.header is None) == (self.field is None):
            raise ValueError("give exactly one of `header` or `field`")
        return self


class Batching(_Model):
    """Adaptive batching limits for one model version."""

    max_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 32
    max_wait_ms: Annotated[float, Field(ge=0, le=1_000)] = 2.0
    # A lone request is predicted on the event loop while its version measures at most this
    # (gateway.core.inline_policy); 0: always in a worker thread.
    inline_max_ms: Annotated[float, Field(ge=0, le=100)] = 1.0


class Variant(_Model):
    """One way an endpoint can be served: a registry alias, a pinned version or a legacy stage."""

    alias: Annotated[str, Field(pattern=_NAME)] | None = None
    version: Annotated[int, Field(ge=1)] | None = None
    stage: Literal["Production", "Staging"] | None = None
    weight: Annotated[int, Field(ge=0)] = 1
    name: Annotated[str, Field(pattern=_NAME)] | None = None

    @model_validator(mode="after")
    def _exactly_one_reference(self) -> Self:
        given = [key for key in ("alias", "version", "stage") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of `alias`, `version` or `stage`, got {given or 'none'}"
            )
        return self

    @property
    def variant_name(self) -> str:
        """The name clients and logs see: the alias, `v<version>` or the lower-cased stage."""
        if self.name is not None:
            return self.name
        if self.alias is not None:
            return self.alias
        if self.version is not None:
            return f"v{self.version}"
        return str(self.stage).lower()

    @property
    def reference(self) -> str:
        """The registry reference, as in a `models:/` URI: `@alias`, `/7` or `/Production`."""
        if self.alias is not None:
            return f"@{self.alias}"
        return f"/{self.version if self.version is not None else self.stage}"


class Endpoint(_Model):
    """One served model: its variants and how traffic is split between them."""

    name: Annotated[str, Field(pattern=_NAME)]
    model: Annotated[str, Field(min_length=1)]
    variants: Annotated[tuple[Variant, ...], Field(min_length=1)]
    shadow: tuple[Annotated[str, Field(pattern=_NAME)], ...] = ()
    # Shadow predictions running at once for this endpoint; more are dropped and counted.
    shadow_concurrency: Annotated[int, Field(ge=1, le=1024)] = 4
    sticky: Sticky | None = None
    allow_override: bool = True
    refresh_seconds: Annotated[float, Field(gt=0)] = 30.0
    # `auto`: batch the flavors that predict each row independently (see core/batch_policy.py).
    batching: Batching | Literal["auto", "off"] = "auto"
    # The variant that answers a request whose own variant failed with a server error (5xx).
    fallback: Annotated[str, Field(pattern=_NAME)] | None = None

    @field_validator("batching", mode="before")
    @classmethod
    def _batching_word(cls, value: object) -> object:
        # YAML reads a bare `off` as false and `on` as true.
        if isinstance(value, bool):
            return "auto" if value else "off"
        if value in ("auto", "off") or isinstance(value, dict | Batching):
            return value
        raise ValueError("must be auto, off or a mapping of max_batch_size and max_wait_ms")

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        names = [variant.variant_name for variant in self.variants]
        duplicates = _repeated(names)
        if duplicates:
            raise ValueError(f"variant names must be unique, repeated: {', '.join(duplicates)}")
        if all(variant.weight == 0 for variant in self.variants):
            raise ValueError("at least one variant needs a weight above 0")
        clashes = sorted(set(self.shadow) & set(names))
        if clashes:
            raise ValueError(f"a shadow alias cannot also be a variant: {', '.join(clashes)}")
        if self.fallback is not None and self.fallback not in names:
            raise ValueError(
                f"fallback must name one of the endpoint's variants ({', '.join(names)}), "
                f"got {self.fallback!r}"
            )
        return self

    @property
    def shadow_variants(self) -> tuple[Variant, ...]:
        """The shadow aliases as variants that get no traffic of their own."""
        return tuple(Variant(alias=alias, weight=0) for alias in self.shadow)

    @property
    def weights(self) -> dict[str, int]:
        """The configured weight of each variant, by name."""
        return {variant.variant_name: variant.weight for variant in self.variants}


class InferenceLog(_Model):
    """Where and how inference-log records are written."""

    dir: str = "./inference-logs"
    enabled: bool = True
    sample_rate: Annotated[float, Field(ge=0, le=1)] = 1.0
    # Request and response bodies are cut at this size (the record says `truncated`); None: no cap.
    max_payload_bytes: Annotated[int, Field(ge=0)] | None = 64 * 1024
    max_queue: Annotated[int, Field(ge=1)] = 10_000
    rotate_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    rotate_seconds: Annotated[float, Field(gt=0)] = 3600.0
    # Key of the HMAC that turns user keys into `user_key_hash`; without it no hash is logged.
    user_key_secret: Annotated[str, Field(min_length=16)] | None = Field(default=None, repr=False)


class Metrics(_Model):
    """Prometheus metrics on `/metrics`."""

    enabled: bool = True


class Tracing(_Model):
    """OpenTelemetry traces of invocations, exported over OTLP/HTTP; off unless enabled.

    A value left unset here falls back to the standard `OTEL_*` variable, then to the default.
    """

    enabled: bool = False
    # None: OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES), else the default.
    service_name: Annotated[str, Field(min_length=1)] | None = None
    # The OTLP/HTTP traces URL. None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
    # OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, else http://localhost:4318/v1/traces.
    endpoint: str | None = None
    # The share of new traces kept; a caller's sampled flag is followed. None: OTEL_TRACES_SAMPLER.
    sample_ratio: Annotated[float, Field(ge=0, le=1)] | None = None

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


DEFAULT_SERVICE_NAME = "mlflow-serving-gateway"


class Auth(_Model):
    """Bearer-token authentication: the tokens file, and whether reads need a token too."""

    # One `name:token` a line; re-read when it changes.
    tokens_file: Annotated[str, Field(min_length=1)]
    # Whether /metrics, /endpoints and /version need a token too (/ping and /health never do).
    protect_read: bool = False


class GatewayConfig(_Model):
    """The whole gateway: registry location, endpoints and inference log."""

    tracking_uri: str | None = None
    registry_uri: str | None = None
    endpoints: Annotated[tuple[Endpoint, ...], Field(min_length=1)]
    inference_log: InferenceLog = InferenceLog()
    metrics: Metrics = Metrics()
    # None: no authentication, every route is open.
    auth: Auth | None = None
    tracing: Tracing = Tracing()
    # Limits a worker sets on what one client can make it hold (README, "Limits").
    # A request's body: larger ones get 413 (Databricks Model Serving's limit is 16 MB too).
    max_request_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    # Rows of one request, as parsed: more get 413 (batch scoring belongs in a batch job).
    max_request_rows: Annotated[int, Field(ge=1)] = 100_000
    # Request bodies one worker holds at once: past it a request gets 503 and Retry-After. A body
    # peaks at up to ~16 times its size while parsed, so the default keeps a worker's requests
    # under ~512 MiB.
    max_in_flight_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    # A request's header section, in bytes and in fields: past either, 431.
    max_header_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    max_headers: Annotated[int, Field(ge=8, le=10_000)] = 100
    # From a request's first byte to the end of its headers, and to the end of its body: 408.
    header_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 20.0
    body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # As MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT: past it the client gets a 504.
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    # Invocations one worker admits at once; past it a 503. None: derived, see `in_flight_limit`.
    max_in_flight: Annotated[int, Field(ge=1)] | None = None
    # Longest a request waits for its predict to start, past it a 503; None or 0: no limit.
    max_queue_ms: Annotated[float, Field(ge=0)] | None = 1000.0
    # Under a standing queue (every batch of a version has left requests behind for 100 ms),
    # the longest a request waits beyond one batch's run for its predict to start, past it a 503
    # (never longer than max_queue_ms); None or 0: max_queue_ms alone.
    standing_queue_ms: Annotated[float, Field(ge=0)] | None = 10.0
    # How long `gateway serve` retries an unreachable registry before it gives up (exit 1).
    startup_deadline_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # MLflow's timeout of one registry HTTP request, unless MLFLOW_HTTP_REQUEST_TIMEOUT is set.
    registry_timeout_seconds: Annotated[int, Field(ge=1, le=600)] = 10

    @model_validator(mode="after")
    def _unique_endpoints(self) -> Self:
        duplicates = _repeated([endpoint.name for endpoint in self.endpoints])
        if duplicates:
            raise ValueError(f"endpoint names must be unique, repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _batches_wait_less_than_the_timeout(self) -> Self:
        # A batch held for company past the request timeout would answer 504 for a fast model.
        limit = self.request_timeout_seconds * 1000
        late = [
            f"{e.name} ({e.batching.max_wait_ms:g} ms)"
            for e in self.endpoints
            if isinstance(e.batching, Batching) and e.batching.max_wait_ms >= limit
        ]
        if late:
            raise ValueError(
                f"batching.max_wait_ms must be below request_timeout_seconds "
                f"({limit:g} ms): {', '.join(late)}"
            )
        return self

    @model_validator(mode="after")
    def _one_request_fits_in_flight(self) -> Self:
        if self.max_in_flight_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_in_flight_bytes ({self.max_in_flight_bytes}) must be at least "
                f"max_request_bytes ({self.max_request_bytes}): a largest request could never "
                f"be read"
            )
        return self

    def endpoint(self, name: str) -> Endpoint | None:
        """The endpoint called `name`, if any (looked up on every request)."""
        return self._endpoints_by_name.get(name)

    @cached_property
    def _endpoints_by_name(self) -> dict[str, Endpoint]:
        return {endpoint.name: endpoint for endpoint in self.endpoints}

    def in_flight_limit(self, predict_threads: int) -> int:
        """`max_in_flight`, or as many invocations as a worker can predict without idling.

        A variant's batches run one at a time, each of at most `max_batch_size` requests, so a
        worker predicts at most `min(threads, batched variants)` batches at once. Twice that many
        full batches (one predicting, the next one forming) keep every batch full; admitting
        more adds waiting, not throughput. Never below `MIN_IN_FLIGHT`, so that a few hundred
        clients (and the answers still owed to clients that just left) are not refused:
        `max_queue_ms` is what bounds a request's wait, this bounds what a worker holds.
        """
        if self.max_in_flight is not None:
            return self.max_in_flight
        batched = [endpoint for endpoint in self.endpoints if endpoint.batching != "off"]
        largest = max((_batch_size(endpoint.batching) for endpoint in batched), default=1)
        at_once = min(predict_threads, sum(len(endpoint.variants) for endpoint in batched))
        return max(MIN_IN_FLIGHT, 2 * (at_once or predict_threads) * largest)

    @property
    def max_queue_seconds(self) -> float | None:
        """`max_queue_ms` in seconds; None when requests may wait for their predict at will."""
        return self.max_queue_ms / 1000 if self.max_queue_ms else None

    @property
    def standing_queue_seconds(self) -> float | None:
        """`standing_queue_ms` in seconds; None when a standing queue changes nothing."""
        return self.standing_queue_ms / 1000 if self.standing_queue_ms else None


# The derived `max_in_flight` is never below this.
MIN_IN_FLIGHT = 256


def _batch_size(batching: Batching | Literal["auto", "off"]) -> int:
    """The most requests one predict call of an endpoint takes (`auto` batches as Batching())."""
    if batching == "off":
        return 1
    return (batching if isinstance(batching, Batching) else Batching()).max_batch_size


def _repeated(names: list[str]) -> list[str]:
    return sorted({name for name in names if names.count(name) > 1})
