import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gateway
from gateway.core.routing import (
    Routing,
    choose_random,
    choose_sticky,
    choose_sticky_many,
    validate_weights,
)

ENDPOINT = "churn"
RAMP_KEYS = [f"user-{i}" for i in range(10_000)]
SPLIT_KEYS = [f"user-{i}" for i in range(20_000)]
WEIGHT_STEPS = [0, 1, 2, 5, 10, 25, 50, 75, 100]


def assert_within_five_sigma(observed: int, trials: int, share: float) -> None:
    # If the hash (or the seeded rng) behaves uniformly, the count on a variant with share p is
    # Binomial(N, p). A 5-sigma bound is exceeded by chance with probability ~6e-7 per assertion,
    # so a failure means a biased scheme, not bad luck; the keys and seeds are fixed anyway, so
    # the outcome is the same on every run.
    expected = trials * share
    tolerance = 5 * math.sqrt(trials * share * (1 - share))
    assert abs(observed - expected) <= tolerance, (
        f"{observed} of {trials} for share {share}: expected {expected:.0f} +- {tolerance:.0f}"
    )


def test_routing_values_are_the_inference_log_words() -> None:
    assert [routing.value for routing in Routing] == [
        "sticky",
        "random",
        "forced",
        "shadow",
        "fallback",
    ]


# The sticky assignments must survive any process, machine and restart: Python's `hash()` is salted
# per process (PYTHONHASHSEED), so two interpreters with different seeds must agree with this one.
SUBPROCESS_SCRIPT = """
import json
from gateway.core.routing import choose_sticky
keys = [f"user-{i}" for i in range(2000)]
weights = {"champion": 70, "challenger": 20, "candidate": 10}
variants = [choose_sticky("churn", key, weights) for key in keys]
print(json.dumps({"salted_hash": hash("churn"), "variants": variants}))
"""


def run_in_fresh_interpreter(hash_seed: str) -> dict[str, object]:
    repo_root = str(Path(gateway.__file__).resolve().parents[1])
    python_path = os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": python_path}
    completed = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(completed.stdout)
    return result


def test_sticky_choice_is_identical_across_processes_with_different_hash_seeds() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    weights = {"champion": 70, "challenger": 20, "candidate": 10}
    here = [choose_sticky("churn", key, weights) for key in keys]

    first = run_in_fresh_interpreter("1")
    second = run_in_fresh_interpreter("12345")

    # The two interpreters really do salt `hash()` differently, so agreement below means something.
    assert first["salted_hash"] != second["salted_hash"]
    assert first["variants"] == here
    assert second["variants"] == here


@pytest.mark.parametrize(
    "reordered",
    [
        {"candidate": 10, "challenger": 20, "champion": 70},
        {"challenger": 20, "champion": 70, "candidate": 10},
    ],
)
def test_sticky_and_random_choices_ignore_the_order_of_weights(reordered: dict[str, int]) -> None:
    weights = {"champion": 70, "challenger": 20, "candidate": 10}
    keys = RAMP_KEYS[:2000]
    assert choose_sticky_many(ENDPOINT, keys, reordered) == choose_sticky_many(
        ENDPOINT, keys, weights
    )
    first, second = random.Random(7), random.Random(7)
    assert [choose_random(reordered, first) for _ in range(2000)] == [
        choose_random(weights, second) for _ in range(2000)
    ]


# Golden values: a change to the hash, its framing or the score moves every sticky user in
# production. If one of these fails, that is what the change does; it is not a test to update.
@pytest.mark.parametrize(
    ("endpoint", "user_key", "weights", "variant"),
    [
        ("churn", "user-1", {"champion": 50, "challenger": 50}, "challenger"),
        ("churn", "bob", {"champion": 50, "challenger": 50}, "champion"),
        ("churn", "42", {"champion": 50, "challenger": 50}, "champion"),
        ("churn", "élève-7", {"champion": 50, "challenger": 50}, "challenger"),
        ("churn", "", {"champion": 50, "challenger": 50}, "challenger"),
        ("churn", "user-1", {"champion": 90, "challenger": 10}, "champion"),
        ("churn", "user-13", {"champion": 90, "challenger": 10}, "challenger"),
        ("churn", "user-18", {"champion": 90, "challenger": 10}, "challenger"),
        ("churn", "user-1", {"champion": 70, "challenger": 20, "candidate": 10}, "champion"),
        ("churn", "user-3", {"champion": 70, "challenger": 20, "candidate": 10}, "challenger"),
        ("churn", "user-5", {"champion": 70, "challenger": 20, "candidate": 10}, "candidate"),
        ("fraud", "user-1", {"champion": 50, "challenger": 50}, "champion"),
        ("fraud", "user-2", {"champion": 50, "challenger": 50}, "challenger"),
    ],
)
def test_sticky_choice_matches_golden_values(
    endpoint: str, user_key: str, weights: dict[str, int], variant: str
) -> None:
    assert choose_sticky(endpoint, user_key, weights) == variant


