"""Property tests: random sessions, exact totals, and the window invariants of design §3."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simulation import Plan, random_plan, run


def check_invariants(plan: Plan, outcome) -> None:
    windows = outcome.windows
    assert outcome.ledger.finished, "the run must finish once the kernel is idle after end()"
    for w in windows:
        assert 0 < w.end - w.start <= plan.interval_ms, w
        assert 0 <= w.active_ms <= w.end - w.start, w
        assert w.active_ms + w.inactive_ms == w.end - w.start
    # Windows partition the tracked time; the only gaps are the abandoned stretches.
    stretches = outcome.abandoned_stretches
    gaps = []
    for before, after in zip(windows, windows[1:]):
        if after.start != before.end:
            assert after.segment == before.segment + 1, (before, after)
            gaps.append((before.end, after.start))
        elif (before.end, before.end) in stretches:  # abandoned and resumed at the same instant
            assert after.segment == before.segment + 1, (before, after)
        else:
            assert after.segment == before.segment, (before, after)
    if windows:
        assert windows[0].start == 0
        tail_abandoned = [s for s in stretches if s[1] >= plan.end]
        if tail_abandoned:
            assert windows[-1].end == tail_abandoned[0][0]
        else:
            assert windows[-1].end == plan.end
    assert gaps == [s for s in stretches if s[0] < s[1] < plan.end]
    # Nothing is reported inside an abandoned stretch.
    for x, r in stretches:
        assert not any(w.start < r and w.end > x for w in windows), (x, r)
    assert sum(w.active_ms for w in windows) == outcome.truth_active
    assert outcome.ledger.closed_active_ms == outcome.truth_active


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32))
def test_random_sessions_are_accounted_exactly(seed: int) -> None:
    plan = random_plan(random.Random(seed))
    check_invariants(plan, run(plan))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_long_sessions_with_abandonment(seed: int) -> None:
    rng = random.Random(seed)
    plan = random_plan(rng, end_max=1_500_000)
    plan.abandon_ms = plan.interval_ms * 2
    check_invariants(plan, run(plan))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32))
def test_random_sessions_with_the_idle_rule_are_accounted_exactly(seed: int) -> None:
    plan = random_plan(random.Random(seed), idle=True)
    check_invariants(plan, run(plan))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_long_sessions_with_idle_and_abandonment(seed: int) -> None:
    rng = random.Random(seed)
    plan = random_plan(rng, end_max=1_500_000, idle=True)
    plan.abandon_ms = plan.interval_ms * 2
    check_invariants(plan, run(plan))
