"""The accounting core: page reports in, closed heartbeat windows out. Pure: time is an argument.

Vocabulary (all instants are integer kernel-monotonic milliseconds):

- A *page* is one browser tab running the widget. It reports visibility *transitions* with its own
  ``performance.now()`` timestamps, periodic *pings* and a *bye* when it goes away. Page time is
  mapped onto kernel time with the smallest delay ever observed for that page (its reports can only
  arrive late, never early), so a report that waited behind a busy cell still lands at the
  instant it describes. A page whose first report waited behind a cell (opened during Run All)
  is not accounted past the instant it could have appeared until its next ping is in: if that
  one came promptly, the page's time is placed exactly; else (cells still running, comms not on
  a subshell) within the delay of its freshest report, at most a ping interval.
- *Active* means: running, not paused, and at least one present page visible (a union over tabs).
  A page is "visible" when it shows the notebook (its browser tab visible and, in JupyterLab, the
  notebook panel of its views shown: the page decides, see js/visibility.js).
- *Idle* (the optional idle rule): a page that has shown the notebook with no input for the rule's
  time says so once, with the instant of its last input, and stops counting from that instant,
  retroactively, like a transition. So with the rule on, a visible page's time after its last
  input is not known until the next input, or the idle report, or the end (which settles the
  stretch: the student ran the cell with end()); pages then send the last input's instant with
  every report, and windows after it are held. Only that instant ever leaves the page.
- *Knowledge*: the instant up to which every page's state is known. A visible page is known up to
  its latest report (a page that crashes is gone from its last report, so nothing past it may be
  assumed); a hidden page is known up to the instant the channel is confirmed, since any change
  would have been sent at once. The channel is confirmed up to "now" (it is *prompt*) while the
  kernel has been idle for ``settle_ms`` (IPython's ``post_run_cell`` fires before the messages
  queued during the cell are handled) or while page messages arrive during the running cell
  (comms on a subshell).
- A *window* closes on the heartbeat grid of its segment (every ``interval_ms``), at a pause and
  at the end, but only once knowledge has reached its end: until then it is *held*, and closed
  retroactively, on the same grid, when the reports arrive. Nothing is guessed.
- *Abandonment*: after ``abandon_ms`` without active time the window closes at that instant and
  the segment ends; the next active instant (or ``resume``) starts a new segment from a clean slate.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import invalid

REPORT_KINDS = ("transition", "ping", "idle", "bye")
FOREVER = math.inf
FORGOTTEN_PAGES_KEPT = 1_024  # latest seq of pages forgotten lately, to spot their replayed reports


@dataclass(frozen=True)
class PageReport:
    page: str
    seq: int
    kind: str  # one of REPORT_KINDS
    visible: bool
    t: float  # the page's performance.now(), ms
    input: float | None = None  # page ms of the last input, sent only with the idle rule on


def parse_page_report(message: Any) -> PageReport:
    """Validate one page message; raise `ValidationError` naming the bad field."""
    if not isinstance(message, Mapping) or message.get("type") != "report":
        raise invalid("type", "a page message must be a mapping with type 'report'")
    page, seq, kind = message.get("page"), message.get("seq"), message.get("kind")
    visible, t = message.get("visible"), message.get("t")
    if not isinstance(page, str) or not 0 < len(page) <= 64:
        raise invalid("page", "must be a string of 1 to 64 characters")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise invalid("seq", "must be an integer >= 0")
    if kind not in REPORT_KINDS:
        raise invalid("kind", f"must be one of {', '.join(REPORT_KINDS)}")
    if not isinstance(visible, bool):
        raise invalid("visible", "must be true or false")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
        raise invalid("t", "must be a finite number of milliseconds >= 0")
    last_input = message.get("input")
    if last_input is None and kind == "idle":
        raise invalid("input", "an idle report must give the instant of the last input")
    if last_input is not None and (
        not isinstance(last_input, (int, float)) or isinstance(last_input, bool) or not 0 <= last_input <= t
    ):
        raise invalid("input", "must be a number of milliseconds between 0 and t")
    if kind == "idle" and visible:
        raise invalid("visible", "an idle page does not show the notebook: must be false")
    return PageReport(page, seq, kind, visible, float(t), None if last_input is None else float(last_input))


@dataclass(frozen=True)
class Window:
    """A closed heartbeat window over ``[start, end)`` kernel ms."""

    segment: int
    start: int
    end: int
    active_ms: int

    @property
    def inactive_ms(self) -> int:
        return self.end - self.start - self.active_ms


@dataclass
class _Presence:
    """One page from one report stream; a page that comes back after going away gets a new one."""

    offset: float  # kernel ms - page ms, the smallest delay seen
    changes: list[tuple[float, bool]]  # (page ms, visible), in page order
    last_t: float  # page ms of the latest report
    last_arrival: int  # kernel ms at which the latest report arrived
    last_seq: int
    gone_t: float | None = None  # page ms from which the page is gone
    # A report of it arrived while the channel was prompt (kernel idle and settled, or comms
    # live during a cell), so `offset` is its real delay. Until then the offset may include
    # the wait behind a busy cell (the first report of a page opened during Run All) and would
    # map the page's time too late, so nothing after `floor` (kernel ms; every report sent
    # before it had arrived: the page was not there yet) is accounted until `trust_at`, by
    # which its next ping has come (if the kernel is idle, promptly) and lowered the offset.
    prompt: bool = True
    floor: int = 0
    trust_at: int = 0
    input: float | None = None  # page ms of its last input (idle rule on), else None
    idle: bool = False  # its latest word: idle (not hidden)

    def at(self, page_t: float) -> int:
        return round(page_t + self.offset)

    @property
    def visible_now(self) -> bool:
        return self.gone_t is None and self.changes[-1][1]

    @property
    def gone_at(self) -> float:
        return FOREVER if self.gone_t is None else self.at(self.gone_t)

    def forget_before(self, t: int) -> None:
        """Drop changes superseded before `t`; the one in force at `t` stays."""
        while len(self.changes) > 1 and self.at(self.changes[1][0]) <= t:
            self.changes.pop(0)

    def visible_spans(self, a: int, b: float) -> list[tuple[int, float]]:
        """Kernel-time spans within ``[a, b)`` where this page was present and visible."""
        spans: list[tuple[int, float]] = []
        end_of_presence = min(b, self.gone_at)
        for i, (page_t, visible) in enumerate(self.changes):
            if not visible:
                continue
            start = max(a, self.at(page_t))
            stop = self.at(self.changes[i + 1][0]) if i + 1 < len(self.changes) else FOREVER
            stop = min(stop, end_of_presence)
            if stop > start:
                spans.append((start, stop))
        return spans


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def _subtract(spans: list[tuple[float, float]], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    result: list[tuple[float, float]] = []
    for start, stop in spans:
        pieces = [(start, stop)]
        for h_start, h_stop in holes:
            pieces = [
                part
                for p_start, p_stop in pieces
                for part in ((p_start, min(p_stop, h_start)), (max(p_start, h_stop), p_stop))
                if part[1] > part[0]
            ]
        result.extend(pieces)
    return result


@dataclass
class Ledger:
    """Accounting for one run. Not thread-safe: the Activity holds one lock around it."""

    start: int
    interval_ms: int = 15_000
    abandon_ms: int = 600_000
    settle_ms: int = 1_000
    ping_ms: int = 2_000

    segment: int = 0
    segment_start: int = field(init=False)
    closed_until: int = field(init=False)  # end of the last closed window
    closed_active_ms: int = 0  # active ms of every closed window of the run
    abandoned_at: int | None = None
    end_at: int | None = None
    pages_seen: bool = False

    def __post_init__(self) -> None:
        self.segment_start = self.closed_until = self.start
        self._last_active = self.start  # end of the latest active span within closed windows
        self._pages: dict[str, list[_Presence]] = {}
        self._forgotten: OrderedDict[str, int] = OrderedDict()  # page -> its last seq
        self._pauses: list[list[float]] = []  # [start, end or FOREVER]
        self._cuts: list[int] = []  # pause instants: a window closes there
        self._resumes: list[int] = []  # resume() instants: they revive an abandoned run
        # The channel: is everything the pages sent up to some instant already here?
        self._busy_since: int | None = None
        self._idle_since = self.start - self.settle_ms  # a fresh ledger is settled
        self._live_in_cell = False
        self._confirmed_floor = self.start
        self._finished = False

    # -- inputs ------------------------------------------------------------------------------

    def report(self, report: PageReport, arrival: int) -> bool:
        """Record one page report received at kernel time ``arrival``. False if a duplicate."""
        if self._busy_since is not None:
            self._live_in_cell = True  # handled while a cell runs: comms are on a subshell
        if report.seq <= self._forgotten.get(report.page, -1):
            return False  # a replay from a page that went away and was forgotten
        presences = self._pages.setdefault(report.page, [])
        current = presences[-1] if presences else None
        if current is not None and report.seq <= current.last_seq:
            return False
        prompt = self._live_in_cell or self._settled(arrival)
        self.pages_seen = True
        if current is None or current.gone_t is not None:
            # New, or back after a bye or after being declared gone: a fresh presence. Its
            # reports cannot reach back before what has already been accounted.
            offset = arrival - report.t
            t = max(report.t, self.closed_until - offset)
            presences.append(
                _Presence(offset, [(t, report.visible)], t, arrival, report.seq, prompt=prompt,
                          floor=self._confirmed(arrival), trust_at=arrival + self.ping_ms + self.settle_ms,
                          input=report.input)
            )
            current = presences[-1]
        else:
            current.offset = min(current.offset, arrival - report.t)
            current.prompt = current.prompt or prompt
            t = max(report.t, current.last_t)
            if report.kind == "idle":
                change = self._idle_from(current, report)
            else:
                change = t
            if report.visible != current.changes[-1][1]:
                current.changes.append((change, report.visible))
            current.last_t, current.last_arrival, current.last_seq = t, arrival, report.seq
            if report.input is not None:
                current.input = max(report.input, current.input or 0.0)
        if report.kind == "idle" or report.visible or report.kind == "transition":
            current.idle = report.kind == "idle"
        if report.kind == "bye":
            current.gone_t = current.last_t
        return True

    def _idle_from(self, presence: _Presence, report: PageReport) -> float:
        """Page ms from which an idle page stops counting: its last input, unless the run ended
        before the page found it idle (the end settles the stretch before it as active)."""
        since = max(report.input or 0.0, presence.changes[-1][0], presence.input or 0.0)
        if self.end_at is not None and self.end_at < presence.at(report.t):
            since = max(since, self.end_at - presence.offset)
        return max(since, self.closed_until - presence.offset)  # closed time is never reopened

    def cell_started(self, now: int) -> None:
        if self._busy_since is not None:
            return
        if self._live_in_cell or now - self._idle_since >= self.settle_ms:
            self._confirmed_floor = max(self._confirmed_floor, now)
        self._busy_since, self._live_in_cell = now, False

    def cell_finished(self, now: int) -> None:
        if self._busy_since is None:
            return
        if self._live_in_cell:
            self._confirmed_floor = max(self._confirmed_floor, now)
        self._busy_since, self._idle_since = None, now

    def pause(self, now: int) -> bool:
        if self.paused:
            return False
        self._pauses.append([now, FOREVER])
        self._cuts.append(now)
        return True

    def resume(self, now: int) -> bool:
        """End a pause; an abandoned run restarts here. False if there was nothing to resume."""
        # Kept even when the abandonment is not known yet (held windows): it revives the run
        # if abandonment turns out to have come before it.
        self._resumes.append(now)
        if self.paused:
            self._pauses[-1][1] = now
            return True
        return self.abandoned_at is not None

    def end(self, now: int) -> None:
        if self.end_at is None:
            self.end_at = now
            if self.paused:
                self._pauses[-1][1] = now

    def force_knowledge(self, now: int) -> None:
        """The kernel is going away: silent visible pages are gone from their last report."""
        for presence in self._present():
            if presence.visible_now:
                presence.gone_t = presence.last_t
        self._confirmed_floor = max(self._confirmed_floor, now)
        self._busy_since, self._live_in_cell = None, False
        self._idle_since = now - self.settle_ms

    def provisional(self, now: int) -> list[Window]:
        """The windows that closing everything at ``now`` would give if every page stayed as it
        was last known until ``now``: what a later process hands on if this one dies now. The
        ledger itself is left as it is."""
        if self._finished:
            return []
        trial = copy.deepcopy(self)
        for presence in trial._present():
            presence.prompt = True
            if presence.visible_now:  # last known visible: visible until now (then gone)
                presence.last_t = max(presence.last_t, now - presence.offset)
        trial.force_knowledge(now)
        trial.end(now)
        return trial.advance(now)

    # -- derived state -----------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return bool(self._pauses) and self._pauses[-1][1] == FOREVER

    @property
    def finished(self) -> bool:
        """Ended, and every window up to the end is closed (or the run was abandoned for good)."""
        return self._finished

    @property
    def live_delivery(self) -> bool:
        """Page messages are reaching the kernel while the current cell runs (a subshell)."""
        return self._busy_since is not None and self._live_in_cell

    @property
    def pages_showing(self) -> int:
        """Pages present now whose latest report shows the notebook (what the widget tells the student)."""
        return sum(presence.visible_now for presence in self._present())

    def _present(self) -> list[_Presence]:
        return [presences[-1] for presences in self._pages.values() if presences[-1].gone_t is None]

    def _settled(self, now: int) -> bool:
        return self._busy_since is None and now - self._idle_since >= self.settle_ms

    def _confirmed(self, now: int) -> int:
        # Messages handled during the current (or last) cell came live over a subshell, so no
        # queue builds up behind it; otherwise wait for the queue to drain after the cell.
        if self._live_in_cell or self._settled(now):
            return now
        return self._confirmed_floor

    def _declare_silent_pages_gone(self, now: int) -> None:
        if not self._settled(now):
            return
        silence = 2 * self.ping_ms + self.settle_ms
        for presence in self._present():
            if presence.visible_now and now - presence.last_arrival > silence:
                presence.gone_t = presence.last_t

    def knowledge(self, now: int) -> int:
        """The instant up to which the state of every page is known."""
        confirmed = self._confirmed(now)
        known = float(now)
        for presence in self._present():
            horizon = presence.at(presence.last_t)
            if presence.visible_now and presence.input is not None and (self.end_at is None or horizon < self.end_at):
                # The idle rule: the time since the last input may still turn out idle.
                horizon = min(horizon, presence.at(presence.input))
            known = min(known, horizon if presence.visible_now else max(horizon, confirmed))
            if not presence.prompt and now < presence.trust_at:
                known = min(known, presence.floor)  # where its time lies is not known yet
        if not self.pages_seen and self.end_at is not None:
            return now  # ended with no page ever: nothing to wait for (a headless run)
        if not self.pages_seen or not self._present():
            known = min(known, confirmed)  # a page may be saying hello behind a busy cell
        return int(known)

    def active_spans(self, a: int, b: float) -> list[tuple[float, float]]:
        """Merged active spans within ``[a, b)``, each page's last state carried forward."""
        if b <= a:
            return []
        visible = [
            span
            for presences in self._pages.values()
            for presence in presences
            for span in presence.visible_spans(a, b)
        ]
        pauses = [(start, stop) for start, stop in self._pauses if stop > a and start < b]
        spans = _subtract(_merge(visible), pauses)
        return [(max(a, s), min(b, e)) for s, e in _merge(spans) if min(b, e) > max(a, s)]

    def _revivals(self, after: int, known: int) -> list[int]:
        """Known instants from ``after`` on that start a new segment after abandonment."""
        candidates = [t for t in self._resumes if after <= t <= known]
        spans = self.active_spans(after, known)
        if spans:
            candidates.append(int(spans[0][0]))
        return sorted(candidates)

    # -- the clock ticks ---------------------------------------------------------------------

    def advance(self, now: int) -> list[Window]:
        """Close every window that knowledge at ``now`` allows; return them in order."""
        if self._finished:
            return []  # the run's accounting is over: a late report reopens nothing
        self._declare_silent_pages_gone(now)
        known = min(self.knowledge(now), self.end_at if self.end_at is not None else now)
        closed: list[Window] = []
        while True:
            if self.abandoned_at is not None:
                revivals = self._revivals(self.abandoned_at, known)
                if not revivals or (self.end_at is not None and revivals[0] >= self.end_at):
                    self._finished = self.end_at is not None and known >= self.end_at
                    return closed
                self._new_segment(revivals[0])
                continue
            if self.end_at is not None and self.closed_until >= self.end_at:
                self._finished = True
                return closed
            window_end = self._next_boundary()
            reach = min(window_end, known)
            if reach <= self.closed_until:
                return closed
            spans = self.active_spans(self.closed_until, reach)
            abandon = self._abandonment(spans, reach)
            if abandon is not None:
                spans = self.active_spans(self.closed_until, abandon)
                closed.extend(self._close(abandon, spans))
                self.abandoned_at = abandon
                continue
            if reach < window_end:
                return closed  # held: the reports for the rest of the window are not here yet
            closed.extend(self._close(window_end, spans))

    def _next_boundary(self) -> int:
        steps = (self.closed_until - self.segment_start) // self.interval_ms + 1
        boundary = self.segment_start + steps * self.interval_ms
        for t in (*self._cuts, self.end_at):
            if t is not None and self.closed_until < t < boundary:
                boundary = t
        return boundary

    def _abandonment(self, spans: list[tuple[float, float]], reach: int) -> int | None:
        run_start = self._last_active
        for start, stop in spans:
            if start - run_start >= self.abandon_ms:
                break
            run_start = stop
        else:
            if reach - run_start < self.abandon_ms:
                return None
        return int(run_start + self.abandon_ms)

    def _close(self, end: int, spans: list[tuple[float, float]]) -> list[Window]:
        start = self.closed_until
        active = int(sum(stop - begin for begin, stop in spans))
        if spans:
            self._last_active = int(spans[-1][1])
        self.closed_until = end
        self._forget_before(end)
        if end <= start:
            return []
        self.closed_active_ms += active
        return [Window(self.segment, start, end, active)]

    def _forget_before(self, t: int) -> None:
        """Closed time is never accounted again: keep only what decides the state from `t` on,
        so a long run costs no more per report than a short one."""
        for page, presences in list(self._pages.items()):
            if presences[-1].gone_at <= t:  # gone before closed time: no open window needs it
                del self._pages[page]
                self._forgotten[page] = presences[-1].last_seq
                if len(self._forgotten) > FORGOTTEN_PAGES_KEPT:
                    self._forgotten.popitem(last=False)
                continue
            kept = [p for p in presences[:-1] if p.gone_at > t] + presences[-1:]  # the last one keeps seq order
            for presence in kept:
                presence.forget_before(t)
            self._pages[page] = kept
        self._pauses = [pause for pause in self._pauses if pause[1] > t]
        self._cuts = [cut for cut in self._cuts if cut > t]
        self._resumes = [resume for resume in self._resumes if resume >= t]

    def _new_segment(self, at: int) -> None:
        self.segment += 1
        self.segment_start = self.closed_until = self._last_active = at
        self.abandoned_at = None

    # -- what the student sees ---------------------------------------------------------------

    def window_active_ms(self, now: int) -> int:
        """Active ms of the open window so far, pages' last states carried up to ``now``."""
        if self.abandoned_at is not None or self.finished:
            return 0
        until = now if self.end_at is None else min(now, self.end_at)
        return int(sum(stop - start for start, stop in self.active_spans(self.closed_until, until)))

    def elapsed_ms(self, now: int) -> int:
        return self.closed_active_ms + self.window_active_ms(now)

    def state(self, now: int) -> str:
        if self.end_at is not None:
            return "ended"
        if self.paused:
            return "paused"
        present = self._present()
        visible = any(p.visible_now for p in present)
        if self.abandoned_at is not None and not visible:
            return "abandoned"  # a visible page means the student is back: a new segment is due
        if visible:
            return "active"
        return "idle" if any(p.idle for p in present) else "hidden"

    def next_wake(self, now: int) -> int:
        """When the heartbeat thread should look again (a page message that changes the state also
        wakes it)."""
        wake = now + 1_000  # live properties tick at least once a second
        if self.abandoned_at is None and not self.finished:
            boundary = self._next_boundary()
            if boundary > now:
                wake = min(wake, boundary)
        return wake

    def ms_to_boundary(self, now: int) -> int | None:
        if self.abandoned_at is not None or self.finished:
            return None
        return max(0, self._next_boundary() - now)
