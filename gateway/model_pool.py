"""The model versions each endpoint's variants serve: resolved, loaded, and swapped atomically."""

import logging
import threading
from dataclasses import dataclass

from gateway import metrics
from gateway.config import Endpoint, GatewayConfig
from gateway.registry import LoadedModel, Registry, RegistryError

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


class ModelPool:
    """Loaded models keyed by (endpoint, variant); readers never lock, writers replace whole entries."""

    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self._config = config
        self._registry = registry
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._load_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """Whether every variant of every endpoint has a model loaded."""
        return all(
            (endpoint.name, variant.variant_name) in self._models
            for endpoint in self._config.endpoints
            for variant in (*endpoint.variants, *endpoint.shadow_variants)
        )

    def get(self, endpoint: str, variant: str) -> LoadedModel | None:
        """The model serving a variant now, or None while it is not loaded."""
        return self._models.get((endpoint, variant))

    def load_all(self) -> None:
        """Resolve and load every variant; blocking, so call it off the event loop."""
        with self._load_lock:
            for endpoint in self._config.endpoints:
                self._load_endpoint(endpoint)

    def _load_endpoint(self, endpoint: Endpoint) -> None:
        loaded_here: dict[str, LoadedModel] = {}
        for variant in (*endpoint.variants, *endpoint.shadow_variants):
            name = variant.variant_name
            try:
                version = self._registry.resolve(endpoint.model, variant)
                # Two variants on one version share the model in memory.
                model = loaded_here.get(version.version)
                if model is None:
                    logger.info(
                        "loading %s for endpoint %s variant %s", version.uri, endpoint.name, name
                    )
                    model = self._registry.load(version)
                    loaded_here[version.version] = model
            except RegistryError:
                metrics.MODEL_LOAD_FAILURES.labels(endpoint.name, name).inc()
                raise
            self._models[(endpoint.name, name)] = model
            metrics.MODEL_INFO.labels(endpoint.name, name, endpoint.model, version.version).set(1)
            metrics.WEIGHT.labels(endpoint.name, name).set(variant.weight)

    def describe(self, endpoint: Endpoint) -> list[VariantStatus]:
        """Each variant of an endpoint with the version it serves."""
        statuses = []
        shadows = endpoint.shadow_variants
        for variant in (*endpoint.variants, *shadows):
            model = self.get(endpoint.name, variant.variant_name)
            statuses.append(
                VariantStatus(
                    variant=variant.variant_name,
                    reference=f"models:/{endpoint.model}{variant.reference}",
                    weight=variant.weight,
                    model_version=model.version.version if model else None,
                    loaded=model is not None,
                    shadow=variant in shadows,
                )
            )
        return statuses
