"""A hostile endpoint (tests/loopback.py faults), real `Sender` + `CaliperTransport` on 127.0.0.1:

- an endpoint answering every event with `429 Retry-After: 0`: how many requests a second the
  sender makes, vs a client that takes the header at its word (resends as soon as told);
- a reply dribbled one byte every 0.1 s: how long a send with `timeout=1` takes, vs a bare
  httpx client with the same (per-operation) timeout, which waits for the whole reply.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx

from timeback_nb.outbox import Sender
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport

from tests.loopback import CLIENT_ID, CLIENT_SECRET, Fault, LoopbackServer
from tests.test_transport import envelope

from .results import Bar, Row, median

NAME = "hostile"
BODY = envelope("e0")
TIMEOUT_S = 1.0
DRIBBLE_S = 0.1


def rate_limited_sender(folder: Path, seconds: float) -> float:
    """Requests/s the default Sender makes while every reply is `429 Retry-After: 0`."""
    with Store(folder / f"rl-{time.monotonic_ns()}.sqlite3") as store, LoopbackServer() as server:
        store.enqueue("e0", "time", "r1", BODY)
        server.script(*[Fault.rate_limited("0")] * 100_000)
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET) as transport:
            sender = Sender(store, transport).start()
            time.sleep(seconds)
            sender.stop(5)
        assert store.counts()["queued"] == 1, "the row stays queued, nothing lost"
        return len(server.received) / seconds


def literal_client(seconds: float) -> float:
    """Requests/s of a client that resends when `Retry-After` says it may (0 s: at once)."""
    with LoopbackServer() as server, httpx.Client(timeout=10) as client:
        server.script(*[Fault.rate_limited("0")] * 1_000_000)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            response = client.post(server.event_url, content=BODY.encode())
            assert response.status_code == 429 and response.headers["Retry-After"] == "0"
        return len(server.received) / seconds


def dribbled_send() -> float:
    """Seconds one send takes against a reply dribbled one byte every DRIBBLE_S."""
    with LoopbackServer() as server, CaliperTransport(
        server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET, timeout=TIMEOUT_S
    ) as transport:
        transport.send(envelope("warm-up"), "warm-up")  # the token, so only the send is timed
        server.script(Fault.dribble(DRIBBLE_S))
        started = time.perf_counter()
        outcome = transport.send(BODY, "e0")
        took = time.perf_counter() - started
        assert outcome.status == "retry", outcome
        return took


def dribbled_bare() -> float:
    """Seconds a bare httpx POST with the same timeout takes against the same reply."""
    with LoopbackServer() as server, httpx.Client(timeout=TIMEOUT_S) as client:
        server.script(Fault.none(), Fault.dribble(DRIBBLE_S))
        token = client.post(
            server.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        client.post(server.event_url, content=envelope("warm-up").encode(), headers=headers)
        started = time.perf_counter()
        response = client.post(server.event_url, content=BODY.encode(), headers=headers)
        took = time.perf_counter() - started
        assert response.status_code == 200
        return took


def run(quick: bool) -> list[Row]:
    reps, seconds = (1, 3.0) if quick else (3, 10.0)
    rates, literal, sends, bare = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            literal.append(literal_client(2.0))
            rates.append(rate_limited_sender(Path(tmp), seconds))
            bare.append(dribbled_bare())
            sends.append(dribbled_send())
            print(f"  rep {rep + 1}/{reps}: sender {rates[-1]:.2f} req/s (literal client {literal[-1]:.0f}); "
                  f"dribbled send {sends[-1]:.2f} s (bare httpx {bare[-1]:.2f} s)", file=sys.stderr, flush=True)
    return [
        Row(NAME, f"requests/s while every reply is 429 Retry-After: 0 ({seconds:g} s)", rates,
            Bar("at_most", 1.0), "≤ 1/s: backs off, never resends at once", baseline=median(literal),
            baseline_text="a client that resends when told it may", digits=2),
        Row(NAME, f"one send against a reply dribbled 1 byte / {DRIBBLE_S:g} s, s (timeout {TIMEOUT_S:g} s)", sends,
            Bar("at_most", TIMEOUT_S + 0.1, on="max"), f"≤ {TIMEOUT_S + 0.1:g} s: the timeout is overall",
            baseline=median(bare), baseline_text="bare httpx, same per-operation timeout", digits=2),
    ]
