"""Delivery decisions shared by processes through the store: a server's Retry-After is kept on
the row and honoured by every sender (another kernel, `timeback-nb flush`), and a wall-clock
step changes no lease, delay or hold. Wall-clock steps are made real for the whole process by
patching `time.time`; the other kernels are second Store connections or real processes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from timeback_nb import cli
from timeback_nb import store as store_module
from timeback_nb.clock import host_now
from timeback_nb.outbox import Backoff, Sender, stop_senders
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport, Outcome

from .crash_worker import envelope, event_id
from .loopback import CLIENT_ID, CLIENT_SECRET, Fault, LoopbackServer
from .test_delivery_integration import drain
from .test_outbox import ScriptedTransport, fill, wait_for

RUN = "run-held"
HOUR = 3600.0


class Wall:
    """The process's wall clock, steppable (time.time for every module, as a real step is)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)

    def step(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Wall:
    return Wall(monkeypatch)


# -- item 2: a server's Retry-After holds the row for every process -----------------------------


def rate_limited_once(path: Path, server: LoopbackServer, retry_after: str) -> float:
    """A kernel sends the first of two rows, gets `429 Retry-After`, and goes away; returns when
    the endpoint saw that first request (server time)."""
    with Store(path) as store:
        for n in range(2):
            store.enqueue(event_id(RUN, n), "time", RUN, envelope(RUN, n))
        server.script(Fault.rate_limited(retry_after))
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET) as transport:
            sender = Sender(store, transport)
            assert sender.flush(0.3) == {"delivered": 0, "queued": 2, "rejected": 0}
            sender.stop(5)
    return server.received[0].at


def resends(server: LoopbackServer) -> list[float]:
    return [r.at for r in server.received if r.event_id == event_id(RUN, 0)]


def test_another_process_does_not_send_before_the_endpoints_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "tb.sqlite3"
    with LoopbackServer() as server:
        first = rate_limited_once(path, server, "2")
        worker = drain(path, server, timeout=15)  # another kernel's flush(), a real process
        result = json.loads(worker.communicate(timeout=60)[0])
        assert result["flush"] == {"delivered": 2, "queued": 0, "rejected": 0}
        _, second = resends(server)
        assert second - first >= 2.0 - 0.05
        assert server.stored_ids == [event_id(RUN, 0), event_id(RUN, 1)]


def test_timeback_nb_flush_does_not_send_before_the_endpoints_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tb.sqlite3"
    with LoopbackServer() as server:
        first = rate_limited_once(path, server, "2")
        for name, value in {
            "TIMEBACK_NB_STORE": str(path),
            "TIMEBACK_CLIENT_ID": CLIENT_ID,
            "TIMEBACK_CLIENT_SECRET": CLIENT_SECRET,
            "TIMEBACK_CALIPER_URL": server.event_url,
            "TIMEBACK_AUTH_URL": server.token_url,
        }.items():
            monkeypatch.setenv(name, value)
        try:
            assert cli.main(["flush", "--timeout", "10"]) == 0
        finally:
            stop_senders(5)
        assert capsys.readouterr().out == "delivered 2, queued 0, rejected 0\n"
        _, second = resends(server)
        assert second - first >= 2.0 - 0.05


def test_a_hold_is_not_cut_short_by_expedite_but_a_backoff_delay_is(tmp_path: Path) -> None:
    with Store(tmp_path / "tb.sqlite3") as store:
        fill(store, 2, run=None)
        held, backed_off = store.lease("A", 100.0, 15, 2)
        store.mark_retry(held.event_id, "[429] slow down", 130.0, owner="A", hold=True)
        store.mark_retry(backed_off.event_id, "[503] down", 130.0, owner="A")
        assert store.expedite(101.0) == 2
        [taken] = store.lease("B", 101.0, 15, 10)
        assert taken.event_id == "e1" and store.next_due(101.0) == 116.0
        store.mark_delivered(taken.event_id)
        assert store.next_due(101.0) == 130.0 and store.lease("C", 129.9, 15, 10) == []
        assert [r.event_id for r in store.lease("C", 130.0, 15, 10)] == ["e0"]


