"""A worker's in-flight limit: `max_in_flight`, two full batches a version while overloaded."""

from gateway.core.admission import HOLD_SECONDS, Admission
from tests.helpers import FakeClock

CHAMPION = ("churn", "champion")
CHALLENGER = ("churn", "challenger")


def admission(limit: int | None = 256) -> tuple[Admission, FakeClock, list[int | None]]:
    clock = FakeClock()
    changes: list[int | None] = []
    return Admission(limit, on_change=changes.append, clock=clock), clock, changes


def admitted_at_most(admission: Admission) -> int:
    """How many invocations the worker holds before it refuses the next one."""
    held = 0
    while admission.admits(held):
        held += 1
    return held


def test_a_worker_admits_max_in_flight_and_refuses_the_next() -> None:
    limit, _, changes = admission(256)
    assert admitted_at_most(limit) == 256
    assert (limit.limit, limit.lowered, changes) == (256, False, [])


def test_without_a_limit_nothing_is_refused_and_an_overload_changes_nothing() -> None:
    limit, _, changes = admission(None)
    assert limit.admits(10**6)
    assert not limit.overloaded(CHAMPION, 32)
    assert limit.admits(10**6)
    assert changes == []


def test_a_version_that_sheds_for_its_wait_lowers_the_limit_to_two_of_its_full_batches() -> None:
    limit, _, changes = admission(256)
    assert limit.overloaded(CHAMPION, 32)
    assert (limit.limit, limit.lowered, changes) == (64, True, [64])
    assert not limit.admits(64)
    assert limit.admits(63)


def test_each_version_that_sheds_adds_two_of_its_batches_once() -> None:
    limit, _, changes = admission(256)
    limit.overloaded(CHAMPION, 32)
    assert not limit.overloaded(CHAMPION, 32)  # the same version again: no change
    assert limit.overloaded(CHALLENGER, 8)
    assert (limit.limit, changes) == (80, [64, 80])


def test_the_lowered_limit_never_exceeds_max_in_flight() -> None:
    limit, _, _ = admission(40)
    limit.overloaded(CHAMPION, 32)
    assert (limit.limit, limit.lowered) == (40, False)


def test_a_steady_flood_keeps_the_limit_down_without_rising_and_falling() -> None:
    # A flood: the lowered limit refuses someone every 100 ms for 30 s, and the version sheds
    # for its wait now and then. The limit never goes back up while it lasts.
    limit, clock, changes = admission(256)
    limit.overloaded(CHAMPION, 32)
    for tick in range(300):
        clock.now += 0.1
        assert not limit.admits(64)
        if tick % 50 == 0:
            limit.overloaded(CHAMPION, 32)
    assert (limit.limit, changes) == (64, [64])


def test_the_limit_comes_back_once_the_worker_has_refused_nothing_for_a_while() -> None:
    limit, clock, changes = admission(256)
    limit.overloaded(CHAMPION, 32)
    clock.now += HOLD_SECONDS / 2
    assert not limit.admits(64)  # a refusal: the hold starts again from here
    clock.now += HOLD_SECONDS
    assert not limit.admits(64)  # a refusal within the hold keeps it down
    clock.now += HOLD_SECONDS + 0.001
    assert limit.admits(64)  # quiet for longer than the hold: max_in_flight again
    assert (limit.limit, limit.lowered, changes) == (256, False, [64, 256])
    assert admitted_at_most(limit) == 256


def test_the_first_request_after_the_hold_restores_the_limit_however_few_are_in_flight() -> None:
    # What the gauge shows comes back with the first request after a quiet second, not only
    # when a request meets the lowered limit.
    limit, clock, changes = admission(256)
    limit.overloaded(CHAMPION, 32)
    clock.now += HOLD_SECONDS / 2
    assert limit.admits(3)
    assert limit.lowered
    clock.now += HOLD_SECONDS
    assert limit.admits(3)
    assert (limit.limit, limit.lowered, changes) == (256, False, [64, 256])


def test_a_shed_for_queue_time_alone_also_holds_the_limit_down() -> None:
    limit, clock, _ = admission(256)
    limit.overloaded(CHAMPION, 32)
    clock.now += HOLD_SECONDS * 0.9
    limit.overloaded(CHAMPION, 32)  # the queue sheds again: still overloaded
    clock.now += HOLD_SECONDS * 0.9
    assert not limit.admits(64)


def test_after_an_overload_ends_a_new_one_lowers_the_limit_afresh() -> None:
    limit, clock, changes = admission(256)
    limit.overloaded(CHALLENGER, 32)
    limit.overloaded(CHAMPION, 32)
    clock.now += HOLD_SECONDS + 0.001
    assert limit.admits(128)  # restored, and the versions of that overload forgotten
    assert limit.overloaded(CHAMPION, 32)
    assert (limit.limit, changes) == (64, [64, 128, 256, 64])
