"""The ledger's rules, one scenario each (kernel ms; pages with their own clocks)."""

from __future__ import annotations

import pytest

from timeback_nb.errors import ValidationError
from timeback_nb.ledger import Ledger, PageReport, parse_page_report


class Tab:
    def __init__(self, ledger: Ledger, name: str, offset: float = 5_000.0) -> None:
        self.ledger, self.name, self.offset, self.seq = ledger, name, offset, 0

    def send(self, kind: str, visible: bool, sent: int, arrival: int | None = None, last_input: int | None = None) -> None:
        """`last_input` (kernel ms): the page's last input, sent with the idle rule on."""
        self.seq += 1
        page_input = None if last_input is None else last_input - self.offset
        report = PageReport(self.name, self.seq, kind, visible, sent - self.offset, page_input)
        self.ledger.report(report, sent if arrival is None else arrival)


def test_two_tabs_count_as_their_union_not_their_sum() -> None:
    ledger = Ledger(start=0, interval_ms=10_000)
    a, b = Tab(ledger, "a", 1_000), Tab(ledger, "b", -70_000)
    a.send("transition", True, 0)
    b.send("transition", True, 2_000)
    a.send("transition", False, 6_000)
    b.send("ping", True, 10_050)
    a.send("ping", False, 10_060)
    [window] = ledger.advance(10_100)
    assert window.active_ms == 10_000


def test_reports_queued_behind_a_busy_cell_are_held_then_accounted_from_page_time() -> None:
    ledger = Ledger(start=0, interval_ms=5_000, settle_ms=1_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 100)
    ledger.cell_started(1_000)
    # During the cell (comms not on a subshell) nothing arrives; the windows are held.
    assert ledger.advance(5_000) == [] and ledger.advance(12_000) == []
    ledger.cell_finished(13_000)
    for sent, kind, visible in ((2_000, "ping", True), (3_000, "transition", False), (7_500, "transition", True), (9_000, "ping", True), (11_000, "ping", True)):
        tab.send(kind, visible, sent, arrival=13_000)  # all arrive in a burst after the cell
    tab.send("ping", True, 15_001)
    windows = ledger.advance(15_001)
    assert [(w.start, w.end, w.active_ms) for w in windows] == [(0, 5_000, 2_900), (5_000, 10_000, 2_500), (10_000, 15_000, 5_000)]


def test_messages_live_during_a_cell_close_windows_on_time() -> None:
    ledger = Ledger(start=0, interval_ms=5_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0)
    ledger.cell_started(1_000)
    tab.send("ping", True, 5_020)  # handled on a subshell while the cell runs
    assert [w.active_ms for w in ledger.advance(5_020)] == [5_000]


def test_a_silent_page_is_gone_from_its_last_report_only_after_a_second_of_idle_kernel() -> None:
    ledger = Ledger(start=0, interval_ms=5_000, ping_ms=1_000, settle_ms=1_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0)
    tab.send("ping", True, 2_000)  # then the tab crashes
    ledger.cell_started(2_500)
    assert ledger.advance(20_000) == []  # busy: a silent page might just be queued
    ledger.cell_finished(20_000)
    assert ledger.advance(20_900) == []  # idle, but not for a second yet
    windows = ledger.advance(21_001)
    assert [w.active_ms for w in windows] == [2_000, 0, 0, 0]
    assert ledger.state(21_001) == "hidden"


def test_a_bye_ends_the_page_at_once_and_a_reload_is_a_new_page() -> None:
    ledger = Ledger(start=0, interval_ms=10_000)
    old, new = Tab(ledger, "old"), Tab(ledger, "new", -1_000)
    old.send("transition", True, 0)
    old.send("bye", False, 4_000)
    new.send("transition", True, 5_500)
    new.send("ping", True, 10_040)
    [window] = ledger.advance(10_040)
    assert window.active_ms == 4_000 + 4_500


