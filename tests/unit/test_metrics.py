"""The request path's metric updates, summed between flushes: what a scrape reads after a flush is
what prometheus-client would have recorded update by update."""

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from gateway.observe import metrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the creation times; sums rounded (added in another order, they can differ
    in their last bits)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): (
            round(sample.value, 9) if sample.name.endswith("_sum") else sample.value
        )
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_summed_updates_write_what_single_updates_write() -> None:
    summed_registry, direct_registry = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    summed_histogram = Histogram("latency", "", ["v"], buckets=buckets, registry=summed_registry)
    direct_histogram = Histogram("latency", "", ["v"], buckets=buckets, registry=direct_registry)
    summed_counter = Counter("answered", "", ["v"], registry=summed_registry)
    direct_counter = Counter("answered", "", ["v"], registry=direct_registry)
    observations = metrics._tracked(metrics._Observations(summed_histogram.labels("a")))
    count = metrics._tracked(metrics._Count(summed_counter.labels("a")))
    rng = random.Random(3)
    # Bounds themselves land in their own bucket (le is "less or equal"), as do the extremes.
    values = [*buckets, 0.0, 5.0, *(rng.expovariate(20) for _ in range(500))]
    for value in values:
        observations.observe(value)
        count.inc()
        direct_histogram.labels("a").observe(value)
        direct_counter.labels("a").inc()
    assert _samples(summed_registry)[("answered_total", (("v", "a"),))] == 0.0  # not yet written
    metrics.flush()
    assert _samples(summed_registry) == _samples(direct_registry)
    # A second round adds to the first.
    for value in values[:50]:
        observations.observe(value)
        direct_histogram.labels("a").observe(value)
    metrics.flush()
    assert _samples(summed_registry) == _samples(direct_registry)
    assert b'latency_bucket{le="0.001",v="a"}' in generate_latest(summed_registry)


def test_a_level_writes_its_value_at_each_flush() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("waiting", "", ["v"], registry=registry)
    level = metrics.level(gauge, "a")
    assert metrics.level(gauge, "a") is level  # one per label set
    level.add(3)
    level.add(-1)
    assert registry.get_sample_value("waiting", {"v": "a"}) == 0.0
    metrics.flush()
    assert registry.get_sample_value("waiting", {"v": "a"}) == 2.0
    level.add(-2)
    metrics.flush()
    assert registry.get_sample_value("waiting", {"v": "a"}) == 0.0


def test_histogram_bounds_are_the_clients_own() -> None:
    histogram = Histogram("sizes", "", buckets=(1, 2, 4), registry=CollectorRegistry())
    assert metrics.histogram_bounds(histogram) == (1.0, 2.0, 4.0, float("inf"))
