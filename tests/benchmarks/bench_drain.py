"""Outbox drain: 10,000 committed TimeSpentEvents in a store file in a temp folder, delivered by
the real `Sender` + `CaliperTransport` (`flush`, as `timeback-nb flush` does) to a real HTTP
server on 127.0.0.1, vs a bare httpx loop POSTing the same bodies to a fresh server of the
same kind. The receiver must end up with every event exactly once, in order, none resent.

Batched drain (the relay's sender, `--batch 100`): the same events, `BATCH_SIZE` per Caliper
envelope (`Sender(batch_size=...)`), against the one-event-per-POST sender of the same run.

The server runs in this process (threads), as in the delivery tests: it competes with the
client for the GIL and the 2 cores, the same for both, so the absolute rates are pessimistic.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from timeback_nb import events
from timeback_nb.clock import iso_utc_ms
from timeback_nb.outbox import Sender
from timeback_nb.records import TimeWindow
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport, request_id

from tests.loopback import CLIENT_ID, CLIENT_SECRET, LoopbackServer
from tests.test_delivery_integration import REF, T0, target

from .results import Bar, Row, median

NAME = "drain"
BAR_EVENTS_PER_S = 500
BAR_BATCHED_EVENTS_PER_S = 10_000
BATCH_SIZE = 100  # the relay's default --batch


def bodies(run_id: str, n: int) -> list[tuple[str, str]]:
    """(event id, body) of `n` consecutive 15 s windows of the run `run_id`."""
    out = []
    for i in range(n):
        start = T0 + i * 15_000
        window = TimeWindow(REF, run_id, iso_utc_ms(start), iso_utc_ms(start + 15_000), 13_500, 1_500)
        envelope = events.time_spent_envelope(window, target(), send_time=iso_utc_ms(start + 15_000))
        out.append((events.event_id(envelope), events.dumps(envelope)))
    return out


def drain(
    folder: Path, run_id: str, batch: list[tuple[str, str]], batch_size: int = 1
) -> tuple[float, float, int]:
    """(events/s delivered by the Sender, events/s committed to the outbox beforehand, requests)."""
    with Store(folder / f"drain-{uuid.uuid4().hex[:6]}.sqlite3") as store, LoopbackServer() as server:
        started = time.perf_counter()
        for event_id, body in batch:
            store.enqueue(event_id, "time", run_id, body)
        enqueue_rate = len(batch) / (time.perf_counter() - started)
        transport = CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET)
        sender = Sender(store, transport, batch_size=batch_size)
        try:
            started = time.perf_counter()
            counts = sender.flush(timeout=600)
            took = time.perf_counter() - started
        finally:
            sender.stop(5)
            transport.close()
        ids = [event_id for event_id, _ in batch]
        assert counts == {"delivered": len(batch), "queued": 0, "rejected": 0}, counts
        assert server.stored_ids == ids, "every event stored once, in commit order"
        assert server.received_ids() == ids, "no event sent twice"
        assert store.counts() == {"queued": 0, "delivered": len(batch), "rejected": 0}
        requests = len(server.received)
        assert max(len(r.event_ids) for r in server.received) == batch_size, "envelopes of batch_size events"
    return len(batch) / took, enqueue_rate, requests


def bare_loop(batch: list[tuple[str, str]]) -> float:
    """events/s of a plain keep-alive httpx loop POSTing the same bodies."""
    with LoopbackServer() as server, httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        token = client.post(
            server.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        ).json()["access_token"]
        for event_id, body in batch:
            response = client.post(
                server.event_url,
                content=body.encode("utf-8"),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "X-Request-ID": request_id(event_id),
                    "Authorization": f"Bearer {token}",
                },
            )
            assert response.status_code == 200, response.text
        took = time.perf_counter() - started
        assert server.stored_ids == [event_id for event_id, _ in batch]
    return len(batch) / took


def run(quick: bool) -> list[Row]:
    reps, n = (1, 1_000) if quick else (3, 10_000)
    rates, enqueue_rates, baseline, batched_rates = [], [], [], []
    requests = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            run_id = str(uuid.uuid4())
            batch = bodies(run_id, n)
            baseline.append(bare_loop(batch))
            rate, enqueue_rate, _ = drain(Path(tmp), run_id, batch)
            batched, _, requests = drain(Path(tmp), run_id, batch, batch_size=BATCH_SIZE)
            rates.append(rate)
            enqueue_rates.append(enqueue_rate)
            batched_rates.append(batched)
            print(f"  rep {rep + 1}/{reps}: sender {rate:.0f}/s, batched {batched:.0f}/s, bare httpx "
                  f"{baseline[-1]:.0f}/s, enqueue {enqueue_rate:.0f}/s", file=sys.stderr, flush=True)
    return [
        Row(NAME, f"{n:,} queued events delivered, events/s", rates, Bar("at_least", BAR_EVENTS_PER_S),
            "≥ 500/s, none lost or duplicated", baseline=median(baseline),
            baseline_text="bare httpx loop, same bodies", digits=0,
            notes=[f"committing them to the outbox first (one transaction each): "
                   f"{median(enqueue_rates):.0f} events/s; receiver checked: "
                   "every id once, in order, no resend"]),
        Row(NAME, f"{n:,} queued events, {BATCH_SIZE} per envelope, events/s", batched_rates,
            Bar("at_least", BAR_BATCHED_EVENTS_PER_S), "≥ 10,000/s, none lost or duplicated",
            baseline=median(rates), baseline_text="the same sender, one event per POST", digits=0,
            notes=[f"batched drain: {requests} POSTs for {n:,} events; receiver checked: every id once, "
                   "in order, no resend"]),
    ]
