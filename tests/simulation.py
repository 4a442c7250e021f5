"""A simulated notebook session for the ledger: pages, cells, delivery, and the ground truth.

The simulation knows what really happened (every page's visibility in kernel time, pauses,
the end) and what the kernel gets to see (reports arriving live, queued behind busy cells, in
bursts, or not at all). Ground truth is computed from the former only.

Model assumptions, stated so the tests say what "exact" means:
- a page's prompt reports arrive with no delay, and its first report is prompt (it opens while
  the kernel is idle or delivering live), so its clock maps onto kernel time exactly; a page
  opened behind a busy cell is placed by its next ping instead (exact when that one is prompt,
  else within a ping interval), which `tests/test_ledger.py` checks on its own;
- transitions and byes are never lost; a ping may be lost, but never two in a row (a page that is
  silent for longer than that *is* gone: its active time ends at its last report);
- a page that vanishes without a bye is gone from its last report (design §3);
- with the idle rule (`Plan.idle_ms`), a page behaves as js/visibility.js's `Sight`: being shown
  counts as input, and its idle check runs exactly on time. The ground truth applies the rule
  as stated instead: within a shown stretch, a gap of at least `idle_ms` from an input (or from
  being shown) to the next input, the hiding, the page's end or the run's end is idle.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from timeback_nb.ledger import Ledger, PageReport, Window


@dataclass
class Cell:
    start: int
    end: int
    live: bool  # comms over a subshell: messages are handled while it runs


@dataclass
class PagePlan:
    name: str
    clock_offset: float  # kernel ms = page ms + clock_offset
    appear: int
    transitions: list[tuple[int, bool]]  # (kernel ms, visible), first at `appear`
    vanish: int | None  # kernel ms the page goes away
    says_bye: bool
    pings_when_hidden: bool
    lost_pings: set[int] = field(default_factory=set)  # indexes of pings that never arrive
    inputs: list[int] = field(default_factory=list)  # kernel ms of the student's input (idle rule)


@dataclass
class Plan:
    interval_ms: int
    abandon_ms: int
    ping_ms: int
    end: int
    pages: list[PagePlan]
    cells: list[Cell]
    pauses: list[tuple[int, int | None]]  # (pause, resume or None)
    ticks: list[int]  # extra heartbeat wake-ups
    idle_ms: int | None = None  # the idle rule, off when None


def random_plan(rng: random.Random, *, end_max: int = 120_000, idle: bool = False) -> Plan:
    interval = rng.choice([1_000, 2_500, 5_000, 15_000])
    abandon = interval * rng.choice([1, 2, 3, 6])
    end = rng.randrange(1, end_max)
    cells: list[Cell] = []
    t = rng.randrange(0, 3_000)
    while t < end + 5_000 and rng.random() < 0.85:
        length = rng.choice([5, 300, 2_000, 8_000, 20_000])
        cells.append(Cell(t, t + length, rng.random() < 0.5))
        t += length + rng.choice([1, 200, 1_500, 5_000])
    pages = []
    for i in range(rng.randrange(0, 4)):
        appear = rng.randrange(0, max(1, end))
        if _busy_queued(cells, appear):
            appear = next(c.end for c in cells if c.start <= appear < c.end)
        transitions = [(appear, rng.random() < 0.7)]
        t = appear
        while rng.random() < 0.8:
            t += rng.choice([1, 50, 700, 3_000, 12_000, 40_000])
            transitions.append((t, not transitions[-1][1]))
        vanish = t + rng.randrange(1, 20_000) if rng.random() < 0.5 else None
        inputs, t = [], appear
        while idle and rng.random() < 0.9:
            t += rng.choice([1, 50, 900, 2_000, 4_000, 9_000, 30_000])
            inputs.append(t)
        pages.append(
            PagePlan(
                name=f"page-{i}",
                clock_offset=rng.uniform(-50_000, 50_000),
                appear=appear,
                transitions=transitions,
                vanish=vanish,
                says_bye=rng.random() < 0.5,
                pings_when_hidden=rng.random() < 0.5,
                lost_pings={k for k in range(0, 400, 2) if rng.random() < 0.3},
                inputs=inputs,
            )
        )
    pauses = []
    t = rng.randrange(0, end + 1)
    while t < end and rng.random() < 0.5:
        resume = t + rng.choice([1, 500, 3_000, 30_000, 200_000])
        pauses.append((t, resume if resume < end and rng.random() < 0.8 else None))
        if pauses[-1][1] is None:
            break
        t = resume + rng.randrange(1, 20_000)
    ticks = sorted(rng.randrange(0, end + 30_000) for _ in range(rng.randrange(0, 20)))
    idle_ms = rng.choice([1_000, 3_000, 10_000]) if idle else None
    return Plan(interval, abandon, 2_000, end, pages, cells, pauses, ticks, idle_ms)


def _busy_queued(cells: list[Cell], t: int) -> bool:
    return any(c.start <= t < c.end and not c.live for c in cells)


@dataclass
class Outcome:
    windows: list[Window]
    ledger: Ledger
    truth_active: int
    abandoned_stretches: list[tuple[int, int]]


Send = tuple[int, str, bool, int, "int | None"]  # (kernel ms sent, kind, visible, event ms, last input ms)


def _page_reports(page: PagePlan, ping_ms: int, horizon: int, idle_ms: int | None = None) -> list[Send]:
    """What the page sends, as js/widget.js with its `Sight` does."""
    stop = page.vanish if page.vanish is not None else horizon
    timeline = [(t, 0, "transition", v) for t, v in page.transitions]
    timeline += [(t, 1, "input", True) for t in page.inputs]
    timeline += [(t, 2, "ping", False) for t in range(page.appear + ping_ms, stop, ping_ms)]
    timeline.append((stop, 3, "stop", False))
    timeline.sort(key=lambda e: (e[0], e[1]))
    sends: list[Send] = []
    shown, idle, last, ping_index = False, False, page.appear, 0

    def said(sent: int, kind: str, visible: bool, t: int | None = None) -> None:
        sends.append((sent, kind, visible, sent if t is None else t, last if idle_ms else None))

    for t, _, kind, visible in timeline:
        due = last + idle_ms if idle_ms and shown and not idle else math.inf
        if due <= t and due < stop:  # the idle check comes first at its instant
            idle = True
            said(int(due), "idle", False)
        if kind == "stop":
            break
        if kind == "transition":
            if visible and not shown:
                last = t
            shown, idle = visible, False
            said(t, "transition", visible)
        elif kind == "input":
            last = t
            if idle:
                idle = False
                said(t, "transition", True)
        elif shown and not idle or page.pings_when_hidden:
            if ping_index not in page.lost_pings:
                said(t, "ping", shown and not idle)
            ping_index += 1
    if page.vanish is not None and page.says_bye:
        said(page.vanish, "bye", False)
    return sends


def _visible_at(transitions: list[tuple[int, bool]], t: int) -> bool:
    state = False
    for when, visible in transitions:
        if when > t:
            break
        state = visible
    return state


def _arrival(cells: list[Cell], sent: int) -> int:
    for cell in cells:
        if cell.start <= sent < cell.end and not cell.live:
            return cell.end  # queued until the cell ends (handled after post_run_cell)
    return sent


def _idle_stretches(page: PagePlan, start: int, stop: int, idle_ms: int) -> list[tuple[int, int]]:
    """The rule as stated, over one shown stretch [start, stop): from an input (or being shown),
    no input for idle_ms or more before the next input or the stretch's end is idle."""
    inputs = [start, *(t for t in page.inputs if start < t < stop), stop]
    return [(a, b) for a, b in zip(inputs, inputs[1:]) if b - a >= idle_ms]


