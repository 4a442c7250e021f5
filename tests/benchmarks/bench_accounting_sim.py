"""Accounting, simulated: random schedules from `tests/simulation.py` (several pages with
their own clocks, busy cells with live or queued delivery, lost pings, pauses, abandonment)
run through the real `Ledger`. Σ active of the closed windows must equal the ground truth to
the millisecond, and every window invariant of design §3 must hold.
"""

from __future__ import annotations

import random
import time

from tests.simulation import random_plan, run as simulate
from tests.test_ledger_properties import check_invariants

from .results import Bar, Row

NAME = "accounting_sim"
BASE_SEED = 20_260_101  # fixed: a rerun replays the very same schedules
LONG_EVERY = 10  # every 10th schedule is a long one (up to 25 min) with abandonment


def one_block(first_seed: int, count: int) -> tuple[int, int, float]:
    """(Σ |active error| ms, schedules with an invariant violation, schedules/s) for one block."""
    error_ms = violations = 0
    started = time.perf_counter()
    for seed in range(first_seed, first_seed + count):
        rng = random.Random(seed)
        if seed % LONG_EVERY == 0:
            plan = random_plan(rng, end_max=1_500_000)
            plan.abandon_ms = plan.interval_ms * 2
        else:
            plan = random_plan(rng)
        outcome = simulate(plan)
        error_ms += abs(sum(w.active_ms for w in outcome.windows) - outcome.truth_active)
        try:
            check_invariants(plan, outcome)
        except AssertionError:
            violations += 1
    return error_ms, violations, count / (time.perf_counter() - started)


def run(quick: bool) -> list[Row]:
    blocks, per_block = (2, 40) if quick else (5, 400)
    errors, violations, rates = [], [], []
    for b in range(blocks):
        e, v, rate = one_block(BASE_SEED + b * per_block, per_block)
        errors.append(e)
        violations.append(v)
        rates.append(rate)
    scope = (f"{per_block} random schedules per run (seeds from {BASE_SEED}, every {LONG_EVERY}th up to 25 min "
             "with abandonment); error = Σ over schedules of |Σ window active − ground truth|")
    return [
        Row(NAME, "active-time error vs truth, ms", errors, Bar("exact", 0, on="max"), "exactly 0",
            baseline_text="scripted ground truth", digits=0, notes=[scope]),
        Row(NAME, "schedules with a broken invariant", violations, Bar("exact", 0, on="max"), "0",
            digits=0),
        Row(NAME, "schedules/s", rates, Bar("report"), "(reported)", digits=0),
    ]
