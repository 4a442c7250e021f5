"""The relay's retention: what pruning removes and keeps, in chunks, against an injected clock;
what a resent event older than the retention gets; `--retention-days` refused by name; and
one relay process per store, with real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from timeback_nb.errors import ConfigError
from timeback_nb.relay import Relay, RelayOptions
from timeback_nb.relay.retention import DAY_MS, MARGIN_MS, Pruner, validate_retention_days
from timeback_nb.store import Store

from ..browser.harness import wait_until
from ..loopback import LoopbackServer
from .harness import refused, NOW, ROOT, InProcessRelay, RelayProcess, heartbeat_body, new_run, relay_files, submit_body

WEEK_MS = 7 * DAY_MS


def _relay_tables(store: Store) -> tuple[set[str], set[tuple[str, int]]]:
    with store.transaction() as conn:
        runs = {row[0] for row in conn.execute("SELECT run_id FROM relay_runs")}
        windows = {(row[0], row[1]) for row in conn.execute("SELECT run_id, start_ms FROM relay_windows")}
    return runs, windows


def _states(store: Store) -> dict[str, str]:
    return {row["event_id"]: row["state"] for row in store.events()}


# -- the store: delivered rows older than a moment, a chunk at a time ------------------------------


def test_prune_delivered_removes_exactly_the_rows_delivered_before_the_moment_in_chunks(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:

        def add(prefix: str, count: int, state: str) -> list[str]:
            ids = [f"{prefix}-{i}" for i in range(count)]
            for event_id in ids:
                store.enqueue(event_id, "time", "run", '{"x": 1}')
            if state == "delivered":
                store.mark_delivered_many(ids)
            elif state == "rejected":
                for event_id in ids:
                    store.mark_rejected(event_id, "[400] refused")
            return ids

        old_delivered = add("old-delivered", 10, "delivered")
        old_kept = add("old-queued", 2, "queued") + add("old-rejected", 2, "rejected")
        late = add("created-old-delivered-late", 1, "queued")
        moment = time.time()
        while time.time() <= moment:  # the next timestamps are strictly later
            pass
        store.mark_delivered(store.events(state="queued")[-1]["event_id"])  # `late`, delivered after the moment
        new = add("new-delivered", 3, "delivered") + add("new-queued", 1, "queued") + add("new-rejected", 1, "rejected")

        assert [store.prune_delivered(moment, 3) for _ in range(5)] == [3, 3, 3, 1, 0]
        states = _states(store)
        assert not set(old_delivered) & set(states)
        assert set(states) == set(old_kept + late + new)
        assert states["created-old-delivered-late-0"] == "delivered"
        assert [store.prune_delivered(time.time() + 1, 100) for _ in range(2)] == [4, 0]  # every delivered row, and only those
        assert sorted(_states(store).values()) == ["queued", "queued", "queued", "rejected", "rejected", "rejected"]


def test_prune_delivered_on_an_empty_store_removes_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        assert store.prune_delivered(time.time() + 1, 10) == 0


# -- the relay: a pass over its store --------------------------------------------------------------


def test_a_pass_removes_old_delivered_events_windows_and_runs_and_keeps_queued_and_rejected(relay: InProcessRelay) -> None:
    t0 = relay.now = time.time_ns() // 1_000_000  # the store stamps rows with the real clock
    old, current, completed = new_run(), new_run(), new_run()
    for i in range(3):
        assert relay.post("heartbeat", heartbeat_body(old, t0 - 3 * 3_600_000 + i * 15_000))[0] == 204
    assert relay.post("heartbeat", heartbeat_body(current, t0 - 2 * 3_600_000))[0] == 204
    assert relay.post("heartbeat", heartbeat_body(current, t0 + 44_000))[0] == 204  # ends 59 s ahead: allowed skew
    assert relay.post("submit", submit_body(completed, t0 - 3_600_000))[0] == 204
    store = relay.relay.store
    wait_until(lambda: store.counts()["delivered"] == 6, 10, "the local transport's deliveries")
    relay.relay.writer.side.sender.stop()
    store.enqueue("queued-long-ago", "time", old, "{}")
    store.park("rejected-long-ago", "time", old, "{}", "[400] shown to operators")

    relay.now = t0 + WEEK_MS + MARGIN_MS + 30_000  # the pruning horizon is now t0 + 30 s
    pruner = relay.relay.writer.side.pruner
    pruner.chunk = 2
    pruned = pruner.prune()

    assert (pruned.outbox, pruned.windows, pruned.runs) == (6, 4, 2)
    assert pruned.transactions >= 3 + 3  # ≤ 2 rows each: 6 outbox rows; 4 windows + 2 runs
    assert _states(store) == {"queued-long-ago": "queued", "rejected-long-ago": "rejected"}
    runs, windows = _relay_tables(store)
    assert runs == {current} and windows == {(current, t0 + 44_000)}  # a run with a window left stays
    status, health = relay.call(relay.relay.health())
    assert status == 200 and health["pruned"] == {
        "at": pruned.as_json()["at"], "outbox": 6, "windows": 4, "runs": 2,
    } and health["retentionDays"] == 7
    assert pruner.prune().outbox == 0  # nothing left to do

    # What was pruned, resent by a kernel that never saw the reply, is refused, not counted again.
    status, reply = relay.post("heartbeat", heartbeat_body(old, t0 - 3 * 3_600_000))
    assert status == 400 and "retention" in refused(reply, "startedAt")
    status, reply = relay.post("submit", submit_body(completed, t0 - 3_600_000))
    assert status == 400 and "retention" in refused(reply, "endedAt")
    assert set(_states(store)) == {"queued-long-ago", "rejected-long-ago"}


def test_before_the_horizon_nothing_is_removed(relay: InProcessRelay) -> None:
    t0 = relay.now = time.time_ns() // 1_000_000
    run = new_run()
    assert relay.post("heartbeat", heartbeat_body(run, t0 - 60_000))[0] == 204
    wait_until(lambda: relay.relay.store.counts()["delivered"] == 1, 10, "the delivery")
    relay.now = t0 + WEEK_MS + MARGIN_MS - 60_000  # everything is just inside the retention + margin
    pruned = relay.relay.writer.side.pruner.prune()
    assert (pruned.outbox, pruned.windows, pruned.runs) == (0, 0, 0)
    assert _relay_tables(relay.relay.store) == ({run}, {(run, t0 - 60_000)})


def test_a_completion_stamped_ahead_of_the_relay_is_still_a_duplicate_a_retention_later(relay: InProcessRelay) -> None:
    """A kernel clock up to a minute ahead is allowed; its completion passes the age check a
    minute longer than its outbox row has existed. Pruning lags the refusal by MARGIN_MS, so the
    row is still there: a resend is a duplicate, not a second completion."""
    t0 = relay.now = time.time_ns() // 1_000_000
    run = new_run()
    ahead = t0 + 59_000
    assert relay.post("submit", submit_body(run, ahead)) == (204, None)
    wait_until(lambda: relay.relay.store.counts()["delivered"] == 1, 10, "the delivery")
    relay.now = ahead + WEEK_MS  # the last moment the age check lets it through
    relay.relay.writer.side.pruner.prune()
    assert relay.post("submit", submit_body(run, ahead)) == (200, {"duplicate": True})
    assert len(relay.outbox()) == 1


def test_the_pruner_thread_prunes_on_its_interval_and_stops(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        store.enqueue("e", "time", None, "{}")
        store.mark_delivered(store.events()[0]["event_id"])
        with store.transaction() as conn:  # the tables the journal creates
            conn.execute("CREATE TABLE relay_runs (run_id TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID")
            conn.execute("CREATE TABLE relay_windows (run_id TEXT, start_ms INTEGER, end_ms INTEGER, user TEXT, active_ms INTEGER, PRIMARY KEY (run_id, start_ms)) WITHOUT ROWID")
        later = time.time_ns() // 1_000_000 + 8 * DAY_MS
        pruner = Pruner(store, 7, wall_ms=lambda: later, interval=0.02).start()
        pruner.start()  # a no-op when running
        # Passes come every 20 ms: the one that pruned the row may not be the last by now.
        last = wait_until(lambda: not store.events() and pruner.last, 10, "a pass that prunes the delivered row")
        pruner.stop()
        pruner.stop()
        assert last.at_ms == later and store.events() == []


# -- resent and late events: refused with the field's name -----------------------------------------


@pytest.mark.bad_input
def test_windows_and_completions_older_than_the_retention_are_refused_naming_the_field(relay: InProcessRelay) -> None:
    assert relay.post("heartbeat", heartbeat_body(new_run(), NOW - WEEK_MS))[0] == 204  # exactly the retention
    status, reply = relay.post("heartbeat", heartbeat_body(new_run(), NOW - WEEK_MS - 1))
    assert status == 400 and "more than 7 days ago" in refused(reply, "startedAt")
    assert relay.post("submit", submit_body(new_run(), NOW - WEEK_MS))[0] == 204
    status, reply = relay.post("submit", submit_body(new_run(), NOW - WEEK_MS - 1))
    assert status == 400 and "more than 7 days ago" in refused(reply, "endedAt")
    # A completion from the future would outlive its own outbox row: refused as a window's end is.
    assert relay.post("submit", submit_body(new_run(), NOW + 60_000))[0] == 204
    status, reply = relay.post("submit", submit_body(new_run(), NOW + 60_001))
    assert status == 400 and "future" in refused(reply, "endedAt")
    assert len(relay.outbox()) == 3  # one window, two completions


@pytest.mark.bad_input
def test_a_shorter_retention_refuses_sooner(tmp_path: Path) -> None:
    relay = InProcessRelay(tmp_path, retention_days="1.5")
    try:
        status, reply = relay.post("heartbeat", heartbeat_body(new_run(), NOW - 2 * DAY_MS))
        assert status == 400 and "more than 1.5 days ago" in refused(reply, "startedAt")
        assert relay.post("heartbeat", heartbeat_body(new_run(), NOW - DAY_MS))[0] == 204
    finally:
        relay.close()


@pytest.mark.bad_input
@pytest.mark.parametrize("value", [0, -1, "0", "-7", "seven", "", "nan", "inf", 0.5, 3651, 10**400, None, True])
def test_retention_days_out_of_range_or_no_number_is_refused_by_name(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^--retention-days: expected a number of days from 1 to 3650, got") as error:
        validate_retention_days(value)
    assert error.value.field == "--retention-days"


def test_retention_days_takes_numbers_and_numerals() -> None:
    assert [validate_retention_days(v) for v in (7, "30", "1.5", 3650)] == [7.0, 30.0, 1.5, 3650.0]


@pytest.mark.bad_input
def test_the_relay_command_refuses_a_bad_retention_naming_the_option(tmp_path: Path) -> None:
    files = relay_files(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "timeback_nb.relay", "--retention-days", "0", "--tokens", str(files["tokens"]),
         "--store", str(tmp_path / "relay.sqlite")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "TIMEBACK_CONFIG": str(files["config"]), "TIMEBACK_NB_TRANSPORT": "local"},
    )
    assert result.returncode == 1
    assert "--retention-days: expected a number of days from 1 to 3650, got '0'" in result.stderr
    assert not (tmp_path / "relay.sqlite").exists()  # refused before anything was opened


# -- one relay process per store -------------------------------------------------------------------


def test_a_second_relay_in_the_same_process_is_refused_and_the_first_keeps_working(relay: InProcessRelay) -> None:
    with pytest.raises(ConfigError, match="another timeback-nb relay .* is running on this store") as error:
        Relay(relay.options, in_process=True, lock_wait=0)
    assert error.value.field == "--store"
    assert relay.post("heartbeat", heartbeat_body(new_run(), NOW - 60_000))[0] == 204
    relay.restart()  # stop releases the lock: the next one on the store starts
    assert relay.post("heartbeat", heartbeat_body(new_run(), NOW - 30_000))[0] == 204


def test_a_second_relay_process_on_the_same_store_exits_and_a_restart_after_sigkill_starts(tmp_path: Path) -> None:
    with LoopbackServer() as caliper:
        first = RelayProcess(tmp_path, caliper).start()
        second = RelayProcess(tmp_path, caliper)
        try:
            assert first.process is not None
            result = subprocess.run(second.command(), env=second.env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 1
            assert f"another timeback-nb relay (pid {first.process.pid}) is running on this store" in result.stderr
            assert "relay.sqlite.lock" in result.stderr
            assert first.client.get(first.url + "/health").status_code == 200  # the first one is untouched
            first.kill()  # SIGKILL: no shutdown code runs, the OS drops the lock
            second.start()
            assert second.client.get(second.url + "/health").json()["status"] == "ok"
            run = new_run()
            assert second.post("heartbeat", heartbeat_body(run, time.time_ns() // 1_000_000 - 60_000)).status_code == 204
        finally:
            second.stop()
            first.stop()
    assert int((tmp_path / "relay.sqlite.lock").read_text()) > 0  # the last holder's pid, for the message
