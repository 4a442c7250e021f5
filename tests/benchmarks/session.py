"""A kernel-like session for the benchmarks: `timeback_nb.start` wired as in a notebook (local
store in a temp folder, the repository's demo config) and a simulated page that reports to
`Activity.page_message` from its own thread, pinging as js/widget.js does."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "notebooks" / "timeback.config.json"
COURSE = {"subject": "Math", "grade": 8}


def use_local_store(folder: Path) -> None:
    """Point this process at a fresh local store and the demo config, with no credentials."""
    for name in [n for n in os.environ if n.startswith("TIMEBACK_")]:
        del os.environ[name]
    os.environ.update(
        TIMEBACK_CONFIG=str(DEMO_CONFIG),
        TIMEBACK_NB_STORE=str(folder / "timeback.sqlite3"),
        TIMEBACK_NB_TRANSPORT="local",
        TIMEBACK_ENV="staging",
        TIMEBACK_USER_EMAIL="student@example.edu",
        TIMEBACK_USER_ID="u-benchmark",
    )


class PingingPage:
    """One visible browser page: a transition, then a ping whenever the kernel's reply says
    (`nextPingMs`, clamped to 250 ms–10 s as js/format.js `clampPingDelay` does)."""

    def __init__(self, activity: Any) -> None:
        self.activity = activity
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        self.seq = 0
        self.replies = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-page", daemon=True)

    def _send(self, kind: str) -> float:
        self.seq += 1
        message = {"type": "report", "page": self.name, "seq": self.seq, "kind": kind, "visible": True,
                   "t": time.monotonic() * 1000}
        reply = self.activity.page_message(message)
        self.replies += reply is not None
        delay = reply.get("nextPingMs") if reply else None
        return 2.0 if not isinstance(delay, (int, float)) else min(10.0, max(0.25, delay / 1000))

    def _run(self) -> None:
        delay = self._send("transition")
        while not self._stop.wait(delay):
            delay = self._send("ping")

    def start(self) -> PingingPage:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
