"""The SQLite store: schema, runs, attempts, users, outbox leases, local events."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeback_nb.errors import ConfigError, StateError, StoreError, ValidationError
from timeback_nb import store as store_module
from timeback_nb.store import _LEASE_SQL, SCHEMA_VERSION, Store

from .store_faults import StoreFaults


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "nested" / "dir" / "tb.sqlite3") as s:
        yield s


def run_together(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def fill(store: Store, spec: list[tuple[str, str | None]]) -> None:
    for event_id, run_id in spec:
        assert store.enqueue(event_id, "time", run_id, f'{{"id": "{event_id}"}}')


# -- file, schema, lifecycle ---------------------------------------------------------------------


def test_creates_parent_dirs_in_wal_mode_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "tb.sqlite3"
    with Store(path):
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert {"runs", "attempts", "users", "outbox", "events"} <= tables


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "tb.sqlite3"
    with Store(path) as s:
        s.enqueue("e1", "time", "r1", "{}")
    with Store(path) as s:
        assert [e["event_id"] for e in s.events()] == ["e1"]


@pytest.mark.bad_input
def test_a_newer_schema_is_refused_naming_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "tb.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="TIMEBACK_NB_STORE.*newer"):
        Store(path)


@pytest.mark.bad_input
def test_an_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="TIMEBACK_NB_STORE") as info:
        Store(blocker / "tb.sqlite3")
    assert info.value.field == "TIMEBACK_NB_STORE"
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a usable"):
        Store(garbage)


def test_close_is_idempotent_and_use_after_close_is_a_state_error(tmp_path: Path) -> None:
    s = Store(tmp_path / "tb.sqlite3")
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(StateError, match="closed"):
        s.counts()


def test_patience_bounds_the_wait_for_a_lock_and_calls_after_it_wait_the_busy_timeout_again(tmp_path: Path) -> None:
    # The connection's busy_timeout is only set when a call needs another value than the last
    # call did; a call without patience must still get the store's full timeout.
    s = Store(tmp_path / "tb.sqlite3", busy_timeout_ms=1500)

    def waited(call) -> float:
        start = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            call()
        return time.monotonic() - start

    with StoreFaults.locked(s.path):
        with s.patience(0.2):
            assert waited(lambda: s.enqueue("a", "time", None, "{}")) < 1.0
            assert waited(lambda: s.enqueue("b", "time", None, "{}")) < 1.0
        assert waited(lambda: s.enqueue("c", "time", None, "{}")) >= 1.4
        with s.patience(0.2):
            assert waited(lambda: s.lease("me", 0.0, 30, 1)) < 1.0
    assert s.enqueue("d", "time", None, "{}")
    s.close()


# -- runs, attempts, users ---------------------------------------------------------------------


def test_open_run_is_the_newest_run_not_completed(store: Store) -> None:
    assert store.open_run("u1", "week-3", "Math/g8") is None
    store.remember_run("u1", "week-3", "Math/g8", "run-a", "2025-01-15T10:00:00.000Z")
    store.remember_run("u1", "week-3", "Math/g8", "run-b", "2025-01-16T10:00:00.000Z")
    store.remember_run("u2", "week-3", "Math/g8", "run-other-user", "2025-01-16T10:00:00.000Z")
    assert store.open_run("u1", "week-3", "Math/g8") == "run-b"
    store.close_run("run-b", "2025-01-16T11:00:00.000Z")
    assert store.open_run("u1", "week-3", "Math/g8") == "run-a"
    store.close_run("run-a", "2025-01-16T11:00:00.000Z")
    assert store.open_run("u1", "week-3", "Math/g8") is None
    assert store.open_run("u1", "week-3", "CS-101") is None
    runs = store.runs()
    assert [r["run_id"] for r in runs] == ["run-other-user", "run-b", "run-a"]
    assert runs[1]["ended_at"] == "2025-01-16T11:00:00.000Z"
    assert runs[0]["ended_at"] is None


def test_close_run_keeps_the_first_end(store: Store) -> None:
    store.remember_run("u1", "a", "c", "r", "2025-01-15T10:00:00.000Z")
    store.close_run("r", "2025-01-15T11:00:00.000Z")
    store.close_run("r", "2025-01-15T12:00:00.000Z")
    assert store.runs()[0]["ended_at"] == "2025-01-15T11:00:00.000Z"


def test_next_attempt_counts_per_user_and_object(store: Store) -> None:
    assert [store.next_attempt("u1", "obj") for _ in range(3)] == [1, 2, 3]
    assert store.next_attempt("u1", "other") == 1
    assert store.next_attempt("u2", "obj") == 1


def test_next_attempt_is_atomic_across_connections_and_threads(tmp_path: Path) -> None:
    path = tmp_path / "tb.sqlite3"
    stores = [Store(path), Store(path)]
    got: list[int] = []
    lock = threading.Lock()

    def worker(s: Store) -> None:
        for _ in range(25):
            n = s.next_attempt("u", "o")
            with lock:
                got.append(n)

    run_together([threading.Thread(target=worker, args=(stores[i % 2],)) for i in range(4)])
    for s in stores:
        s.close()
    assert sorted(got) == list(range(1, 101))


def test_user_ids_are_cached_per_email_and_env(store: Store) -> None:
    assert store.cached_user_id("a@example.edu", "staging") is None
    store.remember_user_id("a@example.edu", "staging", "u-1")
    store.remember_user_id("a@example.edu", "staging", "u-2")
    assert store.cached_user_id("a@example.edu", "staging") == "u-2"
    assert store.cached_user_id("a@example.edu", "production") is None


# -- outbox ---------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_on_event_id_and_keeps_the_body_exactly(store: Store) -> None:
    body = '{"sensor": "https://x.example",  "data": [ {"id": "é\\u00e9 ✓"} ]}\n'
    assert store.enqueue("e1", "time", "r1", body) is True
    assert store.enqueue("e1", "time", "r1", body.replace("x", "y")) is False
    rows = store.events()
    assert len(rows) == 1 and rows[0]["body"] == body and rows[0]["state"] == "queued"
    assert store.counts() == {"queued": 1, "delivered": 0, "rejected": 0}


def test_enqueue_wants_the_body_as_text(store: Store) -> None:
    with pytest.raises(ValidationError, match="^body: "):
        store.enqueue("e1", "time", None, b"{}")  # type: ignore[arg-type]


def test_lease_claims_oldest_rows_in_seq_order_up_to_the_limit(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r2"), ("e3", "r1"), ("e4", None)])
    assert [r.event_id for r in store.lease("A", 100.0, 15, 2)] == ["e1", "e2"]
    assert [r.event_id for r in store.lease("B", 100.0, 15, 10)] == ["e4"]  # e3 waits behind A's e1
    assert store.lease("C", 100.0, 15, 10) == []
    # A asking again gets its own rows back and the rest of its runs
    assert [r.event_id for r in store.lease("A", 101.0, 15, 10)] == ["e1", "e2", "e3"]


def test_an_expired_lease_is_taken_over(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r1")])
    assert len(store.lease("dead", 100.0, 15, 10)) == 2
    assert store.lease("B", 114.9, 15, 10) == []
    assert [r.event_id for r in store.lease("B", 115.0, 15, 10)] == ["e1", "e2"]


def test_renew_extends_only_the_owners_leases(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r2")])
    rows = store.lease("A", 100.0, 15, 10)
    assert store.renew("A", [r.event_id for r in rows], 110.0, 15) == 2
    assert store.renew("B", [r.event_id for r in rows], 110.0, 15) == 0
    assert store.lease("B", 120.0, 15, 10) == []  # would have expired at 115 without renewal
    assert len(store.lease("B", 125.0, 15, 10)) == 2


def test_release_frees_rows_at_once(store: Store) -> None:
    fill(store, [("e1", "r1")])
    rows = store.lease("A", 100.0, 15, 10)
    store.release("B", [r.event_id for r in rows])  # not B's to release
    assert store.lease("B", 100.0, 15, 10) == []
    store.release("A", [r.event_id for r in rows])
    assert [r.event_id for r in store.lease("B", 100.0, 15, 10)] == ["e1"]


def test_a_row_waiting_for_retry_holds_back_its_run_only(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r1"), ("e3", "r2")])
    first = store.lease("A", 100.0, 15, 1)[0]
    store.mark_retry(first.event_id, "[503] down", 130.0, owner="A")
    assert [r.event_id for r in store.lease("A", 101.0, 15, 10)] == ["e3"]
    assert [r.event_id for r in store.lease("B", 129.0, 15, 10)] == ["e3"]  # A's lease ran out
    again = store.lease("B", 130.0, 15, 10)
    assert [(r.event_id, r.attempts) for r in again] == [("e1", 1), ("e2", 0), ("e3", 0)]
    row = store.events()[0]
    assert row["reason"] == "[503] down" and row["attempts"] == 1 and row["state"] == "queued"


def test_mark_retry_does_not_undo_another_owners_takeover(store: Store) -> None:
    fill(store, [("e1", "r1")])
    event_id = store.lease("A", 100.0, 15, 1)[0].event_id
    assert store.lease("B", 200.0, 15, 1)[0].event_id == event_id  # A's lease ran out; B took over
    store.mark_retry(event_id, "late failure", 300.0, owner="A")
    assert store.lease("C", 201.0, 15, 1) == []  # still B's
    assert store.events()[0]["attempts"] == 0


def test_finished_rows_are_never_leased_and_states_are_final(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r1"), ("e3", "r2")])
    rows = store.lease("A", 100.0, 15, 10)
    store.mark_delivered(rows[0].event_id)
    store.mark_rejected(rows[1].event_id, "[400] bad event")
    store.mark_retry(rows[0].event_id, "too late", 500.0)  # a delivered row stays delivered
    assert store.counts() == {"queued": 1, "delivered": 1, "rejected": 1}
    assert [r.event_id for r in store.lease("B", 100.0, 15, 10)] == []  # e3 still A's
    assert [r.event_id for r in store.lease("A", 100.0, 15, 10)] == ["e3"]
    rejected = store.events(state="rejected")
    assert [(e["event_id"], e["reason"], e["attempts"]) for e in rejected] == [("e2", "[400] bad event", 1)]


def test_a_rejected_row_does_not_block_the_rest_of_its_run(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r1")])
    first = store.lease("A", 100.0, 15, 1)[0]
    store.mark_rejected(first.event_id, "[422] invalid")
    assert [r.event_id for r in store.lease("B", 100.0, 15, 10)] == ["e2"]


def test_park_keeps_an_unsendable_record_as_rejected(store: Store) -> None:
    assert store.park("raw:1", "record", "r1", '{"x": 1}', "ValueError: no sensor") is True
    assert store.lease("A", 100.0, 15, 10) == []
    assert store.events(state="rejected")[0]["reason"] == "ValueError: no sensor"


def test_expedite_cuts_retry_delays_but_not_live_leases(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r2")])
    rows = store.lease("A", 100.0, 15, 10)
    store.mark_retry(rows[0].event_id, "down", 1000.0, owner="A")
    assert store.next_due(101.0) == 115.0  # e2's lease ends first
    assert store.expedite(101.0) == 1
    assert store.next_due(101.0) == 115.0
    assert [r.event_id for r in store.lease("B", 101.0, 15, 10)] == ["e1"]


def test_next_due_is_when_a_lease_or_delay_ends(store: Store) -> None:
    assert store.next_due(100.0) is None
    fill(store, [("e1", "r1"), ("e2", "r1")])
    assert store.next_due(100.0) == 100.0  # free now
    store.lease("A", 100.0, 15, 1)
    assert store.next_due(101.0) == 115.0  # e2 is free but waits behind A's e1
    assert store.next_due(116.0) == 116.0


def test_counts_can_be_limited_to_older_rows(store: Store) -> None:
    fill(store, [("e1", "r1"), ("e2", "r1"), ("e3", "r1")])
    last = store.last_seq()
    fill(store, [("e4", "r1")])
    assert store.counts(max_seq=last)["queued"] == 3
    assert store.counts()["queued"] == 4


def test_events_lists_the_newest_rows_in_seq_order_and_checks_arguments(store: Store) -> None:
    fill(store, [(f"e{i}", "r1") for i in range(5)])
    assert [e["event_id"] for e in store.events(limit=2)] == ["e3", "e4"]
    assert [e["event_id"] for e in store.events(state="queued", limit=10)] == [f"e{i}" for i in range(5)]
    with pytest.raises(ValidationError, match="^state: .*queued, delivered, rejected"):
        store.events(state="sent")
    with pytest.raises(ValidationError, match="^limit: "):
        store.events(limit=-1)


def test_local_events_keep_bytes_exactly_and_ignore_replays(store: Store) -> None:
    body = '{"a":1,  "b":"ü"}'
    assert store.store_local_event("e1", body) is True
    assert store.store_local_event("e1", '{"other": true}') is False
    assert store.store_local_event("e2", "{}") is True
    events = store.local_events()
    assert [(e["event_id"], e["body"]) for e in events] == [("e1", body), ("e2", "{}")]
    assert [e["event_id"] for e in store.local_events(limit=1)] == ["e2"]


def test_leasing_walks_the_queue_in_seq_order_without_sorting_it(store: Store) -> None:
    plan = " | ".join(
        str(r[3]) for r in store._conn.execute(f"EXPLAIN QUERY PLAN {_LEASE_SQL}", {"owner": "A", "now": 1.0, "limit": 5})
    )
    assert "SCAN o USING INDEX outbox_queued" in plan and "TEMP B-TREE" not in plan
    assert "SEARCH p USING INDEX outbox_queued_run" in plan


def test_two_connections_leasing_at_once_never_share_a_row(tmp_path: Path) -> None:
    path = tmp_path / "tb.sqlite3"
    with Store(path) as s:
        fill(s, [(f"e{i}", f"r{i % 7}") for i in range(200)])
    stores = [Store(path), Store(path)]
    claimed: dict[str, list[int]] = {"A": [], "B": []}

    def worker(owner: str, s: Store) -> None:
        while True:
            rows = s.lease(owner, 100.0, 15, 3)
            if not rows:
                return
            for r in rows:
                claimed[owner].append(r.seq)
                s.mark_delivered(r.event_id)

    run_together([threading.Thread(target=worker, args=(o, s)) for o, s in zip("AB", stores)])
    for s in stores:
        s.close()
    assert sorted(claimed["A"] + claimed["B"]) == sorted(set(claimed["A"] + claimed["B"]))
    assert len(claimed["A"]) + len(claimed["B"]) == 200


# -- a model of two senders and crashes ------------------------------------------------------------

step = st.tuples(
    st.sampled_from("AB"),  # who acts
    st.sampled_from(["ok", "ok", "retry", "reject", "crash"]),  # what happens to its next row
    st.integers(1, 3),  # lease limit
    st.sampled_from([0, 0, 1, 6, 20]),  # seconds that pass afterwards
)


def expected_lease(model: dict[int, dict], who: str, now: float, limit: int) -> list[int]:
    """The leasing rule, written out plainly: oldest first; a row is free when nobody holds it,
    its lease or retry delay ran out, or `who` holds it; a run stops at its first row not free."""

    def free(r: dict) -> bool:
        return r["until"] is None or r["until"] <= now or r["owner"] == who

    stopped: set[str] = set()
    picked: list[int] = []
    for seq in sorted(model):
        r = model[seq]
        if r["state"] != "queued" or r["run"] in stopped:
            continue
        if free(r):
            picked.append(seq)
        elif r["run"] is not None:
            stopped.add(r["run"])
    return picked[:limit]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, max_size=40), st.lists(st.sampled_from(["r1", "r1", "r2", None]), min_size=2, max_size=6))
def test_leases_follow_the_rule_keep_rows_exclusive_and_runs_in_order(
    tmp_path: Path, steps: list, runs: list
) -> None:
    """Two senders that lease, work in order (stopping at a retry), crash and wait: each lease is
    what the rule says, a row is never held by both at once, nothing is delivered twice, and
    each run is delivered in seq order."""
    path = tmp_path / f"model-{uuid.uuid4().hex}.sqlite3"  # hypothesis reuses tmp_path
    lease_s = 15.0
    with Store(path) as s:
        for i, run in enumerate(runs):
            s.enqueue(f"e{i}", "time", run, "{}")
        model = {i + 1: {"run": run, "state": "queued", "owner": None, "until": None} for i, run in enumerate(runs)}
        eid = {seq: f"e{seq - 1}" for seq in model}.__getitem__  # the model counts rows by seq
        now = 1000.0
        held: dict[str, list[int]] = {"A": [], "B": []}
        since: dict[str, float] = {"A": 0.0, "B": 0.0}
        delivered: list[int] = []
        for who, outcome, limit, tick in steps:
            other = "B" if who == "A" else "A"
            if held[who] and now - since[who] >= lease_s:
                held[who] = []  # a real sender renews; this one lost its lease and moves on
            if not held[who]:
                want = expected_lease(model, who, now, limit)
                held[who], since[who] = [r.seq for r in s.lease(who, now, lease_s, limit)], now
                assert held[who] == want
                for seq in want:
                    model[seq].update(owner=who, until=now + lease_s)
                if now - since[other] < lease_s:
                    assert not set(held[who]) & set(held[other])
            elif outcome == "crash":
                held[who] = []
            else:
                seq = held[who].pop(0)
                if outcome == "ok":
                    assert seq not in delivered
                    delivered.append(seq)
                    s.mark_delivered(eid(seq))
                    model[seq].update(state="delivered", owner=None, until=None)
                elif outcome == "reject":
                    s.mark_rejected(eid(seq), "no")
                    model[seq].update(state="rejected", owner=None, until=None)
                else:
                    s.mark_retry(eid(seq), "later", now + 30, owner=who)
                    if model[seq]["owner"] in (None, who):
                        model[seq].update(owner=None, until=now + 30)
                    s.release(who, [eid(seq) for seq in held[who]])
                    for rest in held[who]:
                        if model[rest]["owner"] == who:
                            model[rest].update(owner=None, until=None)
                    held[who] = []
            now += tick
        for run in {r for r in runs if r is not None}:
            order = [seq for seq in delivered if model[seq]["run"] == run]
            assert order == sorted(order)


def test_a_version_1_store_is_migrated_and_its_runs_stay_resumable(tmp_path) -> None:
    import sqlite3

    from timeback_nb import store as store_module

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(store_module._MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO runs (run_id, user_key, activity_id, course_key, started_at, created)"
        " VALUES ('r-1', 'u', 'a', 'c', '2025-01-15T10:00:00.000Z', 1.0)"
    )
    conn.commit()
    conn.close()
    with store_module.Store(path) as migrated:
        assert migrated.open_run("u", "a", "c") == "r-1"
        migrated.remember_run("u", "a", "c", "r-2", "2025-01-15T11:00:00.000Z", stateful=False)
        assert migrated.open_run("u", "a", "c") == "r-1"
        assert [r["run_id"] for r in migrated.runs()] == ["r-2", "r-1"]


# -- a store file replaced under a sender ------------------------------------------------------


def replace_with_another_processs_file(path: Path) -> None:
    """What another process does when it finds the file gone: it makes a new one at the path and
    queues an event of its own there, which takes the lowest row number."""
    StoreFaults.delete(path)
    with Store(path) as other:
        assert other.enqueue("other", "time", "r9", '{"id": "other"}')


def outbox_rows(path: Path) -> dict[str, tuple]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT event_id, state, attempts, reason, lease_owner FROM outbox").fetchall()
    return {r[0]: r[1:] for r in rows}


@pytest.fixture
def replaced(tmp_path: Path):
    """A store whose sender "A" leased e1 and e2, after which the file was replaced by another
    process and this store followed it (a kernel's write): e1..e3 were carried over, under new
    row numbers."""
    path = tmp_path / "tb.sqlite3"
    with Store(path) as s:
        fill(s, [("e1", "r1"), ("e2", "r2"), ("e3", "r3")])
        leased = s.lease("A", 100.0, 15, 2)
        assert [r.event_id for r in leased] == ["e1", "e2"]
        replace_with_another_processs_file(path)
        assert s.enqueue("e4", "time", "r4", '{"id": "e4"}')  # follows the file
        assert s.last_seq() == 5 and set(outbox_rows(path)) == {"other", "e1", "e2", "e3", "e4"}
        yield s, leased, path


def test_marks_after_the_file_was_replaced_land_on_the_leased_events_only(replaced) -> None:
    store, leased, path = replaced
    store.mark_delivered_many([r.event_id for r in leased])  # as the Sender does after a 2xx
    rows = outbox_rows(path)
    assert rows["other"] == ("queued", 0, None, None), "never sent, so it must not be delivered"
    assert {e for e, r in rows.items() if r[0] == "delivered"} == {"e1", "e2"}


def test_a_rejection_or_retry_after_the_file_was_replaced_lands_on_the_leased_event_only(replaced) -> None:
    store, (first, second), path = replaced
    store.mark_rejected(first.event_id, "[422] invalid")
    store.mark_retry(second.event_id, "[503] down", 130.0, owner="A")
    rows = outbox_rows(path)
    assert rows["other"] == ("queued", 0, None, None)
    assert rows["e1"] == ("rejected", 1, "[422] invalid", None)
    assert rows["e2"] == ("queued", 1, "[503] down", None)
    assert rows["e3"][:3] == ("queued", 0, None)


def test_renew_and_release_after_the_file_was_replaced_touch_the_leased_events_only(replaced) -> None:
    store, (first, second), path = replaced
    assert store.renew("A", [first.event_id, second.event_id], 110.0, 15) == 2
    store.release("A", [second.event_id])  # e1 is still being sent: it stays A's
    assert [r.event_id for r in store.lease("B", 120.0, 15, 10)] == ["other", "e2", "e3", "e4"]


def test_a_batch_is_marked_delivered_in_one_statement_per_500_events(tmp_path: Path) -> None:
    updates: list[str] = []

    def connect(path: Path, timeout: float) -> sqlite3.Connection:
        conn = store_module._connect(path, timeout)
        conn.set_trace_callback(lambda sql: updates.append(sql) if sql.startswith("UPDATE outbox SET state") else None)
        return conn

    with Store(tmp_path / "tb.sqlite3", connect=connect) as store:
        ids = [f"e{i}" for i in range(1001)]
        assert store.enqueue_rows([(i, "time", None, "{}") for i in ids]) == 1001
        store.mark_delivered_many(ids)
        assert store.counts() == {"queued": 0, "delivered": 1001, "rejected": 0}
    assert len(updates) == 3


def test_marks_want_event_ids_not_row_numbers(store: Store) -> None:
    fill(store, [("e1", "r1")])
    [row] = store.lease("A", 100.0, 15, 1)
    for mark in (lambda: store.mark_delivered_many([row.seq]), lambda: store.mark_rejected(row.seq, "no"),
                 lambda: store.mark_retry(row.seq, "later", 130.0), lambda: store.renew("A", [row.seq], 110.0, 15)):
        with pytest.raises(ValidationError, match="^event_id: must be the event id as str"):
            mark()
    assert store.events()[0]["state"] == "queued" and store.events()[0]["attempts"] == 0


# What each call on a batch of leased rows costs must not grow with the rows still queued
# behind it: a relay or an offline kernel can hold tens of thousands. Counted in SQLite VM
# steps (a progress handler), which do not depend on the machine's speed.
BATCH_CALLS = {
    "lease": lambda store, ids: store.lease("A", 100.0, 15, len(ids)),
    "renew": lambda store, ids: store.renew("A", ids, 101.0, 15),
    "release": lambda store, ids: store.release("A", ids),
    "mark_delivered_many": lambda store, ids: store.mark_delivered_many(ids),
    "mark_rejected": lambda store, ids: [store.mark_rejected(i, "no") for i in ids],
    "mark_retry": lambda store, ids: [store.mark_retry(i, "later", 130.0, owner="A") for i in ids],
    "any_queued": lambda store, ids: store.any_queued(max_seq=1),
}


def _steps_for(tmp_path: Path, call: str, backlog: int) -> int:
    steps = [0]
    counting = [False]

    def count() -> int:
        if counting[0]:
            steps[0] += 1
        return 0

    def connect(path: Path, timeout: float) -> sqlite3.Connection:
        conn = store_module._connect(path, timeout)
        conn.set_progress_handler(count, 100)
        return conn

    with Store(tmp_path / f"{call}-{backlog}.sqlite3", connect=connect) as store:
        store.enqueue_rows([(f"e{i}", "time", f"r{i % 50}", "{}") for i in range(backlog)])
        ids = [row.event_id for row in store.lease("A", 100.0, 15, 100)] if call != "lease" else [""] * 100
        counting[0] = True
        BATCH_CALLS[call](store, ids)
    return steps[0]


@pytest.mark.parametrize("call", sorted(BATCH_CALLS))
def test_calls_on_a_batch_cost_the_same_behind_a_large_backlog(tmp_path: Path, call: str) -> None:
    small, large = _steps_for(tmp_path, call, 200), _steps_for(tmp_path, call, 20_000)
    assert large <= 2 * small + 50, f"{call}: {small} VM steps (x100) behind 200 queued rows, {large} behind 20,000"
