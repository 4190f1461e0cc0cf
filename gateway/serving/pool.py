"""The model versions each endpoint's variants serve, and their weights: loaded, refreshed, swapped.

Readers (the request path) never lock: a variant's entry is replaced whole, so a request sees the
old version or the new one, never half of each, and keeps the model it started with until it
finishes; the old version is freed when its last request lets go of it.
"""

import logging
import threading
from dataclasses import dataclass, replace

from gateway.core.batch_policy import BatchPolicy, batch_policy
from gateway.core.config import Endpoint, GatewayConfig, Variant
from gateway.core.rollout import WEIGHTS_TAG, merge_weights, parse_weights
from gateway.observe import metrics
from gateway.serving.registry import (
    NOT_FOUND,
    LoadedModel,
    ModelVersion,
    Registry,
    RegistryError,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantStatus:
    """What `/endpoints` shows of one variant."""

    variant: str
    reference: str
    weight: int
    model_version: str | None
    loaded: bool
    shadow: bool
    batching: bool | None  # None while the variant's model is not loaded
    batching_reason: str | None


def policy_of(endpoint: Endpoint, model: LoadedModel) -> BatchPolicy:
    """Whether a variant's model is batched on this endpoint, and why."""
    return batch_policy(endpoint.batching, model.loader_module, model.spec.plan is not None)


class ModelPool:
    """Loaded models keyed by (endpoint, variant) and live weights keyed by endpoint."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self._config = config
        self._registry = registry
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._weights: dict[str, dict[str, int]] = {e.name: e.weights for e in config.endpoints}
        self._lock = threading.Lock()  # one loader at a time; readers never take it

    @property
    def ready(self) -> bool:
        """Whether every variant of every endpoint has a model loaded."""
        return all(
            (endpoint.name, variant.variant_name) in self._models
            for endpoint in self._config.endpoints
            for variant in _all_variants(endpoint)
        )

    def get(self, endpoint: str, variant: str) -> LoadedModel | None:
        """The model serving a variant now, or None while it is not loaded."""
        return self._models.get((endpoint, variant))

    def weights(self, endpoint: str) -> dict[str, int]:
        """The live weights of an endpoint's variants."""
        return self._weights[endpoint]

    def load_all(self) -> None:
        """Resolve and load every variant, and read live weights; blocking: run it off the loop."""
        with self._lock:
            for endpoint in self._config.endpoints:
                for variant in _all_variants(endpoint):
                    self._swap(endpoint, variant, self._registry.resolve(endpoint.model, variant))
                self._read_weights(endpoint, self._registry.model_state(endpoint.model).tags)

    def refresh(self, endpoint: Endpoint) -> None:
        """Follow moved aliases and changed weights of one endpoint; blocking: run it off the loop.

        A variant that cannot move (its alias gone, its new version failing to load) keeps
        serving what it serves, the other variants and the weights are still followed, and then
        a `RegistryError` says what failed; the next refresh tries again. The caller logs it.
        """
        failures: list[RegistryError] = []
        with self._lock:
            state = self._registry.model_state(endpoint.model)
            for variant in _all_variants(endpoint):
                current = self.get(endpoint.name, variant.variant_name)
                if variant.alias is not None:
                    version = state.aliases.get(variant.alias)
                    if version is None:
                        failures.append(
                            RegistryError(
                                f"alias models:/{endpoint.model}@{variant.alias} is gone; "
                                f"variant {variant.variant_name} keeps serving version "
                                f"{current.version.version if current else 'none'}",
                                NOT_FOUND,
                            )
                        )
                        continue
                    if current is not None and current.version.version == version:
                        continue
                    target = ModelVersion(endpoint.model, version, None)
                elif variant.stage is not None:
                    target = self._registry.resolve(endpoint.model, variant)
                    if current is not None and current.version.version == target.version:
                        continue
                else:
                    continue  # a pinned version never moves
                try:
                    self._swap(endpoint, variant, target)
                except RegistryError as exc:
                    failures.append(
                        RegistryError(
                            f"variant {variant.variant_name} keeps its current version: {exc}",
                            exc.reason,
                        )
                    )
            self._read_weights(endpoint, state.tags)
        if failures:
            raise RegistryError("; ".join(str(f) for f in failures), failures[0].reason)

    def _swap(self, endpoint: Endpoint, variant: Variant, version: ModelVersion) -> None:
        name = variant.variant_name
        previous = self.get(endpoint.name, name)
        # Another variant of the endpoint may already hold this version: share it.
        model = next(
            (
                loaded
                for (owner, _), loaded in self._models.items()
                if owner == endpoint.name and loaded.version.version == version.version
            ),
            None,
        )
        if model is None:
            logger.info("loading %s for endpoint %s variant %s", version.uri, endpoint.name, name)
            try:
                model = self._registry.load(version)
            except RegistryError:
                metrics.MODEL_LOAD_FAILURES.labels(endpoint.name, name).inc()
                raise
            # Parsing any request for this version refuses more rows than a request may have.
            spec = replace(model.spec, max_rows=self._config.max_request_rows)
            model = replace(model, spec=spec)
        self._models[(endpoint.name, name)] = model
        policy = policy_of(endpoint, model)
        logger.info(
            "endpoint %s variant %s (version %s): batching %s (%s)",
            endpoint.name,
            name,
            version.version,
            "on" if policy.enabled else "off",
            policy.reason,
        )
        metrics.MODEL_INFO.labels(endpoint.name, name, endpoint.model, version.version).set(1)
        if previous is not None and previous.version.version != version.version:
            metrics.MODEL_INFO.labels(
                endpoint.name, name, endpoint.model, previous.version.version
            ).set(0)
            logger.info(
                "endpoint %s variant %s now serves version %s (was %s)",
                endpoint.name,
                name,
                version.version,
                previous.version.version,
            )

    def _read_weights(self, endpoint: Endpoint, tags: dict[str, str]) -> None:
        weights = endpoint.weights
        text = tags.get(WEIGHTS_TAG)
        if text is not None:
            try:
                weights = merge_weights(weights, parse_weights(text, weights))
            except ValueError as exc:
                logger.warning("ignoring the weights of models:/%s: %s", endpoint.model, exc)
                weights = self._weights[endpoint.name]
        if weights != self._weights[endpoint.name]:
            logger.info("endpoint %s weights now %s", endpoint.name, weights)
        self._weights[endpoint.name] = weights
        for name, weight in weights.items():
            metrics.WEIGHT.labels(endpoint.name, name).set(weight)

    def describe(self, endpoint: Endpoint) -> list[VariantStatus]:
        """Each variant of an endpoint with the version it serves and its live weight."""
        weights = self.weights(endpoint.name)
        statuses = []
        for variant in _all_variants(endpoint):
            name = variant.variant_name
            model = self.get(endpoint.name, name)
            policy = None if model is None else policy_of(endpoint, model)
            statuses.append(
                VariantStatus(
                    variant=name,
                    reference=f"models:/{endpoint.model}{variant.reference}",
                    weight=weights.get(name, 0),
                    model_version=model.version.version if model else None,
                    loaded=model is not None,
                    shadow=name in endpoint.shadow,
                    batching=None if policy is None else policy.enabled,
                    batching_reason=None if policy is None else policy.reason,
                )
            )
        return statuses


def _all_variants(endpoint: Endpoint) -> tuple[Variant, ...]:
    return (*endpoint.variants, *endpoint.shadow_variants)
