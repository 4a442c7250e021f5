"""The Activity: lifecycle, live traits, the heartbeat thread (fake and real clocks)."""

from __future__ import annotations

import threading
import time

import pytest

from timeback_nb.activity import Activity
from timeback_nb.clock import SystemClock
from timeback_nb.errors import StateError, TimebackError, ValidationError
from timeback_nb.records import ActivityRef, Completion, MemorySink, TimeWindow
from timeback_nb.validation import iso_to_epoch_ms

from tests.fakes import FakeClock, Page, PingingPage

REF = ActivityRef("week-3", "Week 3: Linear functions", {"subject": "Math", "grade": 8})
RUN_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def make(clock=None, **options) -> tuple[Activity, MemorySink]:
    sink = MemorySink()
    options.setdefault("heartbeat_interval", 1.0)
    options.setdefault("abandon_after", 5.0)
    activity = Activity(REF, run_id=RUN_ID, sink=sink, clock=clock or FakeClock(), **options)
    return activity, sink


def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def durations(windows: list[TimeWindow]) -> list[int]:
    return [iso_to_epoch_ms(w.ended_at) - iso_to_epoch_ms(w.started_at) for w in windows]


def assert_contiguous(windows: list[TimeWindow]) -> None:
    for before, after in zip(windows, windows[1:]):
        assert before.ended_at == after.started_at
    for window, duration in zip(windows, durations(windows)):
        assert window.elapsed_ms + window.paused_ms == duration > 0


def test_windows_close_on_the_grid_and_end_hands_on_the_last_one_then_the_completion() -> None:
    clock = FakeClock()
    activity, sink = make(clock)
    page = Page(activity, clock)
    page.send("transition", True)
    for _ in range(25):  # 2.5 s visible, pinging every 100 ms
        clock.advance(100)
        page.send("ping", True)
    activity._tick()
    assert [w.elapsed_ms for w in sink.windows] == [1000, 1000]
    clock.advance(300)
    activity.end({"xpEarned": 3, "totalQuestions": 2, "correctQuestions": 2})
    # The visible page is known only up to its last report: the final window waits for the next.
    assert len(sink.windows) == 2 and not sink.completions and activity.state == "ended"
    clock.advance(40)
    page.send("ping", True)
    activity._tick()
    windows = sink.windows
    assert [w.elapsed_ms for w in windows] == [1000, 1000, 800]
    assert isinstance(sink.records[-1], Completion)
    assert sink.records[-1].ended_at == windows[-1].ended_at
    assert_contiguous(windows)
    assert activity.state == "ended" and activity.finished
    assert activity.elapsed_ms == sum(w.elapsed_ms for w in windows) == 2800


def test_the_report_that_completes_a_window_hands_it_on_itself_and_wakes_the_heartbeat_only_for_news() -> None:
    clock = FakeClock()
    activity, sink = make(clock)
    wakes = []

    def heartbeat_woken() -> None:  # stands in for the heartbeat thread: ticks when woken
        wakes.append(clock.monotonic_ms())
        activity._tick()

    activity._heartbeat.wake = heartbeat_woken
    page = Page(activity, clock)
    page.send("transition", True)
    assert len(wakes) == 1, "hidden -> active is news for the traits"
    clock.advance(600)
    page.send("ping", True)
    assert not sink.records and len(wakes) == 1, "a ping inside the window changes nothing to show"
    clock.advance(440)  # just past the boundary, as the kernel's nextPingMs asks
    page.send("ping", True)
    assert [w.elapsed_ms for w in sink.windows] == [1000], "closed by the report, no tick needed"
    assert len(wakes) == 1
    clock.advance(100)
    page.send("transition", False)
    assert len(wakes) == 2 and activity.state == "hidden"
    clock.advance(100)
    page.send("ping", False)
    assert len(wakes) == 2
    clock.advance(100)
    page.send("transition", True)
    clock.advance(300)
    activity.end({"xpEarned": 1})
    assert not sink.completions, "a visible page is known only up to its last report"
    clock.advance(40)
    page.send("ping", True)
    assert sink.completions and activity.finished, "the report that lets the completion go wakes the heartbeat"


