"""The background sender with a scripted in-process transport (no sockets), and the registry."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from timeback_nb.clock import host_now
from timeback_nb.config import Settings
from timeback_nb.errors import TimebackError
from timeback_nb.outbox import Backoff, HeldOutbox, Sender, get_sender, stop_senders
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport, LocalTransport, Outcome

FAST = Backoff(base=0.01, cap=0.05)


class ScriptedTransport:
    """Answers from a script (then `default`); records every send with its time."""

    def __init__(self, *script: Outcome | Callable[[], Outcome], default: Outcome = Outcome.delivered()) -> None:
        self.script = list(script)
        self.default = default
        self.sends: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.closed = 0

    def send(self, body: str, event_id: str) -> Outcome:
        with self.lock:
            self.sends.append((event_id, time.monotonic()))
            step = self.script.pop(0) if self.script else self.default
        return step() if callable(step) else step

    def close(self) -> None:
        self.closed += 1

    @property
    def ids(self) -> list[str]:
        with self.lock:
            return [e for e, _ in self.sends]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "tb.sqlite3") as s:
        yield s


@pytest.fixture
def senders():
    made: list[Sender] = []

    def make(store: Store, transport: object, **kwargs: object) -> Sender:
        kwargs.setdefault("backoff", FAST)
        sender = Sender(store, transport, **kwargs)  # type: ignore[arg-type]
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.stop(5)


def fill(store: Store, n: int, run: str | None = "r1", prefix: str = "e") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for event_id in ids:
        store.enqueue(event_id, "time", run, f'{{"id": "{event_id}"}}')
    return ids


# -- backoff ----------------------------------------------------------------------------------------


def test_backoff_is_capped_exponential_with_jitter_in_the_upper_half() -> None:
    b = Backoff(base=0.5, cap=30.0)
    assert [b.delay(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert b.delay(7, lambda: 1.0) == 30.0 and b.delay(50, lambda: 1.0) == 30.0
    assert b.delay(10**6, lambda: 1.0) == 30.0  # no OverflowError after very many attempts
    assert b.delay(3, lambda: 0.0) == 1.0  # never zero: at least half the step
    assert b.delay(3, lambda: 0.5) == 1.5


# -- lifecycle ------------------------------------------------------------------------------------


def test_start_is_a_no_op_while_running_and_stop_is_idempotent(store: Store, senders) -> None:
    sender = senders(store, ScriptedTransport())
    sender.stop()  # before start: fine
    sender.start()
    thread = sender._thread
    assert sender.start() is sender and sender._thread is thread and sender.running
    sender.stop()
    sender.stop()
    assert not sender.running and thread is not None and not thread.is_alive()
    assert not sender._keeper.is_alive()


def test_on_start_it_drains_rows_earlier_kernels_left(store: Store, senders) -> None:
    ids = fill(store, 5)
    transport = ScriptedTransport()
    senders(store, transport).start()
    wait_for(lambda: store.counts()["delivered"] == 5)
    assert transport.ids == ids


def test_wake_sends_what_was_just_enqueued(store: Store, senders) -> None:
    transport = ScriptedTransport()
    sender = senders(store, transport).start()
    wait_for(lambda: not sender._wake.is_set())
    fill(store, 3)
    sender.wake()
    wait_for(lambda: store.counts()["delivered"] == 3, timeout=2)  # long before the idle poll


def test_the_thread_ends_when_the_store_is_closed(tmp_path: Path, senders) -> None:
    s = Store(tmp_path / "tb.sqlite3")
    sender = senders(s, ScriptedTransport()).start()
    s.close()
    sender.wake()
    wait_for(lambda: not sender._thread.is_alive())


# -- order, retries, rejects ------------------------------------------------------------------


def test_rows_go_out_in_seq_order_across_runs(store: Store, senders) -> None:
    for i in range(30):
        store.enqueue(f"e{i}", "time", f"r{i % 3}", "{}")
    transport = ScriptedTransport()
    assert senders(store, transport, batch=7).flush(5) == {"delivered": 30, "queued": 0, "rejected": 0}
    assert transport.ids == [f"e{i}" for i in range(30)]


def test_a_retry_holds_back_later_rows_until_it_is_delivered(store: Store, senders) -> None:
    ids = fill(store, 4)
    transport = ScriptedTransport(Outcome.retry(None, "[503] a"), Outcome.retry(None, "[503] b"))
    sender = senders(store, transport, rand=lambda: 1.0)
    assert sender.flush(5)["delivered"] == 4
    assert transport.ids == ["e0", "e0", "e0", "e1", "e2", "e3"]
    rows = store.events()
    assert [(r["event_id"], r["attempts"], r["state"]) for r in rows] == [
        ("e0", 3, "delivered"),
        *[(i, 1, "delivered") for i in ids[1:]],
    ]
    times = [t for e, t in transport.sends]
    assert times[1] - times[0] >= 0.01 * 0.99  # backoff base * 2**0
    assert times[2] - times[1] >= 0.02 * 0.99  # base * 2**1


def test_backoff_is_capped(store: Store, senders) -> None:
    fill(store, 1)
    transport = ScriptedTransport(*[Outcome.retry(None, "down")] * 8)
    sender = senders(store, transport, backoff=Backoff(base=0.01, cap=0.02), rand=lambda: 1.0)
    sender.start()
    wait_for(lambda: store.counts()["delivered"] == 1)
    gaps = [b - a for (_, a), (_, b) in zip(transport.sends, transport.sends[1:])]
    assert len(gaps) == 8 and all(gap >= 0.0099 for gap in gaps)
    assert sum(gaps) < 1.2  # capped: 0.01 + 7 * 0.02 s; uncapped it would be 0.01 * (2**8 - 1) = 2.55 s


def test_retry_after_wins_over_backoff(store: Store, senders) -> None:
    fill(store, 2)
    transport = ScriptedTransport(Outcome.retry(0.3, "[429] slow down"))
    sender = senders(store, transport, rand=lambda: 0.0)
    sender.start()
    wait_for(lambda: store.counts()["delivered"] == 2)
    (_, first), (_, second), _ = transport.sends
    assert second - first >= 0.29
    assert store.events()[0]["attempts"] == 2 and sender.last_error is None  # over once delivered


def test_a_retry_pauses_the_sender_not_just_the_row(store: Store, senders) -> None:
    store.enqueue("a", "time", "r1", "{}")
    store.enqueue("b", "time", "r2", "{}")
    transport = ScriptedTransport(Outcome.retry(0.3, "[429] slow down"))
    senders(store, transport).start()
    wait_for(lambda: store.counts()["delivered"] == 2)
    (_, t_a), (_, t_b), (_, t_a2) = transport.sends
    assert t_b - t_a >= 0.29  # the other run waited too: the endpoint asked us to slow down


def test_rejects_are_parked_with_the_reason_and_the_rest_goes_on(store: Store, senders) -> None:
    fill(store, 3)
    statuses: list[dict] = []
    transport = ScriptedTransport(Outcome.delivered(), Outcome.rejected("[422] actor.email required"))
    sender = senders(store, transport, on_status=statuses.append)
    assert sender.flush(5) == {"delivered": 2, "queued": 0, "rejected": 1}
    rejected = store.events(state="rejected")
    assert [(r["event_id"], r["reason"]) for r in rejected] == [("e1", "[422] actor.email required")]
    assert statuses[-1] == {"queued": 0, "delivered": 2, "rejected": 1, "last_error": "[422] actor.email required"}
    assert sender.flush(1) == {"delivered": 0, "queued": 0, "rejected": 0}  # never sent again
    assert transport.ids == ["e0", "e1", "e2"]


def test_a_transport_that_raises_is_a_retry_and_the_thread_lives_on(store: Store, senders) -> None:
    def boom() -> Outcome:
        raise RuntimeError("transport bug")

    fill(store, 1)
    transport = ScriptedTransport(boom)
    sender = senders(store, transport)
    assert sender.flush(5)["delivered"] == 1
    assert sender.running
    assert store.events()[0]["attempts"] == 2


def test_on_status_reports_every_change_from_the_sender_thread(store: Store, senders) -> None:
    seen: list[tuple[dict, str]] = []
    fill(store, 2)
    transport = ScriptedTransport(Outcome.retry(None, "[503] down"))
    sender = senders(store, transport, on_status=lambda s: seen.append((s, threading.current_thread().name)))
    sender.flush(5)
    statuses = [s for s, _ in seen]
    assert {"queued": 2, "delivered": 0, "rejected": 0, "last_error": "[503] down"} in statuses
    assert statuses[-1] == {"queued": 0, "delivered": 2, "rejected": 0, "last_error": None}  # the outage is over
    assert {name for _, name in seen} == {"timeback-sender"}


def test_on_status_errors_do_not_stop_delivery(store: Store, senders) -> None:
    def broken(status: dict) -> None:
        raise ValueError("observer bug")

    fill(store, 3)
    assert senders(store, ScriptedTransport(), on_status=broken).flush(5)["delivered"] == 3


# -- flush ----------------------------------------------------------------------------------------


def test_flush_returns_at_the_timeout_with_what_is_still_queued(store: Store, senders) -> None:
    fill(store, 3)
    sender = senders(store, ScriptedTransport(default=Outcome.retry(None, "[503] down")))
    start = time.monotonic()
    assert sender.flush(0.3) == {"delivered": 0, "queued": 3, "rejected": 0}
    assert 0.3 <= time.monotonic() - start < 2.0
    assert sender.last_error == "[503] down"


@pytest.mark.parametrize("timeout", [float("nan"), float("-inf"), float("inf"), -1, pytest.param(10**400, id="10**400"), None])
@pytest.mark.bad_input
def test_flush_refuses_a_timeout_that_is_no_duration_and_sends_nothing(store: Store, senders, timeout: object) -> None:
    fill(store, 1)
    transport = ScriptedTransport()
    for sender in (senders(store, transport), HeldOutbox(store)):
        with pytest.raises(TimebackError, match="^timeout: expected a number of seconds from 0 to 86400") as info:
            sender.flush(timeout)  # type: ignore[arg-type]
        assert info.value.field == "timeout"
    assert transport.ids == [] and store.counts()["queued"] == 1


def test_flush_cuts_a_long_retry_delay_short(store: Store, senders) -> None:
    fill(store, 2)
    transport = ScriptedTransport(Outcome.retry(None, "[503] down"))
    sender = senders(store, transport, backoff=Backoff(base=60, cap=60), rand=lambda: 1.0)
    sender.start()
    wait_for(lambda: len(transport.sends) == 1)
    start = time.monotonic()
    assert sender.flush(5) == {"delivered": 2, "queued": 0, "rejected": 0}
    assert time.monotonic() - start < 2


def test_flush_does_not_cut_a_servers_retry_after_short(store: Store, senders) -> None:
    fill(store, 1)
    transport = ScriptedTransport(Outcome.retry(0.4, "[429] slow down"))
    sender = senders(store, transport)
    sender.start()
    wait_for(lambda: len(transport.sends) == 1)
    assert sender.flush(5)["delivered"] == 1
    (_, first), (_, second) = transport.sends
    assert second - first >= 0.39


def test_flush_counts_only_what_was_queued_when_it_was_called(store: Store, senders) -> None:
    fill(store, 2, prefix="old")
    sender = senders(store, ScriptedTransport())
    assert sender.flush(5)["delivered"] == 2
    sender.stop()  # so that nothing is sent before the next flush looks (it starts the sender again)
    fill(store, 3, prefix="new")
    assert sender.flush(5) == {"delivered": 3, "queued": 0, "rejected": 0}


def test_flush_waits_out_a_dead_kernels_lease(store: Store, senders) -> None:
    fill(store, 2)
    store.lease("dead-kernel", host_now(), 0.4, 10)  # then it was killed
    transport = ScriptedTransport()
    start = time.monotonic()
    assert senders(store, transport).flush(5)["delivered"] == 2
    assert 0.3 <= time.monotonic() - start < 2.5
    assert transport.ids == ["e0", "e1"]


# -- leases while sending ---------------------------------------------------------------------------


def test_a_slow_send_keeps_its_lease_and_stop_releases_the_rest(tmp_path: Path, senders) -> None:
    path = tmp_path / "tb.sqlite3"
    store = Store(path)
    fill(store, 3)
    gate = threading.Event()

    def slow() -> Outcome:
        gate.wait(5)
        return Outcome.delivered()

    sender = senders(store, ScriptedTransport(slow), lease_seconds=0.6)
    sender.start()
    with Store(path) as other:
        wait_for(lambda: store.events()[0]["attempts"] == 0 and sender._held != [])
        deadline = time.monotonic() + 1.8  # three lease lengths
        while time.monotonic() < deadline:
            assert other.lease("other-kernel", host_now(), 15, 10) == []
            time.sleep(0.05)
        stopping = threading.Thread(target=sender.stop)
        stopping.start()
        time.sleep(0.05)
        gate.set()
        stopping.join(5)
        assert [r.event_id for r in other.lease("other-kernel", host_now(), 15, 10)] == ["e1", "e2"]
    assert store.counts()["delivered"] == 1
    store.close()


# -- the registry ---------------------------------------------------------------------------------


def test_get_sender_is_one_running_sender_per_store_and_endpoint(tmp_path: Path) -> None:
    local = Settings.from_env({"TIMEBACK_NB_STORE": str(tmp_path / "local.sqlite3")})
    caliper = Settings.from_env(
        {
            "TIMEBACK_NB_STORE": str(tmp_path / "caliper.sqlite3"),
            "TIMEBACK_CLIENT_ID": "id",
            "TIMEBACK_CLIENT_SECRET": "secret-value",
            "TIMEBACK_CALIPER_URL": "http://127.0.0.1:9/caliper/event",
            "TIMEBACK_AUTH_URL": "http://127.0.0.1:9/oauth2/token",
        }
    )
    store, other = Store(local.store_path), Store(caliper.store_path)
    try:
        a = get_sender(local, store)
        assert get_sender(local, store) is a and a.running
        assert isinstance(a.transport, LocalTransport)
        b = get_sender(caliper, other)
        assert b is not a and isinstance(b.transport, CaliperTransport)
        assert get_sender(caliper, other) is b
        assert "secret-value" not in repr(b)
        store.enqueue("e1", "time", None, '{"x": 1}')
        assert a.flush(5)["delivered"] == 1
        assert [e["body"] for e in store.local_events()] == ['{"x": 1}']
    finally:
        stop_senders(5)
    assert not a.running and not b.running and b.transport._closed
    store.close()
    other.close()
    assert get_sender(local, Store(local.store_path)) is not a  # a fresh one after stop_senders
    stop_senders(5)


def test_a_sender_whose_store_was_closed_is_replaced_and_its_transport_closed(tmp_path: Path) -> None:
    settings = Settings.from_env({"TIMEBACK_NB_STORE": str(tmp_path / "tb.sqlite3")})
    try:
        first_store = Store(settings.store_path)
        first = get_sender(settings, first_store)
        closes: list[bool] = []
        first.transport.close = lambda: closes.append(True)  # type: ignore[method-assign]
        first_store.close()
        with Store(settings.store_path) as second_store:
            second = get_sender(settings, second_store)
            assert second is not first and second.store is second_store and closes == [True]
            wait_for(lambda: not first.running)
            stop_senders(5)
    finally:
        stop_senders(5)
