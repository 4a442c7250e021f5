"""The store fails under a running kernel (issue 12 §3): locked for long, read-only, full,
deleted. Nothing raises into the notebook, nothing blocks for long, nothing is lost or
reordered, no attempt number is skipped, and the held records go in as soon as the store works
again, with no later record to push them. Faults are real (tests/store_faults.py)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import timeback_nb
from timeback_nb import api, events
from timeback_nb.delivery import Delivery
from timeback_nb.errors import StoreError
from timeback_nb.store import Store

from .fakes import Page
from .store_faults import StoreFaults
from .test_delivery_integration import NotingSender, T0, completion, target, window

FAULTS = ["locked", "read_only", "full", "deleted"]
QUICK_S = 5.0  # "never blocks for tens of seconds": one kernel-side call must return well within this


@contextlib.contextmanager
def failing(kind: str, faults: StoreFaults, path: Path) -> Iterator[None]:
    """The store fails in the way `kind` says inside the block and works again after it."""
    if kind == "locked":
        with faults.locked(path):
            yield
        return
    if kind == "read_only":
        faults.read_only()
    elif kind == "full":
        faults.full()
    elif kind == "deleted":
        faults.delete(path)
    try:
        yield
    finally:
        faults.heal()


class StatusSender(NotingSender):
    last_error = None

    def note_error(self, message, *, passes: bool = False) -> None:
        super().note_error(message, passes=passes)
        self.last_error = message


def window_id(i: int) -> str:
    return events.event_id(events.time_spent_envelope(window(i), target(), send_time="x"))


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def timed(call) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


def bodies(path: Path) -> list[dict]:
    with Store(path) as fresh:  # what another process sees
        return [json.loads(r["body"])["data"][0] for r in fresh.events()]


@pytest.mark.parametrize("kind", FAULTS)
def test_records_are_held_while_the_store_fails_and_go_in_by_themselves_in_order(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "tb.sqlite3"
    faults = StoreFaults()
    store = Store(path, connect=faults.connect)
    sender = StatusSender()
    delivery = Delivery(target(), store, sender)  # type: ignore[arg-type]
    delivery.emit(window(0))
    with failing(kind, faults, path):
        for record in (window(1), window(2), completion(T0 + 45_000)):
            assert timed(lambda: delivery.emit(record)) < QUICK_S
        if kind != "deleted":  # a deleted file is replaced at once: nothing needs holding
            assert delivery.pending == 3
            assert any(str(path) in note and "held in memory" in note for note in sender.notes)
    # No later record: the retry timer commits what was held as soon as the store works.
    wait_for(lambda: delivery.pending == 0)
    events = bodies(path)
    assert [e["type"] for e in events] == ["TimeSpentEvent"] * 3 + ["ActivityEvent"], kind
    assert [e["id"] for e in events[:3]] == [window_id(i) for i in range(3)], "in order, none lost"
    assert events[-1]["generated"]["attempt"] == 1
    if kind != "deleted":
        assert sender.notes[-1] == "stays: None", "the problem is cleared once the store works again"
    # The failed writes used up no attempt number: the next completion is attempt 2.
    delivery.emit(completion(T0 + 90_000))
    assert bodies(path)[-1]["generated"]["attempt"] == 2
    store.close()


@pytest.mark.parametrize("kind", ["locked", "read_only", "full"])
def test_record_commits_or_raises_a_timeback_error_naming_the_store_and_the_cause(local_env: Path, kind: str) -> None:
    path = local_env / "store.sqlite3"
    faults = StoreFaults()
    api._stores[str(path)] = Store(path, connect=faults.connect)
    cause = {"locked": "lock", "read_only": "readonly", "full": "full"}[kind]
    with failing(kind, faults, path):
        start = time.monotonic()
        with pytest.raises(StoreError, match=rf"store '{path}'.*{cause}") as caught:
            timeback_nb.record(id="week-3", name="Week 3", course={"subject": "Math", "grade": 8}, metrics={"xpEarned": 1}, timeout=1)
        assert time.monotonic() - start < QUICK_S
        assert caught.value.field == "TIMEBACK_NB_STORE"
    counts = timeback_nb.record(id="week-3", name="Week 3", course={"subject": "Math", "grade": 8}, metrics={"xpEarned": 1}, timeout=5)
    assert counts["queued"] == 0, counts
    assert [e["generated"]["attempt"] for e in bodies(path)] == [1]


@pytest.mark.parametrize("kind", ["locked", "read_only", "full"])
def test_end_with_a_failing_store_ends_says_why_and_delivers_once_the_store_works(local_env: Path, kind: str) -> None:
    path = local_env / "store.sqlite3"
    faults = StoreFaults()
    api._stores[str(path)] = Store(path, connect=faults.connect)
    activity = timeback_nb.start("week-3", "Week 3", {"subject": "Math", "grade": 8}, heartbeat_interval=0.5, display=False)
    page = Page(activity, activity._clock, clock_offset=0)
    page.send("transition", True)
    time.sleep(0.6)
    page.send("ping", True)
    with failing(kind, faults, path):
        assert timed(lambda: activity.end({"xpEarned": 4})) < QUICK_S
        page.send("ping", True)
        wait_for(lambda: activity.finished)
        assert activity.state == "ended"
        wait_for(lambda: str(path) in activity.last_error and "held in memory" in activity.last_error)
    wait_for(lambda: any(e["type"] == "ActivityEvent" for e in bodies(path)))
    delivered = bodies(path)
    assert delivered[-1]["type"] == "ActivityEvent" and delivered[-1]["generated"]["attempt"] == 1
    spent = [e for e in delivered if e["type"] == "TimeSpentEvent"]
    assert len(spent) >= 2 and spent[-1]["eventTime"] == delivered[-1]["eventTime"], "the final window closes at the end"
    wait_for(lambda: activity.last_error == "")