def test_heartbeat_thread_with_a_fake_clock_loses_and_doubles_nothing_and_stops_at_end() -> None:
    clock = FakeClock()
    activity, sink = make(clock)
    activity.begin()
    page = Page(activity, clock)
    page.send("transition", True)
    for step in range(1, 41):
        clock.advance(100)
        page.send("ping", True)  # wakes the thread, which closes what it can
        if step % 10 == 0:
            wait_for(lambda: len(sink.windows) == step // 10)
    clock.advance(50)
    activity.end()
    page.send("ping", True)  # the report that lets the final window close
    wait_for(lambda: activity.finished)
    activity._heartbeat.stop()
    assert not activity._heartbeat.running, "end() joins the heartbeat thread"
    windows = sink.windows
    assert [w.elapsed_ms for w in windows] == [1000, 1000, 1000, 1000, 50]
    assert len({w.started_at for w in windows}) == len(windows)
    assert_contiguous(windows)
    # Nothing after end(): more reports, more time, more wake-ups.
    for _ in range(20):
        clock.advance(500)
        page.send("ping", True)
    activity._heartbeat.wake()
    time.sleep(0.05)
    assert sink.windows == windows and not sink.completions


def test_real_clock_windows_are_handed_on_within_100_ms_of_their_end() -> None:
    handed: list[tuple[TimeWindow, int]] = []

    class TimedSink(MemorySink):
        def emit(self, record) -> None:
            handed.append((record, SystemClock().wall_ms()))
            super().emit(record)

    sink = TimedSink()
    activity = Activity(REF, run_id=RUN_ID, sink=sink, heartbeat_interval=0.25, abandon_after=5.0, ping_interval=0.1)
    activity.begin()
    tab = PingingPage(activity).start()  # pings as the page does: when the kernel asks
    time.sleep(1.4)
    activity.end()
    wait_for(lambda: activity.finished)  # the page's next report closes the final window
    tab.stop()
    windows = sink.windows
    assert len(windows) >= 5
    assert_contiguous(windows)
    for record, wall in handed[:-1]:  # the last one is closed by end() itself
        assert wall - iso_to_epoch_ms(record.ended_at) <= 100, record
    assert sum(w.elapsed_ms for w in windows) == activity.elapsed_ms
    assert sum(w.elapsed_ms for w in windows) >= sum(durations(windows)) - 100  # visible throughout


def test_observers_fire_at_least_once_a_second_while_active() -> None:
    activity = Activity(REF, run_id=RUN_ID, sink=MemorySink(), heartbeat_interval=15.0, abandon_after=60.0)
    seen: list[int] = []
    activity.observe(lambda change: seen.append(change["new"]), names="elapsed_ms")
    activity.begin()
    Page(activity, SystemClock(), clock_offset=0).send("transition", True)
    time.sleep(2.6)
    activity.end()
    assert len(seen) >= 2 and seen == sorted(seen)


def test_pause_closes_the_window_and_counts_paused_time_as_inactive() -> None:
    clock = FakeClock()
    activity, sink = make(clock, heartbeat_interval=10.0, abandon_after=60.0)
    page = Page(activity, clock)
    page.send("transition", True)
    clock.advance(1500)
    page.send("ping", True)
    activity.pause()
    assert activity.is_paused and activity.state == "paused"
    assert [(w.elapsed_ms, w.paused_ms) for w in sink.windows] == [(1500, 0)]
    clock.advance(2000)
    page.send("ping", True)
    activity.resume()
    assert not activity.is_paused and activity.state == "active"
    clock.advance(500)
    page.send("ping", True)
    activity.end()
    assert [(w.elapsed_ms, w.paused_ms) for w in sink.windows] == [(1500, 0), (500, 2000)]


def test_abandonment_stops_heartbeats_and_a_visible_page_starts_a_clean_segment() -> None:
    clock = FakeClock()
    activity, sink = make(clock, heartbeat_interval=1.0, abandon_after=2.0)
    page = Page(activity, clock)
    page.send("transition", True)
    clock.advance(500)
    page.send("transition", False)
    for _ in range(10):
        clock.advance(1000)
        activity._tick()
    assert activity.state == "abandoned"
    before = list(sink.windows)
    assert [w.elapsed_ms for w in before] == [500, 0, 0]
    assert durations(before) == [1000, 1000, 500]  # closed at the instant of abandonment
    clock.advance(5000)
    activity._tick()
    assert sink.windows == before  # nothing reported while abandoned
    page.send("transition", True)
    activity._tick()
    assert activity.state == "active"
    clock.advance(1000)
    page.send("ping", True)
    activity._tick()
    after = sink.windows[len(before):]
    assert [w.elapsed_ms for w in after] == [1000]
    assert after[0].run_id == RUN_ID and iso_to_epoch_ms(after[0].started_at) - iso_to_epoch_ms(before[-1].ended_at) == 13_000


def test_a_wall_clock_jump_changes_no_duration() -> None:
    clock = FakeClock()
    activity, sink = make(clock)
    page = Page(activity, clock)
    page.send("transition", True)
    clock.advance(600)
    clock.jump_wall(3_600_000)
    clock.advance(400)
    page.send("ping", True)
    clock.advance(700)
    clock.jump_wall(-7_200_000)
    clock.advance(300)
    page.send("ping", True)
    activity.end()
    assert durations(sink.windows) == [1000, 1000]
    assert [w.elapsed_ms for w in sink.windows] == [1000, 1000]


@pytest.mark.parametrize("message", [None, "x", {}, {"type": "report"}, {"type": "report", "page": "p", "seq": -1, "kind": "ping", "visible": True, "t": 1},
    {"type": "report", "page": "p", "seq": 1, "kind": "wave", "visible": True, "t": 1},
    {"type": "report", "page": "p", "seq": 1, "kind": "ping", "visible": "yes", "t": 1},
    {"type": "report", "page": "p", "seq": 1, "kind": "ping", "visible": True, "t": float("nan")},
    {"type": "report", "page": "", "seq": 1, "kind": "ping", "visible": True, "t": 1},
    {"type": "report", "page": "p" * 65, "seq": 1, "kind": "ping", "visible": True, "t": 1}])
def test_malformed_page_messages_are_dropped_and_change_nothing(message) -> None:
    clock = FakeClock()
    activity, _ = make(clock)
    assert activity.page_message(message) is None
    assert activity.state == "hidden" and activity._ledger.pages_seen is False


@pytest.mark.bad_input
def test_lifecycle_errors_are_clear_and_leave_the_run_usable() -> None:
    clock = FakeClock()
    activity, sink = make(clock)
    page = Page(activity, clock)
    page.send("transition", True)
    with pytest.raises(ValidationError, match="xpEarned"):
        activity.end({"xpEarned": -1})
    with pytest.raises(ValidationError, match="pctComplete"):
        activity.end({"xpEarned": 1, "pctComplete": 140})
    assert activity.snapshot()["state"] == "active" and not activity.ended
    clock.advance(1000)
    page.send("ping", True)
    activity.pause()
    activity.pause()  # a second pause changes nothing
    activity.resume()
    activity.resume()
    activity.end({"xpEarned": 1})
    for call in (activity.pause, activity.resume, activity.end):
        with pytest.raises(StateError, match="already ended") as error:
            call()
        assert isinstance(error.value, TimebackError)
    assert len(sink.completions) == 1


def test_time_false_sends_only_the_completion() -> None:
    clock = FakeClock()
    activity, sink = make(clock, track_time=False)
    Page(activity, clock).send("transition", True)
    clock.advance(3500)
    activity.end({"xpEarned": 5})
    assert sink.windows == [] and len(sink.completions) == 1


def test_reports_from_many_threads_while_the_heartbeat_runs_are_accounted_once() -> None:
    clock = FakeClock()
    activity, sink = make(clock, heartbeat_interval=1.0, abandon_after=600.0)
    activity.begin()
    pages = [Page(activity, clock, name=f"tab-{i}", clock_offset=i * 1000) for i in range(4)]
    for page in pages:
        page.send("transition", True)
    barrier = threading.Barrier(len(pages))

    def tab(page: Page) -> None:
        barrier.wait()
        for _ in range(200):
            page.send("ping", True)

    threads = [threading.Thread(target=tab, args=(p,)) for p in pages]
    for t in threads:
        t.start()
    for _ in range(50):
        clock.advance(100)
        time.sleep(0.001)
    for t in threads:
        t.join()
    for page in pages:
        page.send("ping", True)
    activity.end()
    windows = sink.windows
    assert_contiguous(windows)
    assert sum(w.elapsed_ms for w in windows) == 5000  # four visible tabs: union, not sum


def test_no_page_within_a_few_seconds_is_said_once_visibly(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    activity, sink = make(clock, no_page_notice_after=5.0, abandon_after=60.0)
    for _ in range(12):
        clock.advance(1000)
        activity._tick()
    warnings = [r for r in caplog.records if "not being counted" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "not being counted" in activity.snapshot()["lastError"]
    assert all(w.elapsed_ms == 0 for w in sink.windows) and len(sink.windows) == 12


def test_a_page_within_the_grace_period_silences_the_notice(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    activity, _ = make(clock, no_page_notice_after=5.0)
    clock.advance(2000)
    Page(activity, clock).send("transition", True)
    clock.advance(4000)
    activity._tick()
    assert not [r for r in caplog.records if "not being counted" in r.getMessage()]


def test_a_tick_computed_before_end_cannot_overwrite_the_ended_state() -> None:
    # Issue 12 §13: the heartbeat thread computes its values under the lock and publishes them
    # after; end() on another thread in between must stay the last word.
    computed, resume = threading.Event(), threading.Event()

    class PreemptedAfterComputing(Activity):
        def set_trait(self, name, value):
            if threading.current_thread().name == "stale-tick" and name == "state":
                computed.set()
                resume.wait(3)
            super().set_trait(name, value)

    clock = FakeClock()
    sink = MemorySink()
    activity = PreemptedAfterComputing(REF, run_id=RUN_ID, sink=sink, clock=clock, heartbeat_interval=1.0, abandon_after=5.0)
    Page(activity, clock).send("transition", True)
    stale = threading.Thread(target=activity._tick, name="stale-tick")
    stale.start()
    assert computed.wait(3)
    activity.end()
    resume.set()
    stale.join(5)
    assert activity.state == "ended"


def test_a_late_report_after_an_abandoned_run_ended_sends_nothing_after_the_completion() -> None:
    # Issue 12 §11: the page came back before end(), but its reports were stuck (a websocket
    # reconnect) and arrive after the completion went out.
    clock = FakeClock()
    activity, sink = make(clock, heartbeat_interval=1.0, abandon_after=2.0)
    page = Page(activity, clock)
    page.send("transition", False)
    clock.advance(2500)
    activity._tick()
    assert activity.state == "abandoned"
    clock.advance(500)
    back_at = clock.monotonic_ms() + page.offset  # page time of the return the kernel will hear late
    clock.advance(1000)
    activity.end({"xpEarned": 2})
    assert isinstance(sink.records[-1], Completion) and activity.finished
    sent = list(sink.records)
    clock.advance(3000)
    page.seq += 1
    activity.page_message({"type": "report", "page": page.name, "seq": page.seq, "kind": "transition", "visible": True, "t": back_at})
    for kind in ("ping", "ping"):
        clock.advance(500)
        page.send(kind, True)
        activity._tick()
    assert sink.records == sent
    assert activity.state == "ended"
