"""The kernel-side Activity: live traits over the ledger, the heartbeat thread, the lifecycle.

Page messages arrive on whichever thread handles the comm (the main shell or a subshell, while a
cell runs) and close the windows they complete; the heartbeat thread closes the rest (a silent
page declared gone, pauses, abandonment, the end) and refreshes the traits; cells call
pause/resume/end. One lock guards the ledger and the hand-off to the sink, so records leave in
order, exactly once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping

from traitlets import Bool, Enum, HasTraits, Int, Unicode, validate

from .clock import Clock, SystemClock, WallAnchor, format_elapsed
from .errors import StateError, ValidationError
from .heartbeat import Heartbeat
from .ledger import Ledger, Window, parse_page_report
from .records import ActivityRef, Completion, Sink, TimeWindow, results_text

log = logging.getLogger(__name__)

STATES = ("active", "idle", "hidden", "paused", "abandoned", "ended")
NO_PAGE_NOTICE = (
    "no browser page has reported yet: time is not being counted as active "
    "(is the notebook open in a browser with the widget displayed?)"
)
END_WAIT_SECONDS = 3.0  # the most end() waits for reports still on their way over a live comm
# Where a mode's events are once end() has handed them on, in the end cell's confirmation line.
WHERE_EVENTS_GO = {"local": "saved on this computer", "outbox": "queued for delivery", "memory": "kept in memory"}


class Activity(HasTraits):
    """One tracked run of a notebook activity. Create it with `timeback_nb.start`."""

    run_id = Unicode(read_only=True, help="The run's UUID, shared by every event of the run.")
    started_at = Unicode(read_only=True, help="ISO-8601 UTC instant the run started.")
    is_paused = Bool(False, read_only=True)
    state = Enum(STATES, default_value="hidden", read_only=True)
    elapsed_ms = Int(0, read_only=True, help="Active ms of the whole run so far.")
    window_elapsed_ms = Int(0, read_only=True, help="Active ms of the open heartbeat window.")
    pending_events = Int(0, read_only=True, help="Events written but not yet delivered.")
    last_error = Unicode("", read_only=True, help="The latest delivery problem, if any.")

    def __init__(
        self,
        ref: ActivityRef,
        *,
        run_id: str,
        sink: Sink,
        heartbeat_interval: float = 15.0,
        abandon_after: float = 600.0,
        idle_after: float | None = None,
        ping_interval: float = 2.0,
        track_time: bool = True,
        mode: str = "memory",
        clock: Clock | None = None,
        on_finish: Callable[["Activity", Completion | None], None] | None = None,
        no_page_notice_after: float | None = None,
    ) -> None:
        super().__init__()
        self.ref = ref
        self.mode = mode
        self.track_time = track_time
        # The idle rule is the page's to apply (it alone sees input); the ledger needs no number.
        self.idle_after_ms = 0 if idle_after is None else round(idle_after * 1000)
        self._sink = sink
        self._clock = clock or SystemClock()
        self._on_finish = on_finish
        self._lock = threading.RLock()
        now = self._clock.monotonic_ms()
        self._anchor = WallAnchor(now, self._clock.wall_ms())
        self._ledger = Ledger(
            start=now,
            interval_ms=round(heartbeat_interval * 1000),
            abandon_ms=round(abandon_after * 1000),
            ping_ms=round(ping_interval * 1000),
        )
        self._completion: Completion | None = None
        self._completion_due = False
        # What to hand on if this process dies now goes to the sink's checkpoint at every
        # heartbeat boundary and at end() (see timeback_nb.recovery).
        self._checkpoint_to = getattr(sink, "checkpoint", None)
        self._interval_s = heartbeat_interval
        self._checkpoint_at = now + self._ledger.interval_ms
        self._checkpoint_empty = False
        self._finished = threading.Event()
        self._subshell_seen = False
        self._rejected_events = 0
        self._no_page_deadline = None if no_page_notice_after is None else now + round(no_page_notice_after * 1000)
        self.notice = ""
        self._shell: Any = None
        self.widget: Any = None  # the TimebackWidget start() displayed, if any
        self.widget_cell: int | None = None  # the execution count of the cell that displayed it
        self._end_note: Any = None  # the end cell's confirmation line (an IPython DisplayHandle)
        self._in_ipython = False  # begun in an IPython shell: end() shows a line in its cell
        self._heartbeat = Heartbeat(self._tick, name=f"timeback-heartbeat-{ref.id}")
        self.set_trait("run_id", run_id)
        self.set_trait("started_at", self._anchor.iso(now))

    @validate("state")
    def _ended_is_final(self, proposal: Any) -> str:
        # A tick computes its values under the lock and publishes them after: one computed
        # before end() may arrive after it, and must not make an ended run look live.
        ledger = getattr(self, "_ledger", None)
        return "ended" if ledger is not None and ledger.end_at is not None else proposal["value"]

    # -- identity ----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def course(self) -> Mapping[str, Any]:
        return self.ref.course

    @property
    def ended(self) -> bool:
        with self._lock:
            return self._ledger.end_at is not None

    @property
    def ended_at(self) -> str | None:
        """ISO-8601 UTC instant of `end()` (or of the kernel's shutdown), None while running."""
        with self._lock:
            end = self._ledger.end_at
        return None if end is None else self._anchor.iso(end)

    @property
    def results(self) -> Mapping[str, Any] | None:
        """The metrics `end(metrics)` recorded (validated), None before or after a plain `end()`."""
        completion = self._completion
        return None if completion is None else completion.metrics

    def summary(self) -> str:
        """One line: active time and what was recorded, e.g. "0:40 active; 12 XP, 8/10 correct"."""
        results = self.results
        what = results_text(results) if results else ("time only, no results" if self.ended else "running")
        return f"{format_elapsed(self.snapshot()['elapsedMs'])} active; {what}"

    @property
    def finished(self) -> bool:
        """Ended, and every record (final windows, completion) has been handed on."""
        return self._finished.is_set()

    # -- lifecycle ---------------------------------------------------------------------------

    def begin(self, shell: Any = None) -> None:
        """Start the heartbeat thread; follow the kernel's cells when running in IPython."""
        if shell is not None and self._shell is None:
            self._shell = shell
            self._in_ipython = True
            shell.events.register("pre_run_cell", self._cell_started)
            shell.events.register("post_run_cell", self._cell_finished)
            if getattr(shell, "execution_count", None) is not None:
                self._cell_started()  # start() itself runs inside a cell
        self._heartbeat.start()

    def pause(self) -> None:
        """Stop counting active time until `resume()`; closes the current window now."""
        with self._lock:
            self._refuse_if_ended("pause")
            changed = self._ledger.pause(self._now())
        if changed:
            self._heartbeat.wake()
            self._tick()

    def resume(self) -> None:
        """Count active time again (and start a clean segment if the run was abandoned)."""
        with self._lock:
            self._refuse_if_ended("resume")
            self._ledger.resume(self._now())
        self._heartbeat.wake()
        self._tick()

    def end(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Close the final window; with `metrics`, then send the completion event.

        Invalid metrics raise before anything changes, so the activity keeps running. The final
        window closes once the pages' reports up to this instant are in. When they arrive live
        (comms on a kernel subshell, JupyterLab's default; known once a report has come in on
        a subshell, i.e. after the page's first ping), `end()` waits for them (at most 3 s),
        so a `timeback_nb.flush()` in the same cell delivers the final window and the
        completion. When they can only arrive after the cell (subshells off: ipykernel 6,
        VS Code, Colab), the final window closes right after this cell; a `flush()` in the
        same cell then reports those records as ``held``. `finished` tells. Either way the
        completion is durable once `end()` returns: if the kernel dies before the final window
        closes, the next process on the store delivers both.
        """
        from .validation import validate_metrics  # config-free rules; imported late for start-up cost

        checked = None if metrics is None else validate_metrics(metrics)
        with self._lock:
            self._refuse_if_ended("end")
            now = self._now()
            self._ledger.end(now)
            if checked is not None:
                self._completion = Completion(self.ref, self.run_id, self._anchor.iso(now), checked)
            self._completion_due = True
            live = self._ledger.live_delivery or self._subshell_seen
            # Durable from here: if the kernel dies before the final window can close, the next
            # process hands on that window (closed at the last facts known) and the completion.
            self._checkpoint(now)
        self._tick()
        if not self.finished and live:
            # Reports still on their way come in on a subshell while this cell runs.
            self._finished.wait(END_WAIT_SECONDS)
        self._show_end_note()

    def held_records(self) -> int:
        """Records not in the store yet: windows that are over but wait for page reports, a
        completion that waits for its final window, and what delivery keeps in memory while
        the store cannot take it."""
        with self._lock:
            held = 0
            if not self.finished:
                now = self._now()
                if self.track_time:
                    ended = self._ledger.end_at is not None
                    held += sum(1 for w in self._ledger.provisional(now) if ended or w.end < now)
                held += int(self._completion_due and self._completion is not None)
        return held + int(getattr(self._sink, "pending", 0))

    def shutdown(self) -> None:
        """The kernel is exiting: account what is known, close the last window, stop."""
        with self._lock:
            now = self._now()
            self._ledger.force_knowledge(now)
            if self._ledger.end_at is None:
                self._ledger.end(now)
                self._completion_due = True
        self._tick()
        self._heartbeat.stop()

    def _refuse_if_ended(self, action: str) -> None:
        if self._ledger.end_at is not None:
            raise StateError(
                f"cannot {action}: activity {self.id!r} already ended at {_clock_time(self.ended_at)} "
                f"({self.summary()}); start a new one with timeback_nb.start()",
                field="state",
            )

    # -- the end cell's confirmation -------------------------------------------------------------

    def end_note(self) -> str:
        """The line the end cell shows: the final active time and what was recorded, and where."""
        where = WHERE_EVENTS_GO.get(self.mode, "queued for Timeback")
        return f"Ended {self.name!r}: {self.summary()} ({where})."

    @property
    def end_note_shown(self) -> bool:
        """Whether end() showed `end_note` in its cell (it does when begun in an IPython shell)."""
        return self._end_note is not None

    def _show_end_note(self) -> None:
        """Show `end_note` in the cell that called end(); `_finish` updates it with the final time."""
        if not self._in_ipython:
            return
        from IPython.display import display

        self._end_note = display({"text/plain": self.end_note()}, raw=True, display_id=True)

    def _update_end_note(self) -> None:
        # The final window may settle after the end cell (reports queued behind it): the line
        # then shows the settled time.
        note = self._end_note
        if note is not None:
            try:
                note.update({"text/plain": self.end_note()}, raw=True)
            except Exception:  # a closed kernel channel at exit; the line is a courtesy
                log.debug("could not update the end cell's line", exc_info=True)

    # -- inputs from the page and the kernel ---------------------------------------------------

    def page_message(self, message: Any) -> dict[str, Any] | None:
        """Feed one page report into the accounting; return the reply for that page.

        A malformed message is dropped (debug log) and None returned.
        """
        try:
            report = parse_page_report(message)
        except ValidationError as error:
            log.debug("dropped a malformed page message: %s", error)
            return None
        if not self._subshell_seen and threading.current_thread() is not threading.main_thread():
            self._subshell_seen = True  # comms on a subshell: reports can arrive while a cell runs
        with self._lock:
            now = self._now()
            self._ledger.report(report, now)
            # Close here what this report completes: the page pings just after each boundary,
            # so this is the heartbeat, without a hop to the heartbeat thread.
            self._close_windows(now)
            reply = self._snapshot(now)
            # The heartbeat thread ticks each second anyway; wake it only when it has something
            # to do now (a changed state to show, a completion to hand on). Waking it for every
            # ping would make it compete with the sender for the GIL while an event goes out.
            wake = self._completion_due or reply["state"] != self.state
            boundary = self._ledger.ms_to_boundary(now)
            ping_ms = self._ledger.ping_ms
            if report.visible and boundary is not None and boundary + 40 < ping_ms:
                # Report again just after the boundary, so the window closes on time.
                ping_ms = max(40, boundary + 40)
            reply["nextPingMs"] = ping_ms
        if wake:
            self._heartbeat.wake()
        return reply

    def _cell_started(self, *_: Any) -> None:
        with self._lock:
            self._ledger.cell_started(self._now())

    def _cell_finished(self, *_: Any) -> None:
        with self._lock:
            self._ledger.cell_finished(self._now())
        self._heartbeat.wake()

    def set_delivery_status(self, status: Mapping[str, Any]) -> None:
        """Called by delivery (any thread) with its counts and latest error."""
        # Counts are missing when the store could not be read: keep the last ones shown.
        self._rejected_events = int(status.get("rejected", self._rejected_events))
        self.set_trait("pending_events", int(status.get("queued", self.pending_events)))
        self.set_trait("last_error", status.get("last_error") or "")

    # -- the heartbeat -----------------------------------------------------------------------

    def _now(self) -> int:
        return self._clock.monotonic_ms()

    def _tick(self) -> float | None:
        """Close what can be closed, hand it on, refresh the traits; seconds until next tick."""
        finished_now = False
        with self._lock:
            now = self._now()
            self._close_windows(now)
            if self._completion_due and (self._ledger.finished or not self.track_time):
                self._completion_due = False
                if self._completion is not None:
                    self._emit(self._completion)
                if self._checkpoint_to is not None:
                    self._checkpoint_to(self.run_id, None, interval_s=self._interval_s)  # all handed on
                finished_now = True
            elif now >= self._checkpoint_at:
                self._checkpoint(now)
            self._say_once_if_no_page(now)
            values = {
                "state": self._ledger.state(now),
                "is_paused": self._ledger.paused,
                "elapsed_ms": self._ledger.elapsed_ms(now),
                "window_elapsed_ms": self._ledger.window_active_ms(now),
            }
            delay = (min(self._ledger.next_wake(now), self._checkpoint_at) - now) / 1000
        for name, value in values.items():
            self.set_trait(name, value)
        if finished_now:
            self._finish()
            return None
        return None if self.finished else delay

    def _checkpoint(self, now: int) -> None:
        """Hand the sink what to deliver if this process dies now (lock held): the windows the
        ledger holds, closed at `now` with each page as last known, and a due completion."""
        self._checkpoint_at = now + self._ledger.interval_ms
        if self._checkpoint_to is None:
            return
        records: list[TimeWindow | Completion] = []
        if self.track_time:
            records += [self._time_window(w) for w in self._ledger.provisional(now)]
        if self._completion_due and self._completion is not None:
            records.append(self._completion)
        if not records and self._checkpoint_empty:
            return  # nothing held, as last time: no write
        self._checkpoint_empty = not records
        try:
            self._checkpoint_to(self.run_id, records, interval_s=self._interval_s)
        except Exception:  # the sink promises not to raise
            log.exception("could not hand a checkpoint to delivery")

    def _close_windows(self, now: int) -> None:
        """Hand on every window that what is known at `now` lets the ledger close (lock held)."""
        for window in self._ledger.advance(now):
            if self.track_time:
                self._emit(self._time_window(window))

    def _emit(self, record: TimeWindow | Completion) -> None:
        try:
            self._sink.emit(record)
        except Exception:  # the sink promises not to raise; never lose the ledger over it
            log.exception("could not hand a record to delivery")

    def _time_window(self, window: Window) -> TimeWindow:
        return TimeWindow(
            activity=self.ref,
            run_id=self.run_id,
            started_at=self._anchor.iso(window.start),
            ended_at=self._anchor.iso(window.end),
            elapsed_ms=window.active_ms,
            paused_ms=window.inactive_ms,
        )

    def _say_once_if_no_page(self, now: int) -> None:
        if self._no_page_deadline is not None and now >= self._no_page_deadline:
            self._no_page_deadline = None
            if not self._ledger.pages_seen:
                self.notice = NO_PAGE_NOTICE
                log.warning("timeback_nb: %s", NO_PAGE_NOTICE)

    def _finish(self) -> None:
        shell, self._shell = self._shell, None
        if shell is not None:
            for event, callback in (("pre_run_cell", self._cell_started), ("post_run_cell", self._cell_finished)):
                try:
                    shell.events.unregister(event, callback)
                except ValueError:
                    pass
        self._finished.set()
        self._heartbeat.stop()  # joins unless this is the heartbeat thread itself
        self._update_end_note()
        if self._on_finish is not None:
            self._on_finish(self, self._completion)

    # -- what the page and the notebook see -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snapshot = self._snapshot(self._now())
            snapshot["nextPingMs"] = self._ledger.ping_ms
            return snapshot

    def _snapshot(self, now: int) -> dict[str, Any]:
        return {
            "elapsedMs": self._ledger.elapsed_ms(now),
            "windowElapsedMs": self._ledger.window_active_ms(now),
            "state": self._ledger.state(now),
            "mode": self.mode,
            "pendingEvents": self.pending_events,
            "rejectedEvents": self._rejected_events,
            "lastError": self.last_error or self.notice,
            "activityName": self.name,
            "idleAfterMs": self.idle_after_ms,
            "pagesShowing": self._ledger.pages_showing,
            "runId": self.run_id,
        }

    def __repr__(self) -> str:
        # From a fresh snapshot, not the traits (refreshed once a second), so it agrees with the
        # widget, which shows the same snapshot.
        now = self.snapshot()
        course = ", ".join(f"{k}={v}" for k, v in self.course.items())
        return (
            f"<Activity {self.id!r} ({self.name}; {course}) run={self.run_id[:8]} "
            f"state={now['state']} active={format_elapsed(now['elapsedMs'])} mode={self.mode}>"
        )

    def _ipython_display_(self) -> None:
        """As a cell's result: nothing in the cell that displayed the widget (`start()` as its last
        line: the widget is the live view, a text beside it would be stale at once), else the repr."""
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        if self.widget is not None and shell is not None and shell.execution_count == self.widget_cell:
            return
        display({"text/plain": repr(self)}, raw=True)


def _clock_time(iso: str | None) -> str:
    """The time of day of an ISO-8601 UTC stamp: 2026-12-02T18:22:05.123Z gives "18:22:05 UTC"."""
    return "?" if not iso else f"{iso[11:19]} UTC"
