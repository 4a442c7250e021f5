"""Kernel memory added by a running activity, each number from fresh worker processes:

- RSS added by the kernel's first `timeback_nb.start` plus ~16 s of tracking (a visible page
  pinging every 2 s, one 15 s window closed, committed and delivered to the local store):
  what `start` imports on first use (httpx, ssl, sqlite3), the store, threads, Python heap;
- the Python heap part alone (tracemalloc), in other workers (tracing inflates RSS);
- the Python heap of the activity alone: a second activity in a kernel that has run one;
- growth of the Python heap over one simulated hour (fake clock: 1,800 pings, a visibility
  switch every minute, 240 windows delivered), measured between minute 10 and minute 70.

The module and its imports are loaded before the first reading (that is `%load_ext`'s cost).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from .results import Bar, Row
from .session import COURSE, ROOT, PingingPage, use_local_store

NAME = "memory"
TRACK_S = 16.0  # one default 15 s window closes and is delivered


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settle() -> None:
    gc.collect()
    time.sleep(0.05)


def added_by_activity(seconds: float, traced: bool, warm: bool) -> int:
    """Bytes (RSS, or traced Python heap) added by starting and running one activity; `warm`:
    after a first activity has run and ended in this process."""
    import IPython  # noqa: F401 - loaded in any kernel

    import timeback_nb

    with tempfile.TemporaryDirectory() as tmp:
        use_local_store(Path(tmp))
        if warm:
            timeback_nb.start("warm-up", "Warm-up", COURSE, display=False).end()
        if traced:
            tracemalloc.start()
        _settle()
        before = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
        activity = timeback_nb.start("memory", "Memory benchmark", COURSE, display=False)
        page = PingingPage(activity).start()
        time.sleep(seconds)
        _settle()
        after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
        assert page.replies > 0 and activity.state == "active", (page.replies, activity.state)
        if seconds > 15:
            assert activity.elapsed_ms > 15_000 and timeback_nb.flush(5)["queued"] == 0
        page.stop()
        activity.end()
        return after - before


def growth_per_hour() -> int:
    """Traced Python heap growth from simulated minute 10 to minute 70 of a session."""
    from timeback_nb.activity import Activity
    from timeback_nb.delivery import Delivery
    from timeback_nb.outbox import Sender
    from timeback_nb.store import Store
    from timeback_nb.transport import LocalTransport

    from tests.fakes import FakeClock, Page
    from tests.test_delivery_integration import REF, target

    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock()
        store = Store(Path(tmp) / "timeback.sqlite3")
        sender = Sender(store, LocalTransport(store)).start()
        activity = Activity(REF, run_id=str(uuid.uuid4()), sink=Delivery(target(), store, sender, clock=clock),
                            clock=clock)
        activity.begin()
        page = Page(activity, clock)
        visible = True
        page.send("transition", visible)
        tracemalloc.start()
        readings = {}
        for second in range(0, 70 * 60 + 1, 2):
            if second and second % 60 == 0:
                visible = not visible
                page.send("transition", visible)
            clock.advance(2_000)
            page.send("ping", visible)
            if second in (10 * 60, 70 * 60):
                sender.flush(10)  # what was committed is delivered, as the sender would by now
                _settle()
                readings[second] = tracemalloc.get_traced_memory()[0]
        windows = store.counts()["delivered"]
        assert windows >= 70 * 4 - 1, f"expected a window every 15 s, got {windows}"
        activity.end()
        sender.stop(5)
        store.close()
        return readings[70 * 60] - readings[10 * 60]


def _workers(mode: str, count: int, seconds: float) -> list[int]:
    """Run `count` workers at once (memory, not time, is measured) and collect their numbers."""
    command = [sys.executable, "-m", "tests.benchmarks.bench_memory", "--worker", mode, "--seconds", str(seconds)]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    values = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"memory worker ({mode}) failed with status {proc.returncode}")
        values.append(json.loads(out.strip().splitlines()[-1]))
    return values


def run(quick: bool) -> list[Row]:
    count, seconds = (1, 2.0) if quick else (3, TRACK_S)
    mib = 1024 * 1024
    rss = [v / mib for v in _workers("rss", count, seconds)]
    heap = [v / mib for v in _workers("traced", count, seconds)]
    own = [v / 1024 for v in _workers("second", count, seconds)]
    growth = [v / 1024 for v in _workers("hour", count, 0)]
    return [
        Row(NAME, f"RSS added by the first activity ({seconds:.0f} s), MiB", rss, Bar("report"), "(reported)",
            digits=2, notes=["the first start() imports httpx, ssl and sqlite3, opens the store and starts the "
                             "heartbeat, sender and lease-keeper threads"]),
        Row(NAME, "of which Python heap (tracemalloc), MiB", heap, Bar("report"), "(reported)", digits=2),
        Row(NAME, "Python heap of a further activity, KiB", own, Bar("report"), "(reported)", digits=1),
        Row(NAME, "Python heap growth per simulated hour, KiB", growth, Bar("report"), "(reported)", digits=1,
            notes=["simulated hour: a ping every 2 s, a visibility switch every minute, 240 windows delivered"]),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=["rss", "traced", "second", "hour"], required=True)
    parser.add_argument("--seconds", type=float, default=TRACK_S)
    args = parser.parse_args()
    if args.worker == "hour":
        print(json.dumps(growth_per_hour()))
    else:
        warm = args.worker == "second"
        print(json.dumps(added_by_activity(args.seconds, traced=args.worker != "rss", warm=warm)))