def ground_truth(plan: Plan, sends_by_page: dict[str, list[Send]]) -> tuple[list[tuple[int, int]], int]:
    """Active spans in kernel time over [0, end), and their total."""
    spans: list[tuple[int, int]] = []
    for page in plan.pages:
        sends = sends_by_page[page.name]
        if not sends:
            continue
        if page.vanish is not None and page.says_bye:
            gone = page.vanish
        elif page.vanish is not None:
            gone = max(t for _, _, _, t, _ in sends)  # gone from its last report
        else:
            gone = plan.end
        for i, (t, visible) in enumerate(page.transitions):
            if not visible:
                continue
            stop = page.transitions[i + 1][0] if i + 1 < len(page.transitions) else plan.end
            stop = min(stop, gone, plan.end)
            if stop <= t:
                continue
            pieces = [(t, stop)]
            for a, b in _idle_stretches(page, t, stop, plan.idle_ms) if plan.idle_ms else []:
                pieces = [q for x, y in pieces for q in ((x, min(y, a)), (max(x, b), y)) if q[1] > q[0]]
            spans.extend(pieces)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    active: list[tuple[int, int]] = []
    for s, e in merged:
        pieces = [(s, e)]
        for p, r in plan.pauses:
            r = plan.end if r is None else r
            pieces = [q for a, b in pieces for q in ((a, min(b, p)), (max(a, r), b)) if q[1] > q[0]]
        active.extend(pieces)
    return active, sum(e - s for s, e in active)


