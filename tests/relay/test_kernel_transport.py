"""The kernel's relay transport end to end: a kernel's outbox → `RelayTransport` → a real
`timeback-nb relay` process → the loopback Caliper stand-in. The events that arrive carry the
token owner's identity and the very ids the kernel's outbox holds; a replay from another
kernel is one event; a refusal shows in the kernel with the relay's code."""

from __future__ import annotations

import time
from pathlib import Path

from timeback_nb.clock import iso_utc_ms
from timeback_nb.config import Settings
from timeback_nb.delivery import Delivery
from timeback_nb.outbox import Backoff, Sender, make_transport
from timeback_nb.records import Completion, TimeWindow
from timeback_nb.store import Store

from ..loopback import LoopbackServer
from ..test_delivery_integration import REF, target
from .harness import RelayProcess, delivered_events, new_run
from ..browser.harness import wait_until
from .test_service import caliper, relay  # noqa: F401 (fixtures: the Caliper stand-in, a relay process)

METRICS = {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8, "pctComplete": 40}


class Kernel:
    """What `start()` wires in relay mode, on its own store, with a standalone relay token."""

    def __init__(self, path: Path, relay: RelayProcess, token: str) -> None:
        settings = Settings.from_env({"TIMEBACK_RELAY_URL": relay.url, "TIMEBACK_RELAY_TOKEN": token})
        assert settings.transport == "relay" and settings.client_secret is None
        self.store = Store(path)
        self.transport = make_transport(settings, self.store)
        self.sender = Sender(self.store, self.transport, backoff=Backoff(base=0.02, cap=0.2))
        self.delivery = Delivery(target(), self.store, self.sender, wire="adapter")

    def close(self) -> None:
        self.sender.stop(5)
        self.transport.close()
        self.store.close()


def test_a_kernels_windows_and_completion_reach_caliper_through_the_relay_as_its_student(
    tmp_path: Path, relay: RelayProcess, caliper: LoopbackServer
) -> None:
    run = new_run()
    start = time.time_ns() // 1_000_000 - 600_000  # ten minutes ago: no window is in the future
    windows = [
        TimeWindow(REF, run, iso_utc_ms(start + i * 15_000), iso_utc_ms(start + (i + 1) * 15_000), 13_500, 1_500)
        for i in range(4)
    ]
    done = Completion(REF, run, iso_utc_ms(start + 60_000), METRICS)
    kernel = Kernel(tmp_path / "alice.sqlite3", relay, "tok-alice")
    twin = Kernel(tmp_path / "alice-again.sqlite3", relay, "tok-alice")
    try:
        for record in (*windows, done):
            kernel.delivery.emit(record)
        assert kernel.sender.flush(20) == {"delivered": 5, "queued": 0, "rejected": 0}
        # The same window from another kernel of hers (or resent after a lost reply): one event.
        twin.delivery.emit(windows[0])
        assert twin.sender.flush(20) == {"delivered": 1, "queued": 0, "rejected": 0}
        outbox_ids = [row["event_id"] for row in kernel.store.events()]
    finally:
        kernel.close()
        twin.close()

    wait_until(lambda: (found := [e for e in delivered_events(caliper) if e["session"] == f"urn:uuid:{run}"])
                   and len(found) >= 5 and found, 30, "the run's five events at the Caliper stand-in")
    time.sleep(0.3)  # a second copy of the replayed window would have arrived by now
    events = [e for e in delivered_events(caliper) if e["session"] == f"urn:uuid:{run}"]
    assert [e["id"] for e in events] == outbox_ids  # the kernel's ids are the relay's events' ids
    assert [e["type"] for e in events] == ["TimeSpentEvent"] * 4 + ["ActivityEvent"]
    assert {(e["actor"]["email"], e["actor"]["id"].rsplit("/", 1)[1]) for e in events} == {("alice@school.edu", "u-alice")}
    assert [e["generated"]["items"][0] for e in events[:4]] == [{"type": "active", "value": 13.5}] * 4
    assert events[4]["generated"]["extensions"] == {"pctCompleteApp": 40}


def test_another_students_run_is_refused_in_the_kernel_with_the_relays_code(
    tmp_path: Path, relay: RelayProcess
) -> None:
    run = new_run()
    start = time.time_ns() // 1_000_000 - 600_000
    alice = Kernel(tmp_path / "alice.sqlite3", relay, "tok-alice")
    bob = Kernel(tmp_path / "bob.sqlite3", relay, "tok-bob")
    stranger = Kernel(tmp_path / "stranger.sqlite3", relay, "not-a-token")
    try:
        alice.delivery.emit(TimeWindow(REF, run, iso_utc_ms(start), iso_utc_ms(start + 15_000), 15_000, 0))
        assert alice.sender.flush(20)["delivered"] == 1
        # bob's kernel claims alice's run: refused for good, with the relay's code, the next event still goes.
        bob.delivery.emit(TimeWindow(REF, run, iso_utc_ms(start + 15_000), iso_utc_ms(start + 30_000), 15_000, 0))
        bob.delivery.emit(TimeWindow(REF, new_run(), iso_utc_ms(start), iso_utc_ms(start + 15_000), 15_000, 0))
        assert bob.sender.flush(20) == {"delivered": 1, "queued": 0, "rejected": 1}
        [refused] = bob.store.events(state="rejected")
        assert refused["reason"].startswith("relay: [403 FORBIDDEN]") and bob.sender.last_error == refused["reason"]
        # A token the relay does not know: kept queued (nothing lost), the reason shown.
        stranger.delivery.emit(TimeWindow(REF, new_run(), iso_utc_ms(start), iso_utc_ms(start + 15_000), 15_000, 0))
        assert stranger.sender.flush(1)["queued"] == 1
        assert "[401 UNAUTHORIZED]" in (stranger.sender.last_error or "") and "not-a-token" not in stranger.sender.last_error
    finally:
        for kernel in (alice, bob, stranger):
            kernel.close()
