"""Test doubles shared by the core tests."""

from __future__ import annotations

import threading
import uuid

from timeback_nb.clock import SystemClock


class FakeClock:
    """A settable clock: monotonic and wall time move only when the test says so."""

    def __init__(self, monotonic_ms: int = 1_000_000, wall_ms: int = 1_736_935_200_000) -> None:
        self._monotonic = monotonic_ms
        self._wall = wall_ms
        self._lock = threading.Lock()

    def monotonic_ms(self) -> int:
        with self._lock:
            return self._monotonic

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall

    def advance(self, ms: int) -> None:
        with self._lock:
            self._monotonic += ms
            self._wall += ms

    def jump_wall(self, ms: int) -> None:
        """The system clock is set: wall time jumps, monotonic time does not."""
        with self._lock:
            self._wall += ms


class Page:
    """A browser page as the kernel sees it: numbered reports with the page's own clock."""

    def __init__(self, activity, clock, name: str = "page-1", clock_offset: int = -123_456) -> None:
        self.activity, self.clock, self.name = activity, clock, name
        self.offset = clock_offset  # page ms = kernel ms + offset
        self.seq = 0

    def send(self, kind: str, visible: bool) -> dict | None:
        self.seq += 1
        t = self.clock.monotonic_ms() + self.offset
        return self.activity.page_message(
            {"type": "report", "page": self.name, "seq": self.seq, "kind": kind, "visible": visible, "t": t}
        )


def visit_and_end(activity, metrics: dict | None, seconds: float = 0.5, timeout: float = 3.0) -> None:
    """A page shows the activity for `seconds`, then `end(metrics)`; waits until it finished."""
    import time

    page = Page(activity, activity._clock, clock_offset=0)
    page.send("transition", True)
    time.sleep(seconds)
    activity.end(metrics)
    page.send("ping", True)
    deadline = time.monotonic() + timeout
    while not activity.finished and time.monotonic() < deadline:
        time.sleep(0.01)


class PingingPage:
    """A visible page on its own thread with the real clock: a transition, then a ping whenever
    the kernel's reply says (`nextPingMs`, clamped to 20 ms–10 s as js/format.js does)."""

    def __init__(self, activity, name: str | None = None) -> None:
        self.page = Page(activity, SystemClock(), name or f"tab-{uuid.uuid4().hex[:8]}", clock_offset=0)
        self.replies = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-page", daemon=True)

    def _send(self, kind: str) -> float:
        reply = self.page.send(kind, True)
        self.replies += reply is not None
        delay = reply.get("nextPingMs") if reply else None
        return 2.0 if not isinstance(delay, (int, float)) else min(10.0, max(0.02, delay / 1000))

    def _run(self) -> None:
        delay = self._send("transition")
        while not self._stop.wait(delay):
            delay = self._send("ping")

    def start(self) -> "PingingPage":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
