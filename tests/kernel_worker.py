"""A kernel-like process for the kill -9 tests of checkpoints (run as a script; local mode).

It runs cells in a real IPython `InteractiveShell` (so `pre_run_cell`/`post_run_cell` fire as in a
kernel) with a simulated page whose reports, as without comm subshells, wait while a cell runs
and arrive in a burst after it. The environment carries the config, the store and the user.

    python tests/kernel_worker.py end INTERVAL
        start; 1.5 intervals idle; then a cell that calls end({"xpEarned": 5}), prints
        "MARK ended <page visible since, wall ms>" once end() has returned, and sleeps (kill it then).
    python tests/kernel_worker.py long-cell INTERVAL
        start; half an interval idle; then prints "MARK cell <page visible since, wall ms>" and
        sleeps in the cell, the page's reports queued behind it (kill it then).
    python tests/kernel_worker.py start | flush
        The next process: start() an activity and wait for the outbox to drain (no flush), or
        call timeback_nb.flush(). Prints the counts as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from IPython.core.interactiveshell import InteractiveShell

import timeback_nb
from timeback_nb.clock import SystemClock
from timeback_nb.store import Store

MATH8 = {"subject": "Math", "grade": 8}


class QueuedPage:
    """A visible tab pinging as the kernel asks; while a cell runs its reports wait (no subshells)."""

    def __init__(self, shell: InteractiveShell) -> None:
        self.clock = SystemClock()
        self.seq = 0
        self.busy = False
        self.queue: list[dict] = []
        self.activity = None
        self.visible_since_wall_ms: int | None = None
        self.lock = threading.Lock()
        shell.events.register("pre_run_cell", lambda *_: setattr(self, "busy", True))
        shell.events.register("post_run_cell", self._cell_done)

    def _cell_done(self, *_: object) -> None:
        with self.lock:
            self.busy = False
            queued, self.queue = self.queue, []
        for message in queued:
            self.activity.page_message(message)

    def open(self, activity) -> None:
        self.activity = activity
        self.visible_since_wall_ms = self.clock.wall_ms()
        self._report("transition")
        threading.Thread(target=self._run, daemon=True).start()

    def _report(self, kind: str) -> float:
        self.seq += 1
        message = {"type": "report", "page": "tab-1", "seq": self.seq, "kind": kind, "visible": True,
                   "t": float(self.clock.monotonic_ms())}
        with self.lock:
            if self.busy:
                self.queue.append(message)
                return 0.25
        reply = self.activity.page_message(message)
        return max(0.02, reply["nextPingMs"] / 1000) if reply else 0.25

    def _run(self) -> None:
        delay = 0.25
        while True:
            time.sleep(delay)
            delay = self._report("ping")


def main() -> None:
    mode = sys.argv[1]
    if mode in ("end", "long-cell"):
        interval = float(sys.argv[2])
        shell = InteractiveShell.instance()
        page = QueuedPage(shell)
        shell.user_ns.update(page=page, timeback_nb=timeback_nb, time=time, interval=interval)
        shell.run_cell(
            "activity = timeback_nb.start('week-3', 'Week 3', {'subject': 'Math', 'grade': 8},"
            " heartbeat_interval=interval, display=False)\npage.open(activity)"
        )
        if mode == "end":
            time.sleep(1.5 * interval)
            shell.run_cell(
                "activity.end({'xpEarned': 5})\n"
                "print('MARK ended', page.visible_since_wall_ms, flush=True)\n"
                "time.sleep(600)"
            )
        else:
            time.sleep(0.5 * interval)
            shell.run_cell("print('MARK cell', page.visible_since_wall_ms, flush=True)\ntime.sleep(600)")
        return
    if mode == "start":
        activity = timeback_nb.start("week-4", "Week 4", MATH8, display=False)
        from timeback_nb.config import Settings

        deadline = time.monotonic() + 15
        with Store(Settings.from_env().store_path) as store:
            while store.counts()["queued"] and time.monotonic() < deadline:
                time.sleep(0.05)
            print(json.dumps(store.counts()), flush=True)
        activity.end()
        return
    print(json.dumps(timeback_nb.flush(10)), flush=True)


if __name__ == "__main__":
    main()