def test_sticky_split_of_a_thousand_keys_matches_golden_counts() -> None:
    keys = RAMP_KEYS[:1000]
    halves = choose_sticky_many(ENDPOINT, keys, {"champion": 50, "challenger": 50})
    three_way = choose_sticky_many(
        ENDPOINT, keys, {"champion": 70, "challenger": 20, "candidate": 10}
    )
    assert halves.count("challenger") == 523
    assert [three_way.count(v) for v in ("champion", "challenger", "candidate")] == [693, 207, 100]


@pytest.mark.parametrize("variant_count", [2, 3, 5])
def test_changing_one_weight_moves_users_only_onto_or_off_that_variant(variant_count: int) -> None:
    rng = random.Random(1000 + variant_count)
    variants = [f"v{i}" for i in range(variant_count)]
    weights = {variant: rng.choice(WEIGHT_STEPS[1:]) for variant in variants}
    before = choose_sticky_many(ENDPOINT, RAMP_KEYS, weights)
    moves = 0
    for _ in range(12):
        changed = rng.choice(variants)
        others_positive = any(w for v, w in weights.items() if v != changed)
        choices = [w for w in WEIGHT_STEPS if w != weights[changed] and (w or others_positive)]
        old_weight, new_weight = weights[changed], rng.choice(choices)
        weights = {**weights, changed: new_weight}
        after = choose_sticky_many(ENDPOINT, RAMP_KEYS, weights)

        moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
        if new_weight > old_weight:
            wrong = [pair for pair in moved if pair[1] != changed]
        else:
            wrong = [pair for pair in moved if pair[0] != changed]
        assert not wrong, f"{changed} {old_weight}->{new_weight}: {len(wrong)} wrong moves"
        moves += len(moved)
        before = after
    assert moves > 0


def test_canary_ramp_keeps_every_challenger_user_on_the_challenger() -> None:
    on_challenger: set[str] = set()
    for share in (5, 25, 50, 100):
        weights = {"champion": 100 - share, "challenger": share}
        variants = choose_sticky_many(ENDPOINT, RAMP_KEYS, weights)
        now = {key for key, v in zip(RAMP_KEYS, variants, strict=True) if v == "challenger"}
        assert on_challenger <= now, f"{len(on_challenger - now)} users left at {share}%"
        assert_within_five_sigma(len(now), len(RAMP_KEYS), share / 100)
        on_challenger = now
    assert len(on_challenger) == len(RAMP_KEYS)


def test_rollback_moves_users_only_back_to_the_champion() -> None:
    on_champion: set[str] = set()
    for share in (50, 25, 5, 0):
        weights = {"champion": 100 - share, "challenger": share}
        variants = choose_sticky_many(ENDPOINT, RAMP_KEYS, weights)
        now = {key for key, v in zip(RAMP_KEYS, variants, strict=True) if v == "champion"}
        assert on_champion <= now
        on_champion = now
    assert len(on_champion) == len(RAMP_KEYS)


@pytest.mark.parametrize("challenger_weight", [1, 7, 100])
def test_challenger_with_all_the_weight_gets_every_user(challenger_weight: int) -> None:
    weights = {"champion": 0, "challenger": challenger_weight}
    assert set(choose_sticky_many(ENDPOINT, RAMP_KEYS, weights)) == {"challenger"}


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 0, "b": 5, "c": 3},
        {"a": 5, "b": 0, "c": 3},
        {"a": 5, "b": 3, "c": 0},
        {"a": 1, "b": 0, "c": 0},
    ],
)
def test_variant_with_weight_zero_gets_no_traffic(weights: dict[str, int]) -> None:
    expected = {variant for variant, weight in weights.items() if weight}
    assert set(choose_sticky_many(ENDPOINT, RAMP_KEYS, weights)) == expected
    rng = random.Random(11)
    assert {choose_random(weights, rng) for _ in range(10_000)} == expected


