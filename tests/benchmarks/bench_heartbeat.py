"""One heartbeat end to end, per event: the page's report that completes a window closes it
(on the reporting thread) → the TimeSpentEvent is built → committed to the outbox (SQLite) →
the sender thread leases it and POSTs it to a real HTTP server on 127.0.0.1 → the reply is in.

Baseline, same process, same server, same sizes: a bare SQLite insert (an autocommit INSERT in
a WAL file with synchronous=NORMAL, the store's own durability) followed by an httpx POST of an
event body with the same headers and bearer token. Blocks of baseline and pipeline events
alternate, so drift hits both; each run is a fresh process.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from timeback_nb import events
from timeback_nb.activity import Activity
from timeback_nb.clock import iso_utc_ms
from timeback_nb.delivery import Delivery
from timeback_nb.outbox import Sender
from timeback_nb.records import TimeWindow
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport, Outcome, request_id

from tests.fakes import FakeClock, Page
from tests.loopback import CLIENT_ID, CLIENT_SECRET, LoopbackServer
from tests.test_delivery_integration import REF, T0, target

from .results import Bar, Row, median
from .session import ROOT

NAME = "heartbeat"
INTERVAL_S = 15  # the default heartbeat interval
PING_MS = 1_000  # the page reports every second of (fake) time; the 15th completes the window
SETTLE_S = 0.02  # between events: the previous event's bookkeeping is over on every thread
WARMUP = 5


class TimedTransport:
    """The real CaliperTransport, noting when each send's reply is in (on the sender thread)."""

    def __init__(self, inner: CaliperTransport) -> None:
        self.inner = inner
        self.replied = threading.Event()
        self.replied_at = 0.0
        self.sent: list[str] = []

    def send(self, body: str, event_id: str) -> Outcome:
        outcome = self.inner.send(body, event_id)
        self.replied_at = time.perf_counter()
        self.sent.append(event_id)
        self.replied.set()
        return outcome

    def close(self) -> None:
        self.inner.close()


class Pipeline:
    """An Activity on a fake clock, wired as `timeback_nb.start` wires it, to the server."""

    def __init__(self, folder: Path, server: LoopbackServer) -> None:
        self.clock = FakeClock(wall_ms=T0)
        self.store = Store(folder / "timeback.sqlite3")
        self.transport = TimedTransport(CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET))
        self.sender = Sender(self.store, self.transport)
        self.reported = threading.Event()
        self.sender.on_status = lambda status: self.reported.set()
        self.delivery = Delivery(target(), self.store, self.sender, clock=self.clock)
        self.run_id = str(uuid.uuid4())
        self.activity = Activity(
            REF, run_id=self.run_id, sink=self.delivery, heartbeat_interval=INTERVAL_S, clock=self.clock
        )
        self.page = Page(self.activity, self.clock)
        self.sender.start()
        self.activity.begin()
        self.page.send("transition", True)

    def one_event(self) -> float:
        """Seconds from the report that completes a window to the endpoint's reply."""
        for _ in range(INTERVAL_S * 1000 // PING_MS - 1):
            self.clock.advance(PING_MS)
            self.page.send("ping", True)
        self.clock.advance(PING_MS)
        self.transport.replied.clear()
        self.reported.clear()
        started = time.perf_counter()
        self.page.send("ping", True)  # knowledge reaches the boundary: the window can close
        if not self.transport.replied.wait(10):
            raise AssertionError("the window's event never reached the endpoint")
        latency = self.transport.replied_at - started
        if not self.reported.wait(10):
            raise AssertionError("the sender never finished the event")
        return latency

    def close(self) -> None:
        self.activity.end()
        self.sender.flush(10)
        self.sender.stop(5)
        self.transport.close()


class Bare:
    """The baseline: INSERT into a WAL SQLite file, then POST the body with httpx (keep-alive)."""

    def __init__(self, folder: Path, server: LoopbackServer) -> None:
        self.conn = sqlite3.connect(folder / "bare.sqlite3", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, event_id TEXT UNIQUE, body TEXT)")
        self.client = httpx.Client(timeout=10)
        self.url = server.event_url
        token = self.client.post(
            server.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        ).json()["access_token"]
        self.auth = f"Bearer {token}"
        self.run_id = str(uuid.uuid4())
        self.count = 0
        self.sent: list[str] = []

    def next_body(self) -> tuple[str, str]:
        """An event of the same shape and size as the pipeline's (prepared outside the timing)."""
        start = T0 + self.count * INTERVAL_S * 1000
        self.count += 1
        window = TimeWindow(REF, self.run_id, iso_utc_ms(start), iso_utc_ms(start + INTERVAL_S * 1000), 15_000, 0)
        envelope = events.time_spent_envelope(window, target(), send_time=iso_utc_ms(start + INTERVAL_S * 1000))
        return events.event_id(envelope), events.dumps(envelope)

    def one_event(self) -> float:
        event_id, body = self.next_body()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Request-ID": request_id(event_id),
            "Authorization": self.auth,
        }
        started = time.perf_counter()
        self.conn.execute("INSERT INTO outbox (event_id, body) VALUES (?, ?)", (event_id, body))
        response = self.client.post(self.url, content=body.encode("utf-8"), headers=headers)
        latency = time.perf_counter() - started
        assert response.status_code == 200, response.text
        self.sent.append(event_id)
        return latency

    def close(self) -> None:
        self.client.close()
        self.conn.close()


