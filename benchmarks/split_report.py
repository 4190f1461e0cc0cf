"""Evidence for sticky routing: split accuracy, canary-ramp moves, ramp stability, cost per call.

Run `python benchmarks/split_report.py`. Keys, seeds and weights are fixed, so every figure but the
timings is the same on every run and machine. Exits 1 if a ramp moved a user the wrong way.
"""

import functools
import itertools
import math
import random
import sys
import timeit

from gateway.core.routing import choose_sticky, choose_sticky_many

ENDPOINT = "churn"
KEYS = [f"user-{i}" for i in range(100_000)]
SPLITS = [
    {"champion": 90, "challenger": 10},
    {"champion": 75, "challenger": 25},
    {"champion": 50, "challenger": 50},
    {"champion": 70, "challenger": 20, "candidate": 10},
]
CANARY_SHARES = [0, 5, 25, 50, 100]
RANDOM_CHANGES = 1_000
RANDOM_CHANGE_KEYS = KEYS[:1_000]
WEIGHT_STEPS = [0, 1, 2, 5, 10, 25, 50, 75, 100]


def report_splits() -> None:
    print(f"Split accuracy over {len(KEYS):,} fixed keys (sigma = sqrt(N p (1 - p)))")
    print(f"  {'weights':<10} {'variant':<11} {'target':>8} {'observed':>9} {'deviation':>17}")
    for weights in SPLITS:
        variants = choose_sticky_many(ENDPOINT, KEYS, weights)
        total = sum(weights.values())
        label = "/".join(str(weight) for weight in weights.values())
        for variant, weight in weights.items():
            share = weight / total
            count = variants.count(variant)
            sigma = math.sqrt(len(KEYS) * share * (1 - share))
            deviation = (count - len(KEYS) * share) / sigma
            print(
                f"  {label:<10} {variant:<11} {share:>8.2%} {count / len(KEYS):>9.3%}"
                f" {deviation:>+11.2f} sigma"
            )


def canary_weights(share: int) -> dict[str, int]:
    return {"champion": 100 - share, "challenger": share}


def report_canary() -> int:
    print(f"\nCanary ramp over {len(KEYS):,} keys (champion weight = 100 - challenger weight)")
    print(f"  {'step':<10} {'on challenger':>14} {'moved onto':>11} {'moved off':>10}")
    moved_off_total = 0
    previous = choose_sticky_many(ENDPOINT, KEYS, canary_weights(CANARY_SHARES[0]))
    for old_share, share in itertools.pairwise(CANARY_SHARES):
        variants = choose_sticky_many(ENDPOINT, KEYS, canary_weights(share))
        pairs = list(zip(previous, variants, strict=True))
        onto = sum(b == "champion" and a == "challenger" for b, a in pairs)
        off = sum(b == "challenger" and a == "champion" for b, a in pairs)
        moved_off_total += off
        step = f"{old_share}->{share}%"
        print(f"  {step:<10} {variants.count('challenger'):>14,} {onto:>11,} {off:>10,}")
        previous = variants
    return moved_off_total


def report_random_changes() -> int:
    rng = random.Random(20_240_601)
    names = [f"v{i}" for i in range(5)]
    weights = {name: rng.choice(WEIGHT_STEPS[1:]) for name in names}
    before = choose_sticky_many(ENDPOINT, RANDOM_CHANGE_KEYS, weights)
    moved = violations = 0
    for _ in range(RANDOM_CHANGES):
        changed = rng.choice(names)
        others_positive = any(w for name, w in weights.items() if name != changed)
        choices = [w for w in WEIGHT_STEPS if w != weights[changed] and (w or others_positive)]
        raised = (new_weight := rng.choice(choices)) > weights[changed]
        weights = {**weights, changed: new_weight}
        after = choose_sticky_many(ENDPOINT, RANDOM_CHANGE_KEYS, weights)
        for b, a in zip(before, after, strict=True):
            if b != a:
                moved += 1
                # Raising a weight may only move users onto that variant; lowering, only off it.
                violations += (a if raised else b) != changed
        before = after
    print(
        f"\n{RANDOM_CHANGES:,} random single-weight changes over 5 variants,"
        f" {len(RANDOM_CHANGE_KEYS):,} keys each"
    )
    print(f"  users moved: {moved:,}   moves that broke ramp stability: {violations}")
    return violations


def report_cost() -> None:
    print("\nCost per call (best of 5 timeit runs)")
    calls, keys = 50_000, KEYS[:10_000]
    for weights in (SPLITS[0], {f"v{i}": 20 for i in range(5)}):
        one = functools.partial(choose_sticky, ENDPOINT, "user-12345", weights)
        many = functools.partial(choose_sticky_many, ENDPOINT, keys, weights)
        per_call = min(timeit.repeat(one, number=calls, repeat=5)) / calls
        per_key = min(timeit.repeat(many, number=1, repeat=5)) / len(keys)
        print(
            f"  {len(weights)} variants: choose_sticky {per_call * 1e6:.2f} us/call,"
            f" choose_sticky_many {per_key * 1e6:.2f} us/key"
        )


def main() -> int:
    report_splits()
    moved_off = report_canary()
    violations = report_random_changes()
    report_cost()
    return 1 if moved_off or violations else 0


if __name__ == "__main__":
    sys.exit(main())