SPLITS = [
    {"champion": 90, "challenger": 10},
    {"champion": 50, "challenger": 50},
    {"champion": 1, "challenger": 99},
    {"champion": 70, "challenger": 20, "candidate": 10},
    {"v1": 40, "v2": 25, "v3": 20, "v4": 10, "v5": 5},
]
SPLIT_IDS = ["/".join(map(str, weights.values())) for weights in SPLITS]


@pytest.mark.parametrize("weights", SPLITS, ids=SPLIT_IDS)
def test_sticky_split_matches_weights_within_five_sigma(weights: dict[str, int]) -> None:
    variants = choose_sticky_many(ENDPOINT, SPLIT_KEYS, weights)
    total = sum(weights.values())
    for variant, weight in weights.items():
        assert_within_five_sigma(variants.count(variant), len(SPLIT_KEYS), weight / total)


@pytest.mark.parametrize("weights", SPLITS, ids=SPLIT_IDS)
def test_random_split_matches_weights_within_five_sigma(weights: dict[str, int]) -> None:
    rng = random.Random(2024)
    draws = [choose_random(weights, rng) for _ in range(20_000)]
    total = sum(weights.values())
    for variant, weight in weights.items():
        assert_within_five_sigma(draws.count(variant), len(draws), weight / total)


def test_endpoints_split_the_same_users_independently() -> None:
    weights = {"champion": 50, "challenger": 50}
    churn = choose_sticky_many("churn", SPLIT_KEYS, weights)
    fraud = choose_sticky_many("fraud", SPLIT_KEYS, weights)
    agree = sum(a == b for a, b in zip(churn, fraud, strict=True))
    assert_within_five_sigma(agree, len(SPLIT_KEYS), 0.5)


def test_random_choice_is_reproducible_for_a_seeded_rng() -> None:
    weights = {"champion": 90, "challenger": 10}
    first, second = random.Random(5), random.Random(5)
    assert [choose_random(weights, first) for _ in range(500)] == [
        choose_random(weights, second) for _ in range(500)
    ]


@pytest.mark.parametrize(
    "weights",
    [
        {"champion": 90, "challenger": 10},
        {"champion": 70, "challenger": 20, "candidate": 10},
        {"v1": 40, "v2": 0, "v3": 20, "v4": 1, "v5": 5},
    ],
)
def test_sticky_many_equals_sticky_for_each_key(weights: dict[str, int]) -> None:
    keys = [*RAMP_KEYS[:500], "", "élève", "用户-1", "\ud800", "x" * 10_000]
    assert choose_sticky_many(ENDPOINT, keys, weights) == [
        choose_sticky(ENDPOINT, key, weights) for key in keys
    ]


@pytest.mark.parametrize(
    "weights",
    [{"champion": 1}, {"champion": 0, "challenger": 3}, {"a": 100, "b": 0, "c": 1}],
)
def test_valid_weights_pass_validation(weights: dict[str, int]) -> None:
    validate_weights(weights)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            {"champion": 90, "challenger": -5},
            "weights['challenger']: must be an integer >= 0, got -5",
        ),
        ({"champion": True}, "weights['champion']: must be an integer >= 0, got True (bool)"),
        ({"champion": 1.5}, "weights['champion']: must be an integer >= 0, got 1.5 (float)"),
        ({"champion": "10"}, "weights['champion']: must be an integer >= 0, got '10' (str)"),
        ({"champion": None}, "weights['champion']: must be an integer >= 0, got None"),
        ({}, "weights: an endpoint needs at least one variant, got none"),
        ({"champion": 0, "challenger": 0}, "at least one variant needs a weight > 0, got all zero"),
    ],
)
def test_invalid_weights_are_rejected_with_a_clear_message(
    weights: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_weights(weights)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(message)):
        choose_sticky(ENDPOINT, "user-1", weights)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(message)):
        choose_random(weights, random.Random(0))  # type: ignore[arg-type]
