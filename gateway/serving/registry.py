"""The only module that talks to MLflow: resolve aliases, versions and stages; load pyfunc models."""

import logging
import os
import warnings
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gateway.core.config import Variant
from gateway.protocol import compat
from gateway.protocol.frame_plan import make_plan
from gateway.protocol.payload import InputSpec, parse_json
from gateway.serving.direct import Direct, direct_predict

logger = logging.getLogger(__name__)


# Why a registry call failed: a bounded set, used as a metric label.
UNREACHABLE: Final = "unreachable"  # no answer: connection refused, timeout, database unreadable
NOT_FOUND: Final = "not_found"  # an answer: no such model, version or alias; the file is gone
LOAD_FAILED: Final = "load_failed"  # a version resolved but could not be downloaded or loaded
ERROR: Final = "error"  # anything else
REASONS: Final = (UNREACHABLE, NOT_FOUND, LOAD_FAILED, ERROR)

# MLflow retries a failed HTTP request 7 times with growing pauses and waits 120 s for an answer
# by default: minutes of silence at start-up and refreshes that overlap. These bound them for the
# gateway's process unless the user has set them.
_HTTP_MAX_RETRIES: Final = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_HTTP_BACKOFF_FACTOR: Final = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
_HTTP_TIMEOUT: Final = "MLFLOW_HTTP_REQUEST_TIMEOUT"


class RegistryError(Exception):
    """The registry cannot give what the config asks for; the message names model, variant and URI."""

    def __init__(self, message: str, reason: str = ERROR) -> None:
        super().__init__(message)
        self.reason = reason


def bound_http_requests(
    timeout_seconds: int, environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Set MLflow's HTTP retry and timeout variables that are unset or empty; returns those set."""
    environ = os.environ if environ is None else environ
    wanted = {
        _HTTP_MAX_RETRIES: "1",
        _HTTP_BACKOFF_FACTOR: "1",
        _HTTP_TIMEOUT: str(timeout_seconds),
    }
    chosen = {name: value for name, value in wanted.items() if not environ.get(name)}
    environ.update(chosen)
    return chosen


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
    # Its plan's frames predicted straight on a scikit-learn estimator, where that is the same.
    direct: Direct | None = None


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
                    raise RegistryError(
                        f"{where}: no version is in stage {variant.stage}", NOT_FOUND
                    )
                found = latest[0]
        except MlflowException as exc:
            raise RegistryError(f"{where}: {_first_line(exc.message)}", _reason(exc)) from exc
        except RegistryError:
            raise
        except Exception as exc:
            # Connection errors and the like from the REST or SQL store.
            raise RegistryError(
                f"{where}: registry unreachable: {_first_line(str(exc))}", UNREACHABLE
            ) from exc
        return ModelVersion(model=model, version=str(found.version), run_id=found.run_id)

    def model_state(self, model: str) -> ModelState:
        """Aliases and tags of a registered model: what a refresh needs, in one registry call.

        A sqlite registry is read afresh: its file reopened, so that a file replaced since the
        last call is the one read, and a file gone is an error, never a new empty database.
        """
        where = f"models:/{model} (registry {self.registry_uri})"
        self._reopen_sqlite(where)
        try:
            found = self._client.get_registered_model(model)
        except MlflowException as exc:
            raise RegistryError(f"{where}: {_first_line(exc.message)}", _reason(exc)) from exc
        except Exception as exc:
            raise RegistryError(
                f"{where}: registry unreachable: {_first_line(str(exc))}", UNREACHABLE
            ) from exc
        aliases = {alias: str(version) for alias, version in (found.aliases or {}).items()}
        return ModelState(aliases=aliases, tags=dict(found.tags or {}))

    def _reopen_sqlite(self, where: str) -> None:
        """Close the pooled connections of sqlite stores, after checking that their file exists.

        MLflow keeps one SQLAlchemy engine per URI for the life of the process, and its pooled
        connections hold the file they opened: a registry file moved away or replaced would be
        read as it was, forever. Disposing of the pool makes the next query open the path again:
        about 4 ms more a refresh (15 ms instead of 11 ms, measured on 2 cores). sqlite creates
        a missing file on connect, so a file that is gone is raised here before any connection
        is made (a file removed in the instant between the check and the connection would still
        be created empty).
        """
        for engine in self._sqlite_engines():
            database = engine.url.database
            if database and database != ":memory:" and not Path(database).exists():
                raise RegistryError(
                    f"{where}: the registry database {database} is gone (moved or removed)",
                    NOT_FOUND,
                )
            engine.dispose()

    def _sqlite_engines(self) -> list[Any]:
        """The SQLAlchemy engines of this client's registry and tracking stores on sqlite."""
        stores = []
        if self.registry_uri.startswith("sqlite:"):
            stores.append(self._client._get_registry_client().store)
        if self.tracking_uri.startswith("sqlite:"):
            stores.append(self._client._tracking_client.store)
        engines: list[Any] = []
        for store in stores:
            engine = getattr(store, "engine", None)
            if engine is not None and all(engine is not known for known in engines):
                engines.append(engine)
        return engines

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
                f"{version.uri} (registry {self.registry_uri}): cannot load: {_first_line(str(exc))}",
                LOAD_FAILED,
            ) from exc
        return loaded_model(version, pyfunc)


def loaded_model(version: ModelVersion, pyfunc: Any) -> LoadedModel:
    """A loaded pyfunc model with what serving it needs: its input spec, frame plan, fast paths."""
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
        direct=direct_predict(pyfunc, plan),
    )


def _loader_module(metadata: Any) -> str | None:
    """The pyfunc flavor's loader module, as the model's MLmodel file names it."""
    flavors = getattr(metadata, "flavors", None) or {}
    module = flavors.get("python_function", {}).get("loader_module")
    return module if isinstance(module, str) else None


def _reason(exc: MlflowException) -> str:
    """What an MLflow error means for the gateway: not found, unreachable, or another error."""
    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return NOT_FOUND
    cause: BaseException | None = exc
    while cause is not None:
        # requests' connection errors and timeouts are OSErrors; SQLAlchemy's are not.
        if isinstance(cause, OSError) or type(cause).__name__ == "OperationalError":
            return UNREACHABLE
        cause = cause.__cause__ or cause.__context__
    return ERROR


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"