def test_no_page_ever_means_every_window_is_inactive() -> None:
    ledger = Ledger(start=0, interval_ms=1_000, abandon_ms=600_000)
    windows = ledger.advance(3_000)
    assert [(w.active_ms, w.inactive_ms) for w in windows] == [(0, 1_000)] * 3
    assert not ledger.pages_seen


def test_a_duplicate_report_is_ignored() -> None:
    ledger = Ledger(start=0, interval_ms=1_000)
    report = PageReport("a", 1, "transition", True, 0.0)
    assert ledger.report(report, 0) is True
    assert ledger.report(report, 10) is False


def test_resume_after_abandonment_while_paused_starts_a_new_segment_at_the_resume() -> None:
    ledger = Ledger(start=0, interval_ms=1_000, abandon_ms=2_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0)
    ledger.pause(500)
    for t in range(1_000, 6_001, 1_000):
        tab.send("ping", True, t)
        ledger.advance(t)
    assert ledger.abandoned_at == 2_500 and ledger.state(6_000) == "paused"
    ledger.resume(6_200)
    tab.send("ping", True, 7_250)
    windows = ledger.advance(7_250)
    assert [(w.segment, w.start, w.end, w.active_ms) for w in windows] == [(1, 6_200, 7_200, 1_000)]


def test_an_end_with_no_page_ever_settles_at_once_even_inside_a_busy_cell() -> None:
    ledger = Ledger(start=0, interval_ms=1_000)
    ledger.cell_started(100)
    assert ledger.advance(2_500) == []  # a page's hello could still be queued behind the cell
    ledger.end(2_500)
    windows = ledger.advance(2_500)
    assert [(w.start, w.end, w.active_ms) for w in windows] == [(0, 1_000, 0), (1_000, 2_000, 0), (2_000, 2_500, 0)]
    assert ledger.finished


def test_closed_time_is_forgotten_so_a_long_run_keeps_a_small_history() -> None:
    ledger = Ledger(start=0, interval_ms=1_000, abandon_ms=600_000)
    tab = Tab(ledger, "a")
    for second in range(3_600):  # an hour, visibility flipping every second
        tab.send("transition", second % 2 == 0, second * 1_000)
        ledger.advance(second * 1_000)
    tab.send("ping", False, 3_600_050)
    ledger.advance(3_600_050)
    assert ledger.closed_active_ms == 1_800_000
    [presence] = ledger._pages["a"]
    assert len(presence.changes) <= 2


def test_a_page_whose_first_reports_wait_behind_a_busy_cell_is_placed_by_its_first_prompt_one() -> None:
    # Run All: the page opens at 200 ms, a 40 s cell starts at 300 ms (comms not on a subshell).
    # The first report's delay (40 s) is no measure of the page's clock; the windows wait for a
    # report that arrives while the kernel is settled, then close from page time.
    ledger = Ledger(start=0, interval_ms=15_000, settle_ms=1_000)
    tab = Tab(ledger, "a")
    ledger.cell_started(100)  # start() itself
    ledger.cell_finished(150)
    ledger.cell_started(300)
    ledger.cell_finished(40_300)
    closed = []
    queued = [(200, "transition")] + [(450 + 2_000 * i, "ping") for i in range(20)]
    for i, (sent, kind) in enumerate(queued):  # the burst, each report handled on its own
        tab.send(kind, True, sent, arrival=40_310 + i)
        closed += ledger.advance(40_310 + i)
    tab.send("ping", True, 41_000)  # still settling: not yet a measure either
    closed += ledger.advance(41_500)
    assert closed == []
    for sent in range(42_000, 60_100, 2_000):
        tab.send("ping", True, sent)
        closed += ledger.advance(sent)
    assert [(w.start, w.end, w.active_ms) for w in closed] == [
        (0, 15_000, 14_800), (15_000, 30_000, 15_000), (30_000, 45_000, 15_000), (45_000, 60_000, 15_000)
    ]


