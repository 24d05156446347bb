"""The one backoff: ceilings double from first up to cap; jitter draws below the ceiling."""

from __future__ import annotations

import pytest

from imgpipe.common.backoff import Backoff


def test_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(first=0.5, cap=5.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_long_run_of_failures_stays_at_the_cap() -> None:
    assert Backoff(first=2.0, cap=60.0).ceiling(10_000) == 60.0


def test_the_cap_wins_over_a_larger_first_wait() -> None:
    assert Backoff(first=10.0, cap=3.0).ceiling(1) == 3.0


@pytest.mark.parametrize(("jitter", "low"), [(1.0, 0.0), (0.5, 2.0), (0.8, 0.8)])
def test_jitter_is_the_share_of_the_ceiling_drawn_at_random(jitter: float, low: float) -> None:
    backoff = Backoff(first=4.0, cap=4.0, jitter=jitter)
    delays = [backoff.delay(1) for _ in range(500)]
    assert all(low <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("first", "cap", "jitter"), [(1.0, -2.0, 0.5), (-1.0, 1.0, 0.5), (1.0, 2.0, 1.5)]
)
def test_nonsense_is_refused(first: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(first=first, cap=cap, jitter=jitter)
