"""Which variant of an endpoint serves a request: sticky per user key, or a weighted random draw.

Sticky routing is weighted rendezvous hashing (highest random weight with exponential races): each
variant `v` of weight `w > 0` draws `u_v` in (0, 1) from a 64-bit blake2b of (endpoint, v, user_key)
and scores `-ln(u_v) / w`; the lowest score wins. The scores are independent exponentials with
rates `w`, so a variant wins with probability `w / sum(weights)`, and a variant's score depends only
on its own weight. Hence the ramp-stability contract for any number of variants: raising one weight
moves users only onto that variant, lowering it moves users only off it, and users never move
between two variants whose weights did not change.

Every `choose_*` checks its weights with `validate_weights` (a fraction of a microsecond), so a bad
weight raises ValueError instead of skewing the split.
"""

import bisect
import enum
import functools
import hashlib
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Final

# blake2b personalization: separates these hashes from any other use of blake2b and names the
# scheme's version. Changing it, the framing or the score moves every sticky user in production.
_PERSON: Final = b"gateway-route-v1"
_SCALE_53: Final = 2.0**-53  # a 53-bit integer times this lies in [0, 1)

_Candidate = tuple[str, int, hashlib.blake2b]


class Routing(enum.StrEnum):
    """How a request's variant was chosen, as the inference log records it."""

    STICKY = "sticky"
    RANDOM = "random"
    FORCED = "forced"
    SHADOW = "shadow"
    FALLBACK = "fallback"


def validate_weights(weights: Mapping[str, int]) -> None:
    """Raise ValueError unless every weight is an integer >= 0 and at least one is positive."""
    if not weights:
        raise ValueError("weights: an endpoint needs at least one variant, got none")
    for variant, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(
                f"weights[{variant!r}]: must be an integer >= 0, got {weight!r}"
                f" ({type(weight).__name__})"
            )
    if not any(weights.values()):
        raise ValueError(
            f"weights: at least one variant needs a weight > 0, got all zero: {sorted(weights)}"
        )


def _encode(text: str) -> bytes:
    # surrogatepass: a lone surrogate (valid in a JSON string) still gets a stable encoding.
    return text.encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=1024)
def _prefix_hash(endpoint: str, variant: str) -> hashlib.blake2b:
    """A hash already fed (endpoint, variant); callers copy it and never update it in place."""
    endpoint_bytes = _encode(endpoint)
    variant_bytes = _encode(variant)
    # Endpoint and variant are length-prefixed and the user key is the last field, so distinct
    # (endpoint, variant, user_key) triples never feed the hash the same bytes.
    prefix = (
        len(endpoint_bytes).to_bytes(8, "big")
        + endpoint_bytes
        + len(variant_bytes).to_bytes(8, "big")
        + variant_bytes
    )
    return hashlib.blake2b(prefix, digest_size=8, person=_PERSON)


def _candidates(endpoint: str, weights: Mapping[str, int]) -> list[_Candidate]:
    """The variants that can win, each with its weight and prefix hash."""
    validate_weights(weights)
    return [
        (variant, weight, _prefix_hash(endpoint, variant))
        for variant, weight in weights.items()
        if weight
    ]


def _pick(candidates: list[_Candidate], key: bytes) -> str:
    """The candidate with the lowest exponential score for `key`; ties go to the smaller name."""
    best_variant = ""
    best_score = math.inf
    for variant, weight, prefix in candidates:
        digest = prefix.copy()
        digest.update(key)
        # The top 53 of the 64 bits with the last one set: an odd multiple of 2**-53, so exact
        # and strictly inside (0, 1), where the logarithm is finite and negative.
        u = ((int.from_bytes(digest.digest(), "big") >> 11) | 1) * _SCALE_53
        # Scores of two variants would have to agree to the last bit for a libm's rounding of the
        # logarithm to change a choice between platforms: about once in 2**50 decisions.
        score = -math.log(u) / weight
        if score < best_score or (score == best_score and variant < best_variant):
            best_variant, best_score = variant, score
    return best_variant


def choose_sticky(endpoint: str, user_key: str, weights: Mapping[str, int]) -> str:
    """The variant for `user_key`: the same in every process, ramp-stable as weights change."""
    return _pick(_candidates(endpoint, weights), _encode(user_key))


def choose_sticky_many(
    endpoint: str, user_keys: Sequence[str], weights: Mapping[str, int]
) -> list[str]:
    """`choose_sticky` for each of `user_keys`, sharing the per-variant work."""
    candidates = _candidates(endpoint, weights)
    return [_pick(candidates, _encode(user_key)) for user_key in user_keys]


def choose_random(weights: Mapping[str, int], rng: random.Random) -> str:
    """A variant drawn with probability weight / total, reproducible for a seeded `rng`."""
    validate_weights(weights)
    variants = sorted(weights)
    cumulative = list(itertools.accumulate(weights[variant] for variant in variants))
    # bisect_right skips a weight-0 variant: its running total equals its predecessor's.
    return variants[bisect.bisect_right(cumulative, rng.randrange(cumulative[-1]))]