def test_without_a_prompt_report_such_a_page_is_placed_within_a_ping_interval() -> None:
    # The same, but Run All goes on: the next cell starts at once, so no report is prompt. After
    # ping + settle ms the page is placed by its freshest report's delay (here 1,880 ms).
    ledger = Ledger(start=0, interval_ms=15_000, settle_ms=1_000)
    tab = Tab(ledger, "a")
    ledger.cell_started(300)
    ledger.cell_finished(40_300)
    queued = [(200, "transition")] + [(450 + 2_000 * i, "ping") for i in range(20)]
    for i, (sent, kind) in enumerate(queued):
        tab.send(kind, True, sent, arrival=40_310 + i)
    ledger.cell_started(40_340)  # the next cell, queued behind those reports
    assert ledger.advance(43_000) == [], "held for ping + settle ms"
    windows = ledger.advance(43_400)  # then closed from the freshest report's delay
    assert [(w.start, w.end, w.active_ms) for w in windows] == [(0, 15_000, 12_920), (15_000, 30_000, 15_000)]
    for sent in range(40_450, 60_000, 2_000):  # queued behind the cell that runs on to 70 s
        tab.send("ping", True, sent, arrival=70_000)
    ledger.cell_finished(70_000)
    tab.send("ping", True, 71_100)
    windows += ledger.advance(71_100)
    active = sum(w.active_ms for w in windows if w.end <= 60_000)
    assert active == 60_000 - 200 - 1_880, "short by that delay, less than a ping interval"


# --- the idle rule --------------------------------------------------------------------------------


def test_an_idle_page_stops_counting_from_its_last_input_retroactively() -> None:
    ledger = Ledger(start=0, interval_ms=5_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0, last_input=0)
    tab.send("ping", True, 2_000, last_input=1_500)
    tab.send("ping", True, 4_000, last_input=3_200)
    tab.send("ping", True, 6_000, last_input=3_200)  # reading, no input since 3.2 s
    assert ledger.advance(6_000) == []  # held: 3.2 s to 5 s may still turn out idle
    assert ledger.state(6_000) == "active"
    tab.send("idle", False, 8_200, last_input=3_200)  # idle_after = 5 s
    assert ledger.state(8_200) == "idle"
    [window] = ledger.advance(8_200)
    assert (window.start, window.end, window.active_ms) == (0, 5_000, 3_200)
    tab.send("transition", True, 11_000, last_input=11_000)  # input: counting again
    tab.send("ping", True, 11_500, last_input=11_400)
    [window] = ledger.advance(11_500)
    assert (window.start, window.end, window.active_ms) == (5_000, 10_000, 0)
    assert ledger.window_active_ms(11_500) == 500 and ledger.state(11_500) == "active"


def test_with_the_idle_rule_a_window_closes_at_the_first_report_after_an_input_past_its_end() -> None:
    ledger = Ledger(start=0, interval_ms=5_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0, last_input=0)
    tab.send("ping", True, 5_040, last_input=4_000)
    assert ledger.advance(5_040) == []
    tab.send("ping", True, 7_000, last_input=6_100)
    [window] = ledger.advance(7_000)
    assert window.active_ms == 5_000


def test_the_end_settles_the_stretch_after_the_last_input_and_a_late_idle_report_changes_nothing() -> None:
    ledger = Ledger(start=0, interval_ms=10_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0, last_input=0)
    tab.send("ping", True, 2_000, last_input=1_000)
    ledger.end(3_000)  # the student ran the cell with end(): no waiting for idle_after
    assert ledger.advance(3_000) == []
    tab.send("ping", True, 3_100, last_input=1_000)
    [window] = ledger.advance(3_100)
    assert (window.end, window.active_ms) == (3_000, 3_000) and ledger.finished


def test_an_idle_report_that_arrives_before_the_report_after_the_end_still_respects_the_end() -> None:
    ledger = Ledger(start=0, interval_ms=10_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0, last_input=0)
    tab.send("ping", True, 2_000, last_input=1_000)
    ledger.end(3_000)
    tab.send("idle", False, 3_500, last_input=1_000)  # found idle after the end: the end came first
    [window] = ledger.advance(3_500)
    assert window.active_ms == 3_000
    ledger2 = Ledger(start=0, interval_ms=10_000)
    tab2 = Tab(ledger2, "a")
    tab2.send("transition", True, 0, last_input=0)
    tab2.send("ping", True, 2_000, last_input=1_000)
    tab2.send("idle", False, 2_900, last_input=1_000, arrival=3_200)  # found idle before the end
    ledger2.end(3_000)
    [window] = ledger2.advance(3_200)
    assert window.active_ms == 1_000


