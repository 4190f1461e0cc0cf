"""A refresh that cannot follow the registry: what keeps serving, and the reason it reports."""

import pytest

from gateway.core.config import GatewayConfig
from gateway.core.config_file import parse_config
from gateway.serving.pool import ModelPool
from gateway.serving.registry import (
    LOAD_FAILED,
    NOT_FOUND,
    LoadedModel,
    ModelState,
    ModelVersion,
    Registry,
    RegistryError,
)
from tests.helpers import FakePyfunc, fake_model


class ScriptedRegistry(Registry):
    """A registry whose aliases the test sets, and whose version 3 cannot be loaded."""

    def __init__(self, aliases: dict[str, str]) -> None:  # no MLflow client
        self.aliases = aliases
        self.registry_uri = "scripted"

    def resolve(self, model: str, variant: object) -> ModelVersion:
        """The version an alias points at."""
        alias = getattr(variant, "alias", None)
        return ModelVersion(model, self.aliases[str(alias)], None)

    def model_state(self, model: str) -> ModelState:
        """The aliases as the test set them, and no tags."""
        return ModelState(aliases=dict(self.aliases), tags={})

    def load(self, version: ModelVersion) -> LoadedModel:
        """A fake model; version 3 fails to load."""
        if version.version == "3":
            raise RegistryError(f"{version.uri}: cannot load: broken", LOAD_FAILED)
        return fake_model(FakePyfunc(), version.version, version.model)


def _config() -> GatewayConfig:
    return parse_config(
        "endpoints: [{name: churn, model: churn, variants: "
        "[{alias: champion, weight: 90}, {alias: challenger, weight: 10}]}]",
        {},
    )


def _pool(registry: ScriptedRegistry) -> ModelPool:
    pool = ModelPool(_config(), registry)
    pool.load_all()
    return pool


def _served(pool: ModelPool) -> tuple[str | None, str | None]:
    versions = [pool.get("churn", name) for name in ("champion", "challenger")]
    champion, challenger = (None if model is None else model.version.version for model in versions)
    return champion, challenger


def test_a_version_that_fails_to_load_is_reported_after_the_other_variants_moved() -> None:
    registry = ScriptedRegistry({"champion": "1", "challenger": "2"})
    pool = _pool(registry)
    registry.aliases = {"champion": "3", "challenger": "4"}
    with pytest.raises(RegistryError) as raised:
        pool.refresh(_config().endpoints[0])
    assert raised.value.reason == LOAD_FAILED
    assert "variant champion keeps its current version" in str(raised.value)
    assert _served(pool) == ("1", "4")


def test_an_alias_removed_is_reported_as_not_found_and_its_version_serves_on() -> None:
    registry = ScriptedRegistry({"champion": "1", "challenger": "2"})
    pool = _pool(registry)
    registry.aliases = {"champion": "1"}
    with pytest.raises(RegistryError) as raised:
        pool.refresh(_config().endpoints[0])
    assert raised.value.reason == NOT_FOUND
    assert "alias models:/churn@challenger is gone" in str(raised.value)
    assert _served(pool) == ("1", "2")
