"""The ledger's rules, one scenario each (kernel ms; pages with their own clocks)."""

from __future__ import annotations

from timeback_nb.ledger import Ledger, PageReport


class Tab:
    def __init__(self, ledger: Ledger, name: str, offset: float = 5_000.0) -> None:
        self.ledger, self.name, self.offset, self.seq = ledger, name, offset, 0

    def send(self, kind: str, visible: bool, sent: int, arrival: int | None = None) -> None:
        self.seq += 1
        report = PageReport(self.name, self.seq, kind, visible, sent - self.offset)
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