def test_idle_then_hidden_runs_towards_abandonment_from_the_last_input() -> None:
    ledger = Ledger(start=0, interval_ms=1_000, abandon_ms=4_000)
    tab = Tab(ledger, "a")
    tab.send("transition", True, 0, last_input=0)
    tab.send("ping", True, 1_000, last_input=500)
    tab.send("idle", False, 2_500, last_input=500)  # idle_after = 2 s
    tab.send("transition", False, 3_000, last_input=500)
    assert ledger.state(3_000) == "hidden"
    windows = ledger.advance(3_000)
    for t in range(4_000, 6_001, 1_000):
        tab.send("ping", False, t, last_input=500)
        windows += ledger.advance(t)
    assert ledger.abandoned_at == 4_500 and ledger.state(6_000) == "abandoned"
    assert [w.end for w in windows][-1] == 4_500
    assert sum(w.active_ms for w in windows) == 500


def test_page_reports_with_the_idle_rule_are_validated() -> None:
    base = {"type": "report", "page": "p", "seq": 1, "kind": "ping", "visible": True, "t": 100.0}
    assert parse_page_report({**base, "input": 40}).input == 40.0
    assert parse_page_report(base).input is None
    assert parse_page_report({**base, "kind": "idle", "visible": False, "input": 5}).kind == "idle"
    for bad, field in (
        ({"input": 101}, "input"), ({"input": -1}, "input"), ({"input": "40"}, "input"), ({"input": True}, "input"),
        ({"kind": "idle", "visible": False}, "input"), ({"kind": "idle", "visible": True, "input": 5}, "visible"),
    ):
        with pytest.raises(ValidationError, match=field):
            parse_page_report({**base, **bad})


def test_pages_showing_counts_present_pages_that_show_the_notebook() -> None:
    ledger = Ledger(start=0, interval_ms=10_000, ping_ms=1_000, settle_ms=1_000)
    assert ledger.pages_showing == 0
    a, b, c = Tab(ledger, "a"), Tab(ledger, "b"), Tab(ledger, "c")
    a.send("transition", True, 0)
    b.send("transition", True, 100)
    c.send("transition", False, 200)  # open, but not showing it
    assert ledger.pages_showing == 2
    b.send("transition", False, 1_000)
    assert ledger.pages_showing == 1
    b.send("transition", True, 1_500)
    b.send("bye", False, 2_000)  # closed
    assert ledger.pages_showing == 1
    a.send("ping", True, 2_500)
    ledger.advance(8_000)  # kernel idle: a has been silent long enough to be gone
    assert ledger.pages_showing == 0


def test_pages_that_went_away_are_forgotten_so_thousands_of_reloads_cost_nothing_more() -> None:
    # Issue 12 §12: each reload is a new page id; once no open window needs a gone page, the
    # ledger keeps nothing of it, so a report costs the same after 2,000 reloads as after one.
    ledger = Ledger(start=0, interval_ms=1_000, abandon_ms=60_000)
    now, closed = 0, []
    for n in range(2_000):
        tab = Tab(ledger, f"load-{n}", offset=-n * 7.0)
        tab.send("transition", True, now + 10)
        tab.send("ping", True, now + 600)
        tab.send("bye", False, now + 900)
        now += 1_000
        closed += ledger.advance(now + 50)
    assert [w.active_ms for w in closed] == [890] * 2_000
    assert sum(len(presences) for presences in ledger._pages.values()) <= 1
    # A replayed report of a forgotten page is still a duplicate, not a page coming back.
    ledger.report(PageReport("load-1990", 2, "ping", True, 1_000.0), now + 100)
    assert ledger.state(now + 100) == "hidden"
