"""The only module that talks to MLflow: resolve aliases, versions and stages; load pyfunc models."""

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gateway.core.config import Variant
from gateway.protocol import compat
from gateway.protocol.frame_plan import make_plan
from gateway.protocol.payload import InputSpec, parse_json

logger = logging.getLogger(__name__)


class RegistryError(Exception):
    """The registry cannot give what the config asks for; the message names model, variant and URI."""


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version that a variant resolves to."""

    model: str
    version: str
    run_id: str | None

    @property
    def uri(self) -> str:
        """The `models:/` URI of exactly this version."""
        return f"models:/{self.model}/{self.version}"


@dataclass(frozen=True)
class ModelState:
    """A registered model's aliases (alias -> version) and tags, as read in one call."""

    aliases: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class LoadedModel:
    """A pyfunc model in memory with what parsing needs of it (its metadata, schema, frame plan)."""

    version: ModelVersion
    pyfunc: Any
    spec: InputSpec
    # The same model without input-schema enforcement, for its frame plan's frames only.
    planned_pyfunc: Any = None
    # MLflow's pyfunc loader module (`mlflow.sklearn`, `mlflow.pyfunc.model`, ...): the flavor.
    loader_module: str | None = None


class Registry:
    """An MLflow tracking/registry server seen through the few calls the gateway makes."""

    def __init__(self, tracking_uri: str | None, registry_uri: str | None) -> None:
        # pyfunc loading resolves `models:/` URIs through MLflow's process-wide URIs, so they are
        # set once here; None keeps MLflow's own defaults (MLFLOW_TRACKING_URI and friends).
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        if registry_uri is not None:
            mlflow.set_registry_uri(registry_uri)
        self.tracking_uri = mlflow.get_tracking_uri()
        self.registry_uri = mlflow.get_registry_uri()
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def resolve(self, model: str, variant: Variant) -> ModelVersion:
        """The version that a variant's alias, pinned version or stage points at now."""
        where = f"models:/{model}{variant.reference} (registry {self.registry_uri})"
        try:
            if variant.alias is not None:
                found = self._client.get_model_version_by_alias(model, variant.alias)
            elif variant.version is not None:
                found = self._client.get_model_version(model, str(variant.version))
            else:
                with warnings.catch_warnings():
                    # Stages are deprecated in MLflow; many registries still use them.
                    warnings.simplefilter("ignore", FutureWarning)
                    latest = self._client.get_latest_versions(model, stages=[str(variant.stage)])
                if not latest:
                    raise RegistryError(f"{where}: no version is in stage {variant.stage}")
                found = latest[0]
        except MlflowException as exc:
            raise RegistryError(f"{where}: {_first_line(exc.message)}") from exc
        except RegistryError:
            raise
        except Exception as exc:
            # Connection errors and the like from the REST or SQL store.
            raise RegistryError(f"{where}: registry unreachable: {_first_line(str(exc))}") from exc
        return ModelVersion(model=model, version=str(found.version), run_id=found.run_id)

    def model_state(self, model: str) -> ModelState:
        """Aliases and tags of a registered model: what a refresh needs, in one registry call."""
        try:
            found = self._client.get_registered_model(model)
        except MlflowException as exc:
            raise RegistryError(
                f"models:/{model} (registry {self.registry_uri}): {_first_line(exc.message)}"
            ) from exc
        except Exception as exc:
            raise RegistryError(
                f"models:/{model} (registry {self.registry_uri}): registry unreachable: {_first_line(str(exc))}"
            ) from exc
        aliases = {alias: str(version) for alias, version in (found.aliases or {}).items()}
        return ModelState(aliases=aliases, tags=dict(found.tags or {}))

    def set_tag(self, model: str, key: str, value: str) -> None:
        """Set a registered-model tag."""
        self._client.set_registered_model_tag(model, key, value)

    def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point an alias at a version."""
        self._client.set_registered_model_alias(model, alias, version)

    def load(self, version: ModelVersion) -> LoadedModel:
        """Download and load one version as a pyfunc model."""
        try:
            pyfunc = mlflow.pyfunc.load_model(version.uri)
        except Exception as exc:
            raise RegistryError(
                f"{version.uri} (registry {self.registry_uri}): cannot load: {_first_line(str(exc))}"
            ) from exc
        metadata = pyfunc.metadata
        schema = metadata.get_input_schema()

        def reference(document: dict[str, Any]) -> Any:
            # What `predict` hands the model: MLflow's parse, then its schema enforcement.
            return compat.enforce_schema(parse_json(document, metadata, schema).data, schema)

        plan = make_plan(metadata, schema, reference)
        return LoadedModel(
            version=version,
            pyfunc=pyfunc,
            spec=InputSpec(metadata, schema, plan),
            planned_pyfunc=None if plan is None else compat.without_input_enforcement(pyfunc),
            loader_module=_loader_module(metadata),
        )


def _loader_module(metadata: Any) -> str | None:
    """The pyfunc flavor's loader module, as the model's MLmodel file names it."""
    flavors = getattr(metadata, "flavors", None) or {}
    module = flavors.get("python_function", {}).get("loader_module")
    return module if isinstance(module, str) else None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