# -- item 6: a wall-clock step changes no delivery decision -------------------------------------


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_wall_clock_step_does_not_expire_a_lease_in_flight(tmp_path: Path, wall: Wall, step: float) -> None:
    """Kernel A is sending e0 (slowly); the clock is set; kernel B flushes the same store."""
    path = tmp_path / "tb.sqlite3"
    a_store, b_store = Store(path), Store(path)
    fill(a_store, 2)
    gate = threading.Event()
    a_transport = ScriptedTransport(lambda: Outcome.delivered() if gate.wait(10) else Outcome.retry(None, "x"))
    a = Sender(a_store, a_transport, owner="kernel-a", lease_seconds=3).start()
    b_transport = ScriptedTransport()
    b = Sender(b_store, b_transport, owner="kernel-b", lease_seconds=3, backoff=Backoff(0.02, 0.05))
    try:
        wait_for(lambda: a_transport.ids == ["e0"])
        wall.step(step)
        assert b.flush(1.0)["queued"] == 2  # in flight with A: B sends nothing of that run
        assert b_transport.ids == []
        gate.set()
        wait_for(lambda: a_store.counts()["delivered"] == 2)
        assert a_transport.ids == ["e0", "e1"]
    finally:
        gate.set()
        a.stop(5)
        b.stop(5)
        a_store.close()
        b_store.close()


def test_a_wall_clock_step_back_does_not_park_a_retried_row(tmp_path: Path, wall: Wall) -> None:
    with Store(tmp_path / "tb.sqlite3") as store:
        fill(store, 1)
        transport = ScriptedTransport(Outcome.retry(None, "[503] down"))
        sender = Sender(store, transport, backoff=Backoff(0.1, 0.2), rand=lambda: 1.0).start()
        try:
            wait_for(lambda: len(transport.sends) == 1)
            wall.step(-HOUR)
            wait_for(lambda: store.counts()["delivered"] == 1, timeout=3)  # after 0.1 s, not an hour
        finally:
            sender.stop(5)


def test_a_wall_clock_step_back_does_not_stretch_a_retry_after_for_another_kernel(
    tmp_path: Path, wall: Wall
) -> None:
    path = tmp_path / "tb.sqlite3"
    with Store(path) as a_store, Store(path) as b_store:
        fill(a_store, 1)
        a_transport = ScriptedTransport(Outcome.retry(0.5, "[429] slow down"))
        a = Sender(a_store, a_transport, owner="kernel-a")
        assert a.flush(0.2)["queued"] == 1
        a.stop(5)
        wall.step(-HOUR)
        b_transport = ScriptedTransport()
        assert Sender(b_store, b_transport, owner="kernel-b").flush(5)["delivered"] == 1
    (_, told), (_, resent) = a_transport.sends[0], b_transport.sends[0]
    assert 0.5 - 0.02 <= resent - told < 3  # the hold, not the hold plus an hour


def test_the_sender_times_everything_on_the_injected_clock(tmp_path: Path) -> None:
    """Nothing is decided by the process clocks: a frozen injected clock keeps a backoff going."""
    with Store(tmp_path / "tb.sqlite3") as store:
        fill(store, 1)
        transport = ScriptedTransport(Outcome.retry(None, "[503] down"))
        frozen = host_now()
        sender = Sender(store, transport, backoff=Backoff(0.05, 0.05), clock=lambda: frozen).start()
        try:
            wait_for(lambda: len(transport.sends) == 1)
            time.sleep(0.3)  # six backoff steps of real time; none on the injected clock
            assert len(transport.sends) == 1
        finally:
            sender.stop(5)


# -- the store's clock across versions and reboots -----------------------------------------------


def test_a_version_2_store_frees_its_wall_clock_leases_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(";".join(store_module._MIGRATIONS[:2]) + "; PRAGMA user_version = 2;")
    wall_lease = time.time() + HOUR  # a wall-clock reading: meaningless on the monotonic clock
    conn.execute(
        "INSERT INTO outbox (event_id, kind, run_id, body, lease_owner, lease_until, created, updated)"
        " VALUES ('e0', 'time', 'r1', '{}', 'old-kernel', ?, 1.0, 1.0)",
        (wall_lease,),
    )
    conn.commit()
    conn.close()
    with Store(path) as migrated:
        assert [r.event_id for r in migrated.lease("new-kernel", host_now(), 15, 10)] == ["e0"]


def test_leases_and_holds_of_an_earlier_boot_are_freed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tb.sqlite3"
    with Store(path) as store:
        fill(store, 2, run=None)
        first, second = store.lease("before-reboot", 10_000.0, 15, 2)
        store.mark_retry(first.event_id, "[429] slow down", 10_000.0 + HOUR, owner="before-reboot", hold=True)
    with Store(path) as store:  # the same boot: everything stays held
        assert store.lease("after", 50.0, 15, 10) == []
    monkeypatch.setattr(store_module, "host_boot_id", lambda: "another-boot")
    with Store(path) as store:  # the host restarted: its monotonic clock began again at 0
        assert [r.event_id for r in store.lease("after", 50.0, 15, 10)] == ["e0", "e1"]
