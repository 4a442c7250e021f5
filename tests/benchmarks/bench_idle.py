"""Tracking overhead while the kernel is idle: CPU time of this whole process (every thread:
heartbeat, sender, lease keeper, the page's reports) while an Activity started with
`timeback_nb.start` runs with the default heartbeat interval and a visible page pinging every
2 s, minus the same process idle for as long without an activity; as % of one core.

The page's reports are handed to `Activity.page_message` directly: the widget's message handler
(trait updates, the ack) and the kernel's comm machinery (ZMQ, ipywidgets) are not counted.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import IPython  # noqa: F401 - a kernel has it loaded; its import is no part of the idle cost

import timeback_nb
from timeback_nb.outbox import stop_senders
from timeback_nb.store import Store

from .results import Bar, Row, median
from .session import COURSE, PingingPage, use_local_store

NAME = "idle"
WARMUP_S = 1.0  # start-up work (store, first window) is not idle overhead


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def busy_for(seconds: float) -> float:
    """CPU seconds this process uses while the main thread sleeps for `seconds`."""
    before = cpu_seconds()
    time.sleep(seconds)
    return cpu_seconds() - before


def tracked(seconds: float, folder: Path, rep: int) -> float:
    """CPU seconds over `seconds` of a running activity; checks what it recorded."""
    activity = timeback_nb.start(f"idle-{rep}", "Idle benchmark", COURSE, display=False)
    page = PingingPage(activity).start()
    began = time.monotonic()
    try:
        time.sleep(WARMUP_S)
        used = busy_for(seconds)
        ran_s = time.monotonic() - began
        activity.end()
        deadline = time.monotonic() + 10
        while not activity.finished and time.monotonic() < deadline:  # the page's next report closes it
            time.sleep(0.05)
    finally:
        page.stop()
    counts = timeback_nb.flush(10)
    assert activity.finished, "the activity must finish once the page reports after end()"
    assert counts["queued"] == 0 and counts["rejected"] == 0, counts
    with Store(folder / "timeback.sqlite3") as store:
        bodies = [json.loads(e["body"]) for e in store.local_events()]
    spent = [e for b in bodies for e in b["data"] if e.get("session") == f"urn:uuid:{activity.run_id}"]
    active_s = sum(i["value"] for e in spent for i in e["generated"]["items"] if i["type"] == "active")
    assert round(active_s * 1000) == activity.elapsed_ms, (active_s, activity.elapsed_ms)
    assert abs(active_s - ran_s) < 0.5, f"a visible page for {ran_s:.2f} s was counted {active_s:.2f} s active"
    assert len(spent) >= int(seconds // 15), "a window every 15 s"
    stop_senders()  # back to an idle process for the next baseline
    return used


def run(quick: bool) -> list[Row]:
    reps, seconds = (1, 2.0) if quick else (3, 20.0)
    idle, overhead = [], []
    with tempfile.TemporaryDirectory() as tmp:
        use_local_store(Path(tmp))
        for rep in range(reps):
            base = busy_for(seconds)
            used = tracked(seconds, Path(tmp), rep)
            idle.append(base / seconds * 100)
            overhead.append((used - base) / seconds * 100)
            print(f"  rep {rep + 1}/{reps}: idle {base * 1000:.1f} ms, tracking {used * 1000:.1f} ms CPU "
                  f"over {seconds:.0f} s", file=sys.stderr, flush=True)
    per_hour = median(overhead) / 100 * 3600
    return [
        Row(NAME, "added CPU, % of one core", overhead, Bar("below", 0.1), "< 0.1 %",
            baseline=median(idle), baseline_text="same process idle, no activity", digits=4, over_baseline=True,
            notes=[f"{seconds:.0f} s per run, heartbeat every 15 s, page ping every 2 s; "
                   f"≈ {per_hour:.2f} CPU s per hour of tracking"]),
    ]