def expected_abandonment(plan: Plan, active: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Abandoned stretches [X, R): after abandon_ms without activity, until activity or resume."""
    stretches = []
    resumes = sorted(r for _, r in plan.pauses if r is not None)
    run_start = 0
    bounds = active + [(plan.end, plan.end)]
    i = 0
    while True:
        next_active = bounds[i][0] if i < len(bounds) else plan.end
        if next_active - run_start >= plan.abandon_ms and run_start + plan.abandon_ms < plan.end:
            x = run_start + plan.abandon_ms
            revive = min([next_active] + [r for r in resumes if r >= x])
            revive = min(revive, plan.end)
            stretches.append((x, revive))
            if revive < next_active:  # resumed, but inactive again from there
                run_start = revive
                continue
        if i >= len(bounds) or bounds[i][0] >= plan.end:
            break
        run_start = bounds[i][1]
        i += 1
    return stretches


def run(plan: Plan, *, settle_ms: int = 1_000) -> Outcome:
    ledger = Ledger(
        start=0, interval_ms=plan.interval_ms, abandon_ms=plan.abandon_ms, ping_ms=plan.ping_ms, settle_ms=settle_ms
    )
    horizon = plan.end + 60_000
    events: list[tuple[int, int, str, object]] = []  # (kernel ms, order, kind, payload)
    order = 0

    def push(t: int, kind: str, payload: object = None) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, payload))

    for cell in plan.cells:  # pushed first: post_run_cell fires before the queued reports
        push(cell.start, "cell_start")
        push(cell.end, "cell_end")
    sends_by_page = {}
    for page in plan.pages:
        sends = _page_reports(page, plan.ping_ms, horizon, plan.idle_ms)
        sends_by_page[page.name] = sends
        last_arrival = 0
        for seq, (sent, kind, visible, _, last_input) in enumerate(sends):
            arrival = max(_arrival(plan.cells, sent), last_arrival)
            last_arrival = arrival
            page_input = None if last_input is None else last_input - page.clock_offset
            report = PageReport(page.name, seq, kind, visible, sent - page.clock_offset, page_input)
            push(arrival, "report", report)
    for p, r in plan.pauses:
        push(p, "pause")
        if r is not None:
            push(r, "resume")
    push(plan.end, "end")
    for t in plan.ticks:
        push(t, "tick")
    t = 0
    while t < horizon:  # the heartbeat thread's own wake-ups, at least once a second
        push(t, "tick")
        t += 1_000

    windows: list[Window] = []
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "report":
            ledger.report(payload, now)  # type: ignore[arg-type]
        elif kind == "cell_start":
            ledger.cell_started(now)
        elif kind == "cell_end":
            ledger.cell_finished(now)
        elif kind == "pause" and ledger.end_at is None:
            ledger.pause(now)
        elif kind == "resume" and ledger.end_at is None:
            ledger.resume(now)
        elif kind == "end":
            ledger.end(now)
        windows.extend(ledger.advance(now))
        if ledger.finished:
            break
    active, truth = ground_truth(plan, sends_by_page)
    return Outcome(windows, ledger, truth, expected_abandonment(plan, active))
