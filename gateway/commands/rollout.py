"""`gateway rollout`: status, set, promote, rollback and an automatic canary, on the registry.

Every change is a registered-model tag or alias, so it reaches every worker and replica within
one refresh interval; every decision is printed with its figures and recorded as an audit tag.
"""

import argparse
import getpass
import json
import socket
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from gateway.commands.rollout_quality import QualityGate, with_quality
from gateway.core.config import Endpoint, GatewayConfig
from gateway.core.judging import Metric
from gateway.core.rollout import (
    AUDIT_TAG_PREFIX,
    WEIGHTS_TAG,
    Action,
    Figures,
    Guard,
    canary_weights,
    format_weights,
    judge,
    merge_weights,
    parse_assignments,
    parse_weights,
    quantile,
)
from gateway.observe.report.assemble import ReportOptions
from gateway.serving.registry import Registry, RegistryError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Snapshot = dict[str, "Totals"]


def main(
    config: GatewayConfig,
    args: argparse.Namespace,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run one rollout command; returns the exit status (`out`: stdout as it is at the call)."""
    endpoint = config.endpoint(args.endpoint) if args.endpoint else config.endpoints[0]
    if endpoint is None:
        print(f"error: no endpoint named {args.endpoint!r}", file=sys.stderr)
        return EXIT_USAGE
    names = list(endpoint.weights)
    for role in (args.champion, args.challenger):
        if role not in names:
            print(
                f"error: endpoint {endpoint.name} has no variant {role!r}; it has {', '.join(names)}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    rollout = Rollout(
        Registry(args.tracking_uri or config.tracking_uri, config.registry_uri),
        endpoint,
        args.champion,
        args.challenger,
        sys.stdout if out is None else out,
    )
    try:
        if args.rollout_command == "status":
            return rollout.status(_source(args, endpoint))
        if args.rollout_command == "set":
            return rollout.set(parse_assignments(args.weights), args.dry_run)
        if args.rollout_command == "promote":
            return rollout.promote(args.dry_run)
        if args.rollout_command == "rollback":
            return rollout.rollback("requested", args.dry_run)
        guard = Guard(args.min_requests, args.max_error_rate_increase, args.max_p99_ratio)
        quality = _quality_gate(args, config, endpoint)
        source = _source(args, endpoint)
        if source is None:
            print(
                "error: `rollout run` needs --gateway URL (repeatable) or --prometheus URL",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return rollout.run(
            args.steps, args.interval, guard, args.max_holds, source, args.dry_run, sleep, quality
        )
    except (RegistryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


class Totals:
    """Cumulative counts of one variant: requests, errors and latency buckets."""

    def __init__(self) -> None:
        self.requests = 0.0
        self.errors = 0.0
        self.buckets: dict[float, float] = {}

    def since(self, earlier: "Totals | None") -> Figures:
        """What happened between an earlier snapshot and this one."""
        before = earlier or Totals()
        buckets = [
            (bound, count - before.buckets.get(bound, 0.0)) for bound, count in self.buckets.items()
        ]
        return Figures(
            self.requests - before.requests, self.errors - before.errors, quantile(buckets, 0.99)
        )


class Rollout:
    """The registry side of a canary on one endpoint."""

    def __init__(
        self, registry: Registry, endpoint: Endpoint, champion: str, challenger: str, out: TextIO
    ) -> None:
        self._registry = registry
        self._endpoint = endpoint
        self._champion = champion
        self._challenger = challenger
        self._out = out

    def status(self, source: "Callable[[], Snapshot] | None") -> int:
        """Print aliases, versions and weights, and the live figures when a source is given."""
        state = self._registry.model_state(self._endpoint.model)
        weights = self._live_weights(state.tags)
        self._say(f"endpoint {self._endpoint.name} (models:/{self._endpoint.model})")
        snapshot = source() if source else {}
        for variant in self._endpoint.variants:
            name = variant.variant_name
            version = (
                state.aliases.get(variant.alias)
                if variant.alias
                else str(variant.version or variant.stage)
            )
            line = f"  {name:<12} version {version or '?':<6} weight {weights.get(name, 0)}"
            if name in snapshot:
                totals = snapshot[name]
                figures = totals.since(None)
                p99 = (
                    "n/a" if figures.p99_seconds is None else f"{figures.p99_seconds * 1000:.1f} ms"
                )
                line += (
                    f"  requests {figures.requests:.0f}  errors {figures.error_rate:.2%}  p99 {p99}"
                )
            self._say(line)
        history = sorted(
            (key, value) for key, value in state.tags.items() if key.startswith(AUDIT_TAG_PREFIX)
        )
        for key, value in history[-5:]:
            self._say(f"  {key[len(AUDIT_TAG_PREFIX) :]}  {value}")
        return EXIT_OK

    def set(
        self, weights: dict[str, int], dry_run: bool, reasons: Sequence[str] = ("requested",)
    ) -> int:
        """Write the live weights (variants not named keep theirs)."""
        unknown = sorted(set(weights) - set(self._endpoint.weights))
        if unknown:
            raise ValueError(f"endpoint {self._endpoint.name} has no variant {', '.join(unknown)}")
        current = self._live_weights(self._registry.model_state(self._endpoint.model).tags)
        merged = merge_weights(current, weights)
        self._record("set", merged, reasons, dry_run)
        if not dry_run:
            self._registry.set_tag(self._endpoint.model, WEIGHTS_TAG, format_weights(merged))
        return EXIT_OK

    def promote(self, dry_run: bool) -> int:
        """Move the champion alias to the challenger's version; all traffic to the champion."""
        champion, challenger = self._alias(self._champion), self._alias(self._challenger)
        state = self._registry.model_state(self._endpoint.model)
        version = state.aliases.get(challenger)
        if version is None:
            raise ValueError(f"alias models:/{self._endpoint.model}@{challenger} does not exist")
        weights = canary_weights(self._champion, self._challenger, 0)
        self._record(
            "promote",
            weights,
            (f"{champion} -> version {version} (was {state.aliases.get(champion)})",),
            dry_run,
        )
        if not dry_run:
            self._registry.set_alias(self._endpoint.model, champion, version)
            self._registry.set_tag(self._endpoint.model, WEIGHTS_TAG, format_weights(weights))
        return EXIT_OK

    def rollback(self, reason: str, dry_run: bool, figures: dict[str, Any] | None = None) -> int:
        """All traffic to the champion, none to the challenger."""
        weights = canary_weights(self._champion, self._challenger, 0)
        self._record("rollback", weights, (reason,), dry_run, figures)
        if not dry_run:
            self._registry.set_tag(self._endpoint.model, WEIGHTS_TAG, format_weights(weights))
        return EXIT_OK

    def run(
        self,
        steps: Sequence[int],
        interval: float,
        guard: Guard,
        max_holds: int,
        source: "Callable[[], Snapshot]",
        dry_run: bool,
        sleep: Callable[[float], None],
        quality: QualityGate | None = None,
    ) -> int:
        """Ramp through `steps`, judging the challenger after each interval; promote at the end.

        With a quality gate, each interval also judges the outcomes logged since the canary began.
        """
        if dry_run:
            for step in steps:
                self._say(
                    f"would set {format_weights(canary_weights(self._champion, self._challenger, step))}, "
                    f"then judge every {interval:g}s ({guard})"
                )
            self._say("would promote after the last step")
            return EXIT_OK
        started = datetime.now(UTC)
        for step in steps:
            self._set(canary_weights(self._champion, self._challenger, step), f"step {step}%")
            holds = 0
            while True:
                before = source()
                sleep(interval)
                after = source()
                champion = after.get(self._champion, Totals()).since(before.get(self._champion))
                challenger = after.get(self._challenger, Totals()).since(
                    before.get(self._challenger)
                )
                verdict = judge(champion, challenger, guard)
                figures = {"champion": _figures(champion), "challenger": _figures(challenger)}
                if quality is not None and verdict.action is not Action.ROLLBACK:
                    gate, figures["quality"] = quality.look(started)
                    verdict = with_quality(verdict, gate)
                self._record(
                    f"step {step}%: {verdict.action}", None, verdict.reasons, False, figures
                )
                if verdict.action is Action.ROLLBACK:
                    self.rollback(
                        f"guard at step {step}%: " + "; ".join(verdict.reasons), False, figures
                    )
                    return EXIT_FAILED
                if verdict.action is Action.ADVANCE:
                    break
                holds += 1
                if holds > max_holds:
                    self.rollback(
                        f"not judged after {holds} intervals at step {step}%: "
                        + "; ".join(verdict.reasons),
                        False,
                        figures,
                    )
                    return EXIT_FAILED
        return self.promote(False)

    def _set(self, weights: dict[str, int], reason: str) -> None:
        self.set(weights, False, (reason,))

    def _live_weights(self, tags: dict[str, str]) -> dict[str, int]:
        configured = self._endpoint.weights
        text = tags.get(WEIGHTS_TAG)
        return (
            configured
            if text is None
            else merge_weights(configured, parse_weights(text, configured))
        )

    def _alias(self, variant_name: str) -> str:
        variant = next(v for v in self._endpoint.variants if v.variant_name == variant_name)
        if variant.alias is None:
            raise ValueError(f"variant {variant_name} is not an alias, so it cannot be promoted")
        return variant.alias

    def _record(
        self,
        action: str,
        weights: dict[str, int] | None,
        reasons: Sequence[str],
        dry_run: bool,
        figures: dict[str, Any] | None = None,
    ) -> None:
        """Print a decision and, unless dry, add it to the registry's audit trail."""
        now = datetime.now(UTC)
        entry: dict[str, Any] = {
            "endpoint": self._endpoint.name,
            "action": action,
            "reasons": list(reasons),
        }
        if weights is not None:
            entry["weights"] = weights
        if figures is not None:
            entry["figures"] = figures
        entry["by"] = f"{getpass.getuser()}@{socket.gethostname()}"
        prefix = "[dry run] " if dry_run else ""
        self._say(
            f"{prefix}{now:%Y-%m-%dT%H:%M:%SZ} {action}: {'; '.join(reasons)}"
            + (f" weights {format_weights(weights)}" if weights else "")
        )
        if not dry_run:
            key = f"{AUDIT_TAG_PREFIX}{now:%Y%m%dT%H%M%S.%fZ}"
            self._registry.set_tag(
                self._endpoint.model, key, json.dumps(entry, separators=(",", ":"))
            )

    def _say(self, line: str) -> None:
        print(line, file=self._out, flush=True)


def _figures(figures: Figures) -> dict[str, Any]:
    return {
        "requests": round(figures.requests),
        "error_rate": round(figures.error_rate, 4),
        "p99_ms": None if figures.p99_seconds is None else round(figures.p99_seconds * 1000, 2),
    }


def _quality_gate(
    args: argparse.Namespace, config: GatewayConfig, endpoint: Endpoint
) -> QualityGate | None:
    if args.rollout_command != "run" or not args.outcomes:
        return None
    options = ReportOptions(
        logs=args.logs or Path(config.inference_log.dir),
        endpoint=endpoint.name,
        outcomes=tuple(args.outcomes),
        key=args.key,
        outcome_column=args.outcome_column,
        metric=Metric(args.metric),
        user_key_secret=config.inference_log.user_key_secret,
        alpha=args.alpha,
        champion=args.champion,
        challenger=args.challenger,
    )
    return QualityGate(options, margin=args.margin, require_superior=args.require_superior)


def _source(args: argparse.Namespace, endpoint: Endpoint) -> "Callable[[], Snapshot] | None":
    if args.prometheus:
        return lambda: prometheus_snapshot(args.prometheus, endpoint.name)
    if args.gateway:
        return lambda: gateway_snapshot(args.gateway, endpoint.name)
    return None


def gateway_snapshot(urls: Sequence[str], endpoint: str) -> Snapshot:
    """Per-variant totals summed over the `/metrics` of every given gateway replica."""
    snapshot: Snapshot = {}
    for url in urls:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as response:
            text = response.read().decode("utf-8")
        add_samples(snapshot, text, endpoint)
    return snapshot


def add_samples(snapshot: Snapshot, text: str, endpoint: str) -> None:
    """Add one scrape's request, error and latency counts for `endpoint` to `snapshot`."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("endpoint") != endpoint or "variant" not in labels:
                continue
            totals = snapshot.setdefault(labels["variant"], Totals())
            if sample.name == "gateway_requests_total":
                totals.requests += sample.value
                if labels.get("status") != "200":
                    totals.errors += sample.value
            elif sample.name == "gateway_fallback_total":
                # A failure of this variant that the fallback variant answered for: its error.
                totals.requests += sample.value
                totals.errors += sample.value
            elif sample.name == "gateway_request_duration_seconds_bucket":
                bound = float(labels["le"])
                totals.buckets[bound] = totals.buckets.get(bound, 0.0) + sample.value


def prometheus_snapshot(url: str, endpoint: str) -> Snapshot:
    """Per-variant totals from a Prometheus server, summed over every replica it scrapes."""
    selector = f'endpoint="{endpoint}"'
    snapshot: Snapshot = {}
    for result in _query(url, f"sum by (variant) (gateway_requests_total{{{selector}}})"):
        snapshot.setdefault(result["metric"]["variant"], Totals()).requests = float(
            result["value"][1]
        )
    for result in _query(
        url, f'sum by (variant) (gateway_requests_total{{{selector},status!="200"}})'
    ):
        snapshot.setdefault(result["metric"]["variant"], Totals()).errors = float(
            result["value"][1]
        )
    # A failure that the endpoint's fallback variant answered for is the failed variant's error.
    for result in _query(url, f"sum by (variant) (gateway_fallback_total{{{selector}}})"):
        totals = snapshot.setdefault(result["metric"]["variant"], Totals())
        totals.requests += float(result["value"][1])
        totals.errors += float(result["value"][1])
    for result in _query(
        url, f"sum by (variant, le) (gateway_request_duration_seconds_bucket{{{selector}}})"
    ):
        totals = snapshot.setdefault(result["metric"]["variant"], Totals())
        totals.buckets[float(result["metric"]["le"])] = float(result["value"][1])
    return snapshot


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query?{query}", timeout=10) as response:
        document = json.load(response)
    if document.get("status") != "success":
        raise ValueError(f"Prometheus answered {document.get('status')}: {document.get('error')}")
    return list(document["data"]["result"])
