"""The whole path in one process: start() → page reports → windows → outbox → Caliper transport
(OAuth2, OneRoster look-up) → a real HTTP server on loopback that fails for a while."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import timeback_nb
from timeback_nb.store import Store

from tests.fakes import PingingPage
from tests.loopback import CLIENT_ID, CLIENT_SECRET, LoopbackServer
from tests.schema import validate_envelope

OUTAGE_S = 8.0


@pytest.fixture
def caliper(local_env: Path, monkeypatch: pytest.MonkeyPatch):
    server = LoopbackServer(users=[{"sourcedId": "u-123", "email": "student@example.edu"}]).start()
    monkeypatch.setenv("TIMEBACK_NB_TRANSPORT", "caliper")
    monkeypatch.setenv("TIMEBACK_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("TIMEBACK_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TIMEBACK_CALIPER_URL", server.event_url)
    monkeypatch.setenv("TIMEBACK_AUTH_URL", server.token_url)
    monkeypatch.setenv("TIMEBACK_ONEROSTER_URL", server.oneroster_url)
    yield server
    server.stop()


def test_an_endpoint_outage_loses_nothing_and_sends_every_window_once_in_order(caliper: LoopbackServer) -> None:
    activity = timeback_nb.start("week-3", "Week 3", {"subject": "Math", "grade": 8}, heartbeat_interval=0.25, display=False)
    tab = PingingPage(activity).start()
    time.sleep(1.0)
    caliper.outage(OUTAGE_S)  # every event request now gets a 503
    time.sleep(OUTAGE_S - 1.0)
    during = activity.pending_events
    with Store(os.environ["TIMEBACK_NB_STORE"]) as store:
        queued = store.counts()["queued"]
    assert queued >= 20, "windows pile up in the outbox while the endpoint is down"
    assert during >= queued - 2, "and the activity shows them as they are queued, not at the next retry"
    assert "503" in activity.last_error
    time.sleep(1.5)
    activity.end({"xpEarned": 4, "totalQuestions": 4, "correctQuestions": 3})
    deadline = time.monotonic() + 5
    while not activity.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    tab.stop()
    counts = timeback_nb.flush(timeout=15)
    assert counts["queued"] == 0 and counts["rejected"] == 0

    envelopes = [json.loads(caliper.stored[event_id]) for event_id in caliper.stored_ids]
    events = [e["data"][0] for e in envelopes]
    assert len(caliper.stored_ids) == len(set(caliper.stored_ids))  # no event stored twice
    windows = [e for e in events if e["type"] == "TimeSpentEvent"]
    assert events[-1]["type"] == "ActivityEvent" and len(windows) == len(events) - 1
    assert [w["eventTime"] for w in windows] == sorted(w["eventTime"] for w in windows)  # in order
    assert len(windows) >= OUTAGE_S / 0.25
    active = sum(i["value"] for w in windows for i in w["generated"]["items"] if i["type"] == "active")
    assert round(active * 1000) == activity.elapsed_ms
    assert {e["actor"]["id"].rsplit("/", 1)[1] for e in events} == {"u-123"}  # looked up once, by email
    assert len(caliper.user_requests) == 1
    for envelope in envelopes:
        validate_envelope(envelope)
