"""Records → outbox → a real HTTP endpoint on 127.0.0.1, through every fault worth surviving;
a kernel killed with SIGKILL; two processes draining one store; identity; secrets."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from timeback_nb import events
from timeback_nb.clock import iso_utc_ms
from timeback_nb.config import Settings
from timeback_nb.delivery import Delivery
from timeback_nb.errors import ConfigError, DeliveryError
from timeback_nb.events import Target
from timeback_nb.identity import resolve_user
from timeback_nb.outbox import Backoff, Sender
from timeback_nb.records import ActivityRef, Completion, TimeWindow
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport

from .crash_worker import envelope, event_id
from .fakes import FakeClock
from .loopback import CLIENT_ID, CLIENT_SECRET, Fault, LoopbackServer
from .test_events import TARGET

WORKER = Path(__file__).with_name("crash_worker.py")
RUN = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
REF = ActivityRef("week-3", "Week 3: Linear functions", {"subject": "Math", "grade": 8})
T0 = 1_736_935_200_000  # 2025-01-15T10:00:00.000Z
FAST = Backoff(base=0.02, cap=0.2)


def target(**changes: Any) -> Target:
    return dataclasses.replace(TARGET, **changes)  # the protocol reference's example student and course


def window(i: int, run: str = RUN) -> TimeWindow:
    start = T0 + i * 15_000
    return TimeWindow(REF, run, iso_utc_ms(start), iso_utc_ms(start + 15_000), 13_500, 1_500)


def completion(ended_ms: int, run: str | None = RUN) -> Completion:
    return Completion(REF, run, iso_utc_ms(ended_ms), {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8})


class NotingSender:
    """Stands in for a Sender: counts wake-ups, keeps what it is told."""

    def __init__(self) -> None:
        self.woken = 0
        self.notes: list[str] = []

    def wake(self) -> None:
        self.woken += 1

    def note_error(self, message: str, *, passes: bool = False) -> None:
        self.notes.append(f"{'passes' if passes else 'stays'}: {message}")


class Pipeline:
    """Delivery + Sender + CaliperTransport over one store, as a kernel wires them."""

    def __init__(self, tmp_path: Path, server: LoopbackServer, *, timeout: float = 2.0) -> None:
        self.clock = FakeClock(wall_ms=T0)
        self.store = Store(tmp_path / "tb.sqlite3")
        self.transport = CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET, timeout=timeout)
        self.sender = Sender(self.store, self.transport, backoff=FAST)
        self.delivery = Delivery(target(), self.store, self.sender, clock=self.clock)

    def close(self) -> None:
        self.sender.stop(5)
        self.transport.close()
        self.store.close()


@pytest.fixture
def server():
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def pipeline(tmp_path: Path, server: LoopbackServer):
    p = Pipeline(tmp_path, server, timeout=0.5)
    yield p
    p.close()


def assert_delivered_once_in_order(store: Store, server: LoopbackServer) -> None:
    rows = store.events()
    assert rows and {r["state"] for r in rows} == {"delivered"}
    assert server.stored_ids == [r["event_id"] for r in rows]  # all, once each, in order
    for r in rows:
        assert server.stored[r["event_id"]] == r["body"].encode("utf-8")  # the committed bytes
        request_ids = {x.request_id for x in server.received if x.event_id == r["event_id"]}
        assert len(request_ids) == 1 and len(request_ids.pop() or "") == 8


# -- Delivery: records become committed events -----------------------------------------------------


def test_emit_commits_the_envelope_before_any_send(tmp_path: Path) -> None:
    store = Store(tmp_path / "tb.sqlite3")
    sender = NotingSender()
    clock = FakeClock(wall_ms=T0 + 15_042)
    delivery = Delivery(target(), store, sender, clock=clock)  # type: ignore[arg-type]
    delivery.emit(window(0))
    expected = events.time_spent_envelope(window(0), target(), send_time="2025-01-15T10:00:15.042Z")
    [row] = store.events()
    assert row["body"] == events.dumps(expected)
    assert (row["event_id"], row["kind"], row["run_id"], row["state"]) == (
        events.event_id(expected),
        "time",
        RUN,
        "queued",
    )
    assert sender.woken == 1 and sender.notes == []
    clock.advance(5_000)
    delivery.emit(window(0))  # the same window again: the same id, not a second row
    assert len(store.events()) == 1
    store.close()


def test_completions_get_attempt_numbers_and_a_replay_uses_none(tmp_path: Path, server: LoopbackServer) -> None:
    p = Pipeline(tmp_path, server)
    try:
        p.delivery.emit(completion(T0 + 60_000))
        p.delivery.emit(completion(T0 + 60_000))  # replayed
        p.delivery.emit(completion(T0 + 120_000, run=None))
        bodies = [json.loads(r["body"]) for r in p.store.events()]
        assert [b["data"][0]["generated"]["attempt"] for b in bodies] == [1, 2]
        assert [r["kind"] for r in p.store.events()] == ["completion", "completion"]
        assert p.sender.flush(5) == {"delivered": 2, "queued": 0, "rejected": 0}
    finally:
        p.close()


def test_an_event_that_cannot_be_built_is_kept_as_rejected(tmp_path: Path) -> None:
    store = Store(tmp_path / "tb.sqlite3")
    sender = NotingSender()
    delivery = Delivery(target(sensor="not a url"), store, sender)  # type: ignore[arg-type]
    delivery.emit(window(0))  # must not raise
    delivery.emit(window(0))
    [row] = store.events()
    assert row["state"] == "rejected" and row["kind"] == "time" and row["run_id"] == RUN
    assert json.loads(row["body"]) == window(0).as_body()
    assert row["reason"].startswith("not sent: no event could be built (ConfigError: ")
    assert sender.notes and sender.notes[0] == f"stays: {row['reason']}" and delivery.last_error == row["reason"]
    store.close()


def test_something_that_is_no_record_is_reported_not_raised(tmp_path: Path) -> None:
    with Store(tmp_path / "tb.sqlite3") as store:
        sender = NotingSender()
        delivery = Delivery(target(), store, sender)  # type: ignore[arg-type]
        delivery.emit({"startedAt": "2025-01-15T10:00:00.000Z"})  # type: ignore[arg-type]
        delivery.emit(window(0))
        assert sender.notes == ["stays: record: expected a TimeWindow or a Completion, got dict"]
        assert [r["state"] for r in store.events()] == ["queued"] and delivery.pending == 0


# -- the endpoint misbehaves; everything still arrives once, in order -------------------------------


def scenario_outage(server: LoopbackServer) -> None:
    server.outage(0.6)


def scenario_rate_limit(server: LoopbackServer) -> None:
    server.script(Fault.reply(429, {"message": "slow down"}, {"Retry-After": "1"}))


def scenario_token_revoked(server: LoopbackServer) -> None:
    server.script(Fault.none(), Fault.revoke_token())


def scenario_reply_lost(server: LoopbackServer) -> None:
    server.script(Fault.none(), Fault.drop_after_store(), Fault.drop_after_store())


def scenario_slow(server: LoopbackServer) -> None:
    server.script(Fault.slow(1.5))


@pytest.mark.parametrize(
    "scenario", [scenario_outage, scenario_rate_limit, scenario_token_revoked, scenario_reply_lost, scenario_slow]
)
def test_every_event_arrives_once_and_in_order(pipeline: Pipeline, server: LoopbackServer, scenario) -> None:
    scenario(server)
    pipeline.sender.start()
    for i in range(6):
        pipeline.delivery.emit(window(i))
        pipeline.clock.advance(15_000)
    pipeline.delivery.emit(completion(T0 + 90_000))
    assert pipeline.sender.flush(15)["queued"] == 0
    assert pipeline.store.counts() == {"queued": 0, "delivered": 7, "rejected": 0}
    assert_delivered_once_in_order(pipeline.store, server)
    if scenario is not scenario_slow:  # there the server still works on the request the client gave up on
        assert server.concurrent_duplicates == []


def test_retry_after_is_honoured_end_to_end(pipeline: Pipeline, server: LoopbackServer) -> None:
    scenario_rate_limit(server)
    pipeline.delivery.emit(window(0))
    pipeline.sender.flush(10)
    first, second = [r.at for r in server.received]
    assert second - first >= 0.95


def test_a_rejected_event_is_parked_and_the_run_goes_on(pipeline: Pipeline, server: LoopbackServer) -> None:
    server.script(Fault.none(), Fault.reply(422, {"message": "actor.email required"}))
    for i in range(3):
        pipeline.delivery.emit(window(i))
    assert pipeline.sender.flush(10) == {"delivered": 2, "queued": 0, "rejected": 1}
    rejected = pipeline.store.events(state="rejected")
    assert [r["reason"] for r in rejected] == ["[422] actor.email required"]
    assert pipeline.sender.last_error == "[422] actor.email required"
    assert len(server.stored_ids) == 2


# -- a kernel killed with SIGKILL; two kernels on one store ----------------------------------------


def worker_env() -> dict[str, str]:
    env = dict(os.environ, TB_TEST_CLIENT_ID=CLIENT_ID, TB_TEST_CLIENT_SECRET=CLIENT_SECRET)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")]))
    return env


def drain(
    store: Path, server: LoopbackServer, *, timeout: float = 20, batch: int = 100, wait: bool = False
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), "drain", str(store), server.event_url, server.token_url,
         "--timeout", str(timeout), "--batch", str(batch), *(["--wait"] if wait else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_env(), text=True,
    )  # fmt: skip


@pytest.mark.parametrize("down", ["refused", "hanging"])
def test_a_killed_kernels_events_are_delivered_by_the_next_one(tmp_path: Path, server: LoopbackServer, down: str) -> None:
    """The producer's endpoint refuses connections, or hangs so that it holds a lease when it
    dies. Every event it committed is delivered by the next process; at most the one interval
    in progress is lost."""
    path = tmp_path / "tb.sqlite3"
    interval = 0.05
    with LoopbackServer(delay=30) as hanging:
        if down == "refused":
            hanging.stop()  # nothing listens on its port any more
        producer = subprocess.Popen(
            [sys.executable, str(WORKER), "produce", str(path), hanging.event_url, hanging.token_url,
             "--interval", str(interval), "--lease", "1", "--run", RUN],
            stdout=subprocess.PIPE, env=worker_env(), text=True,
        )  # fmt: skip
        assert producer.stdout is not None
        committed: list[tuple[str, float]] = []
        for line in producer.stdout:
            _, event_id, at = line.split()
            committed.append((event_id, float(at)))
            if len(committed) == 20:
                break
        killed_at = time.monotonic()
        producer.send_signal(signal.SIGKILL)
        rest, _ = producer.communicate(timeout=10)
        committed += [(line.split()[1], float(line.split()[2])) for line in rest.splitlines()]
    assert producer.returncode == -signal.SIGKILL
    # What dies with the process is the interval in progress (plus scheduling delay on a busy box).
    assert killed_at - committed[-1][1] <= interval + 0.5

    with Store(path) as store:
        queued = [r["event_id"] for r in store.events()]
        assert {r["state"] for r in store.events()} == {"queued"}
    ids = [event_id for event_id, _ in committed]
    assert queued[: len(ids)] == ids and len(queued) - len(ids) <= 1  # committed, maybe not yet printed

    nxt = drain(path, server, timeout=20)
    out, _ = nxt.communicate(timeout=60)
    result = json.loads(out)
    assert result["flush"] == {"delivered": len(queued), "queued": 0, "rejected": 0}
    assert server.stored_ids == queued
    assert server.concurrent_duplicates == []


def test_two_processes_draining_one_store_never_send_an_event_twice(tmp_path: Path) -> None:
    path = tmp_path / "tb.sqlite3"
    runs = [f"run-{r}" for r in range(8)]
    with Store(path) as store:
        for n in range(25):
            for run in runs:
                store.enqueue(event_id(run, n), "time", run, envelope(run, n))
        expected = [r["event_id"] for r in store.events()]
    with LoopbackServer(delay=0.01) as server:
        workers = [drain(path, server, timeout=30, batch=5, wait=True) for _ in range(2)]
        for w in workers:  # both are up, then both go
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [json.loads(w.communicate(timeout=90)[0]) for w in workers]
        assert server.concurrent_duplicates == []
        assert sorted(server.received_ids()) == sorted(expected)  # never twice at all
        assert sorted(server.stored_ids) == sorted(expected)
        for run in runs:  # each run in its own order
            mine = [e for e in server.stored_ids if e in {event_id(run, n) for n in range(25)}]
            assert mine == [event_id(run, n) for n in range(25)]
    assert sum(r["sent"] for r in results) == 200
    assert all(r["sent"] > 0 for r in results)  # both really worked
    assert all(r["flush"]["queued"] == 0 for r in results)


# -- identity ------------------------------------------------------------------------------------


def settings_for(server: LoopbackServer, tmp_path: Path, **env: str) -> Settings:
    base = {
        "TIMEBACK_NB_STORE": str(tmp_path / "tb.sqlite3"),
        "TIMEBACK_CLIENT_ID": CLIENT_ID,
        "TIMEBACK_CLIENT_SECRET": CLIENT_SECRET,
        "TIMEBACK_CALIPER_URL": server.event_url,
        "TIMEBACK_AUTH_URL": server.token_url,
        "TIMEBACK_ONEROSTER_URL": server.oneroster_url,
    }
    base.update(env)
    return Settings.from_env({k: v for k, v in base.items() if v})


@pytest.fixture
def roster():
    users = [
        {"sourcedId": "u-123", "email": "student@example.edu"},
        {"sourcedId": "u-a", "email": "twin@example.edu"},
        {"sourcedId": "u-b", "email": "twin@example.edu"},
    ]
    with LoopbackServer(users=users) as s:
        yield s


def test_an_explicit_user_or_the_environment_needs_no_lookup(roster: LoopbackServer, tmp_path: Path) -> None:
    settings = settings_for(roster, tmp_path, TIMEBACK_USER_EMAIL="env@example.edu", TIMEBACK_USER_ID="u-env")
    with Store(settings.store_path) as store:
        assert resolve_user({"email": "a@example.edu", "id": "u-a"}, settings, store) == ("a@example.edu", "u-a")
        assert resolve_user(None, settings, store) == ("env@example.edu", "u-env")
        assert resolve_user({"email": "env@example.edu", "id": None}, settings, store) == ("env@example.edu", "u-env")
    assert roster.user_requests == [] and roster.token_requests == []


def test_an_email_is_looked_up_once_and_remembered(roster: LoopbackServer, tmp_path: Path) -> None:
    settings = settings_for(roster, tmp_path, TIMEBACK_USER_EMAIL="student@example.edu")
    with Store(settings.store_path) as store:
        assert resolve_user(None, settings, store) == ("student@example.edu", "u-123")
        assert resolve_user({"email": "student@example.edu", "id": None}, settings, store)[1] == "u-123"
        assert store.cached_user_id("student@example.edu", "staging") == "u-123"
    [request] = roster.user_requests
    assert request["query"] == {"filter": ["email='student@example.edu'"], "limit": ["2"]}
    assert request["auth"] == f"Bearer {roster.issued[0]}"
    assert len(roster.token_requests) == 1 and roster.token_requests[0]["auth_ok"]


def test_the_lookup_reuses_a_given_transport_and_its_token(roster: LoopbackServer, tmp_path: Path) -> None:
    settings = settings_for(roster, tmp_path)
    with Store(settings.store_path) as store, CaliperTransport(
        roster.event_url, roster.token_url, CLIENT_ID, CLIENT_SECRET
    ) as transport:
        transport.send(envelope_text := '{"data":[{"id":"e1"}]}', "e1")
        assert envelope_text
        assert resolve_user({"email": "student@example.edu", "id": None}, settings, store, transport=transport) == (
            "student@example.edu",
            "u-123",
        )
    assert len(roster.token_requests) == 1


@pytest.mark.parametrize(("email", "what"), [("nobody@example.edu", "no OneRoster user"), ("twin@example.edu", "several")])
@pytest.mark.bad_input
def test_no_match_or_several_name_timeback_user_id(roster: LoopbackServer, tmp_path: Path, email: str, what: str) -> None:
    settings = settings_for(roster, tmp_path)
    with Store(settings.store_path) as store:
        with pytest.raises(ConfigError, match=f"^TIMEBACK_USER_ID: {what}") as info:
            resolve_user({"email": email, "id": None}, settings, store)
        assert info.value.field == "TIMEBACK_USER_ID"
        assert store.cached_user_id(email, "staging") is None


def test_a_failed_lookup_says_how_to_skip_it_and_shows_no_secret(roster: LoopbackServer, tmp_path: Path) -> None:
    settings = settings_for(roster, tmp_path)
    roster.script_token(Fault.reply(503, {"error": f"down {CLIENT_SECRET}"}))
    with Store(settings.store_path) as store:
        with pytest.raises(DeliveryError, match="set TIMEBACK_USER_ID to skip it") as info:
            resolve_user({"email": "student@example.edu", "id": None}, settings, store)
    assert CLIENT_SECRET not in str(info.value)


@pytest.mark.bad_input
def test_caliper_without_an_email_is_a_config_error(roster: LoopbackServer, tmp_path: Path) -> None:
    settings = settings_for(roster, tmp_path)
    with Store(settings.store_path) as store, pytest.raises(ConfigError, match="^TIMEBACK_USER_EMAIL: "):
        resolve_user(None, settings, store)


def test_local_mode_without_a_user_is_the_login(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "ada lovelace")
    settings = Settings.from_env({"TIMEBACK_NB_STORE": str(tmp_path / "tb.sqlite3")})
    with Store(settings.store_path) as store:
        assert resolve_user(None, settings, store) == ("ada-lovelace@localhost", "local-ada-lovelace")
        assert resolve_user({"email": "a@example.edu", "id": None}, settings, store) == (
            "a@example.edu",
            "local-a@example.edu",
        )


# -- secrets --------------------------------------------------------------------------------------


def test_no_secret_or_token_reaches_the_store_file(tmp_path: Path, server: LoopbackServer) -> None:
    p = Pipeline(tmp_path, server, timeout=0.5)
    try:
        server.script(Fault.revoke_token(), Fault.reply(401, ""), Fault.reply(401, ""), Fault.reply(500, CLIENT_SECRET))
        for i in range(5):
            p.delivery.emit(window(i))
        resolve_user(
            None,
            settings_for(server, tmp_path, TIMEBACK_USER_EMAIL="student@example.edu", TIMEBACK_USER_ID="u-123"),
            p.store,
        )
        assert p.sender.flush(10)["delivered"] == 5
        assert all(CLIENT_SECRET not in (r["reason"] or "") for r in p.store.events())
    finally:
        p.close()
    tokens = server.issued
    assert len(tokens) >= 2
    files = list(tmp_path.glob("tb.sqlite3*"))
    assert files
    for f in files:
        data = f.read_bytes()
        for secret in [CLIENT_SECRET, *tokens]:
            assert secret.encode() not in data