def _block(subject: Pipeline | Bare, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        latencies.append(subject.one_event())
        time.sleep(SETTLE_S)
    return latencies


def check_pipeline(pipeline: Pipeline, server: LoopbackServer) -> None:
    """Every window reached the endpoint once, in order, as committed, fully active."""
    rows = pipeline.store.events()
    ids = [r["event_id"] for r in rows]
    assert {r["state"] for r in rows} == {"delivered"}, "every event must be delivered"
    assert pipeline.transport.sent == ids, "each event sent exactly once, in order"
    assert [i for i in server.stored_ids if i in set(ids)] == ids, "the server stored each event once, in order"
    for row in rows:
        assert server.stored[row["event_id"]] == row["body"].encode("utf-8"), "the committed bytes went out"
        event = json.loads(row["body"])["data"][0]
        assert event["type"] == "TimeSpentEvent" and event["session"] == f"urn:uuid:{pipeline.run_id}"
    active = [
        item["value"] for row in rows for item in json.loads(row["body"])["data"][0]["generated"]["items"]
        if item["type"] == "active"
    ]
    assert active[:-1] == [float(INTERVAL_S)] * (len(active) - 1), "each full window counted 15 s active"


def measure(blocks: int, per_block: int) -> dict[str, list[float]]:
    """Per-event latencies (ms) of both subjects in this process, their blocks alternating."""
    latencies: dict[str, list[float]] = {"pipeline": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as server:
        folder = Path(tmp)
        pipeline, bare = Pipeline(folder, server), Bare(folder, server)
        try:
            _block(pipeline, WARMUP)  # token, connection, SQLite caches
            _block(bare, WARMUP)
            for _ in range(blocks):
                for name, subject in (("bare", bare), ("pipeline", pipeline)):
                    latencies[name] += [s * 1000 for s in _block(subject, per_block)]
        finally:
            pipeline.close()
            bare.close()
        check_pipeline(pipeline, server)
        pipeline.store.close()
        assert len(set(bare.sent)) == len(bare.sent) and set(bare.sent) <= set(server.stored_ids)
    return latencies


def _worker(blocks: int, per_block: int) -> dict[str, list[float]]:
    """`measure` in a fresh process: how one process's threads land on the cores biases all
    of its events alike, so runs are processes, not blocks within one."""
    command = [sys.executable, "-m", "tests.benchmarks.bench_heartbeat", str(blocks), str(per_block)]
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise AssertionError(f"heartbeat worker failed with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[Row]:
    runs, blocks, per_block = (2, 2, 15) if quick else (5, 2, 100)
    medians: dict[str, list[float]] = {"pipeline": [], "bare": []}
    pooled: dict[str, list[float]] = {"pipeline": [], "bare": []}
    for run_index in range(runs):
        latencies = _worker(blocks, per_block)
        for name, values in latencies.items():
            medians[name].append(median(values))
            pooled[name] += values
        print(f"  run {run_index + 1}/{runs}: pipeline {medians['pipeline'][-1]:.3f} ms, "
              f"bare {medians['bare'][-1]:.3f} ms ({medians['pipeline'][-1] / medians['bare'][-1]:.2f}x)",
              file=sys.stderr, flush=True)

    def p90(values: list[float]) -> float:
        return statistics.quantiles(values, n=10)[-1]

    # Judged per process: each pipeline block alternates with a baseline block in the same
    # process, so the pair shares its core placement and cache state. Processes differ by up to
    # ~40 % in absolute speed on this 2-core VM, so one process's pipeline median divided by
    # another's baseline median (the unpaired ratio of the second row) measures that as well.
    ratios = [p / b for p, b in zip(medians["pipeline"], medians["bare"])]
    unpaired = median(medians["pipeline"]) / median(medians["bare"])
    return [
        Row(NAME, "per-event latency ÷ the same process's baseline", ratios, Bar("at_most", 1.5),
            "≤ 1.5× baseline", baseline_text="bare SQLite insert + httpx POST, blocks alternating",
            notes=[f"{runs} fresh processes × {blocks * per_block} events each (and as many baseline events)"]),
        Row(NAME, "per-event latency, ms (median of each run)", medians["pipeline"], Bar("report"),
            "(reported)", baseline=median(medians["bare"]),
            baseline_text="bare SQLite insert + httpx POST", digits=3,
            notes=[f"unpaired: median pipeline ÷ median baseline over the processes = {unpaired:.2f}×; "
                   f"p90 over all: pipeline {p90(pooled['pipeline']):.3f} ms, baseline {p90(pooled['bare']):.3f} ms; "
                   f"baseline runs {min(medians['bare']):.3f}–{max(medians['bare']):.3f} ms"]),
    ]


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
