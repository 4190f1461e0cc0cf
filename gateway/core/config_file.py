"""Read `gateway.yaml` with `GATEWAY_*` overrides into a GatewayConfig; report every problem (pure).

Each problem is reported with its dotted location and value, and a misspelt key with a
did-you-mean: `endpoints[0].variants[1].weight: must be an integer >= 0, got -5`.
"""

import difflib
import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.core.config import (
    ENV_PREFIX,
    Auth,
    Batching,
    Endpoint,
    GatewayConfig,
    InferenceLog,
    Metrics,
    Sticky,
    Tracing,
    Variant,
)
from gateway.core.tokens import TokenFileError, Tokens, parse_tokens


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists each one with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"invalid configuration in {self.source}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def parse_config(
    text: str, environ: Mapping[str, str], source: str = "gateway.yaml"
) -> GatewayConfig:
    """Validate YAML text with `GATEWAY_*` overrides from `environ`; raise ConfigError on problems."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"the top level must be a mapping, got {type(raw).__name__}"])
    problems: list[str] = []
    data = _apply_overrides(raw, environ, problems)
    if problems:
        raise ConfigError(source, problems)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(error) for error in _relevant(exc.errors())]) from exc


def load_config(path: str, environ: Mapping[str, str]) -> GatewayConfig:
    """Read and validate the config file at `path`; raise ConfigError when it cannot be used."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}"]) from exc
    return parse_config(text, environ, source=path)


def load_tokens(path: str) -> Tokens:
    """Read and validate a tokens file; raise ConfigError naming each bad line, never a token."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the tokens file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(path, ["the tokens file is not UTF-8 text"]) from exc
    try:
        return parse_tokens(text)
    except TokenFileError as exc:
        raise ConfigError(path, exc.problems) from exc


def _apply_overrides(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> Any:
    """Overlay `GATEWAY_A__B__0__C=value` onto raw data; values are read as YAML scalars."""
    data: Any = raw
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX) or key in _NOT_CONFIG:
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
        try:
            value = yaml.safe_load(environ[key])
        except yaml.YAMLError:
            value = environ[key]
        node = data
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                index: int | str = int(part)
            elif isinstance(node, dict):
                index = part
            else:
                problems.append(f"{key}: no setting at {_dotted(path[: depth + 1])}")
                break
            if last:
                node[index] = value
            else:
                node = node.setdefault(index, {}) if isinstance(node, dict) else node[index]
    return data


# Variables with the prefix that steer the command line rather than the config file.
_NOT_CONFIG = frozenset({"GATEWAY_CONFIG", "GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_WORKERS"})


def _dotted(location: list[str] | tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


_KNOWN_KEYS = sorted(
    {
        key
        for model in (
            GatewayConfig,
            Endpoint,
            Variant,
            Sticky,
            Batching,
            InferenceLog,
            Metrics,
            Auth,
            Tracing,
        )
        for key in model.model_fields
    }
)


def _describe(error: Any) -> str:
    """One line per problem: `endpoints[0].variants[1].weight: must be >= 0, got -5`."""
    location = [
        part
        for part in error["loc"]
        # Validator and union-branch tags (`function-after[...]`, `Batching`) are not keys.
        if not (isinstance(part, str) and (part.startswith("function-") or part[:1].isupper()))
    ]
    where = _dotted(tuple(location))
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(location[-1]) if location else ""
        close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1, cutoff=0.6)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required"
    context = error.get("ctx") or {}
    template = _MESSAGES.get(kind)
    if template is not None:
        message = template.format(**context)
    else:
        message = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
        message = message[0].lower() + message[1:] if message else message
    value = error.get("input")
    if isinstance(value, dict | list) or "secret" in where:
        return f"{where}: {message}"
    return f"{where}: {message}, got {value!r}"


_MESSAGES: dict[str, str] = {
    "greater_than_equal": "must be a number >= {ge}",
    "greater_than": "must be a number > {gt}",
    "less_than_equal": "must be a number <= {le}",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_pattern_mismatch": "must be letters, digits, `.`, `_` or `-`",
    "literal_error": "must be one of {expected}",
    "too_short": "must have at least {min_length} item(s)",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _relevant(errors: list[Any]) -> list[Any]:
    """Drop a list's `too_short` when its items failed: pydantic counts only the valid ones."""
    with_failed_items = {
        tuple(error["loc"][:index])
        for error in errors
        for index, part in enumerate(error["loc"])
        if isinstance(part, int)
    }
    return [
        error
        for error in errors
        if not (error["type"] == "too_short" and tuple(error["loc"]) in with_failed_items)
        # A mapping given where a union also takes a word: the word's branch is not the problem.
        and not (isinstance(error.get("input"), dict) and _union_tag(error, "literal["))
    ]


def _union_tag(error: Any, prefix: str) -> bool:
    return any(isinstance(part, str) and part.startswith(prefix) for part in error["loc"])
