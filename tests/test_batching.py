"""Several events in one Caliper envelope (`Sender(batch_size=N)`), against a real HTTP endpoint
on 127.0.0.1: envelopes valid against Timeback's OpenAPI, every event once and in order, a
rejected batch split until the bad events stand alone, a failed batch retried whole."""

from __future__ import annotations

import json
import math

import pytest

from timeback_nb import events
from timeback_nb.clock import iso_utc_ms
from timeback_nb.errors import TimebackError
from timeback_nb.outbox import Sender
from timeback_nb.store import Store
from timeback_nb.transport import Outcome

from .loopback import Fault, LoopbackServer
from .schema import validate_envelope
from .test_delivery_integration import RUN, T0, completion, target, window
from .test_outbox import senders, store  # noqa: F401 (fixtures: senders stopped after the test, a store)
from .test_transport import server, transport  # noqa: F401 (fixtures: a loopback endpoint, its transport)


def enqueue_windows(store: Store, n: int, *, run: str = RUN, sensor: str | None = None) -> list[str]:
    """`n` committed TimeSpentEvent envelopes of `run`; their ids in commit order."""
    who = target() if sensor is None else target(sensor=sensor)
    ids = []
    for i in range(n):
        envelope = events.time_spent_envelope(window(i, run), who, send_time=iso_utc_ms(T0 + i * 15_000 + 15_000))
        store.enqueue(events.event_id(envelope), "time", run, events.dumps(envelope))
        ids.append(events.event_id(envelope))
    return ids


# -- joining envelopes ------------------------------------------------------------------------------


def test_joined_envelope_carries_each_committed_event_byte_for_byte_and_validates(store: Store) -> None:
    enqueue_windows(store, 3)
    envelope = events.completion_envelope(completion(T0 + 60_000), target(), attempt=1, send_time=iso_utc_ms(T0))
    store.enqueue(events.event_id(envelope), "completion", RUN, events.dumps(envelope))
    bodies = [r["body"] for r in store.events()]

    joined = json.loads(events.join_envelopes(bodies))

    validate_envelope(joined)
    parts = [json.loads(b) for b in bodies]
    assert joined["data"] == [p["data"][0] for p in parts]
    assert joined["sensor"] == parts[0]["sensor"] and joined["dataVersion"] == parts[0]["dataVersion"]
    assert joined["sendTime"] == max(p["sendTime"] for p in parts)  # same rows, same bytes
    assert events.join_envelopes(bodies) == events.join_envelopes(bodies)
    assert events.join_envelopes(bodies[:1]) == bodies[0]


def test_only_envelopes_with_one_sensor_join(store: Store) -> None:
    a = enqueue_windows(store, 1)
    b = enqueue_windows(store, 1, run="0b7e4d8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", sensor="https://other.example.org")
    body_a, body_b = (r["body"] for r in store.events())
    assert a != b and events.batch_key(body_a) != events.batch_key(body_b)
    assert events.batch_key(body_a) == events.batch_key(events.join_envelopes([body_a, body_a]))
    with pytest.raises(ValueError, match="sensor"):
        events.join_envelopes([body_a, body_b])
    for not_ours in ('{"id": "e1"}', json.dumps(json.loads(body_a), indent=1), body_a[:-1]):
        assert events.batch_key(not_ours) is None
        with pytest.raises(ValueError):
            events.join_envelopes([body_a, not_ours])


# -- the sender -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1001, True, 2.0, "5", None])
@pytest.mark.bad_input
def test_batch_size_must_be_an_integer_from_1_to_1000(store: Store, bad: object) -> None:
    with pytest.raises(TimebackError, match=r"batch_size: expected an integer from 1 to 1000") as caught:
        Sender(store, object(), batch_size=bad)  # type: ignore[arg-type]
    assert caught.value.field == "batch_size"


def test_one_event_per_envelope_by_default(store: Store, server: LoopbackServer, transport, senders) -> None:
    ids = enqueue_windows(store, 5)
    assert senders(store, transport).flush(5) == {"delivered": 5, "queued": 0, "rejected": 0}
    assert [r.event_ids for r in server.received] == [[e] for e in ids]


def test_a_batched_drain_sends_n_events_per_envelope_once_each_in_order(
    store: Store, server: LoopbackServer, transport, senders
) -> None:
    ids = enqueue_windows(store, 25)
    sender = senders(store, transport, batch_size=10, batch=100)
    assert sender.flush(5) == {"delivered": 25, "queued": 0, "rejected": 0}
    assert [len(r.event_ids) for r in server.received] == [10, 10, 5]
    assert server.stored_ids == ids and server.received_ids() == ids
    for request in server.received:
        validate_envelope(json.loads(request.body))
    assert all(r["attempts"] == 1 for r in store.events())


def test_batches_are_not_larger_than_a_lease(store: Store, server: LoopbackServer, transport, senders) -> None:
    ids = enqueue_windows(store, 12)
    sender = senders(store, transport, batch_size=50, batch=5)  # a lease takes max(batch, batch_size)
    assert sender.flush(5)["delivered"] == 12
    assert [len(r.event_ids) for r in server.received] == [12] and server.stored_ids == ids


def test_a_rejected_batch_is_split_until_the_bad_events_stand_alone(
    store: Store, server: LoopbackServer, transport, senders
) -> None:
    ids = enqueue_windows(store, 16)
    bad = {ids[3], ids[12]}
    server.refuse(*bad)
    sender = senders(store, transport, batch_size=16)

    assert sender.flush(5) == {"delivered": 14, "queued": 0, "rejected": 2}

    assert server.stored_ids == [e for e in ids if e not in bad]  # the others, once each, in order
    rows = {r["event_id"]: r for r in store.events()}
    for event_id in bad:
        assert rows[event_id]["state"] == "rejected" and "[400]" in rows[event_id]["reason"]
        assert event_id in rows[event_id]["reason"]  # the endpoint's own words
    assert sender.last_error is not None and "[400]" in sender.last_error
    # Bisection: each bad event costs at most two requests per level of halving.
    assert len(server.received) <= 1 + 2 * len(bad) * math.ceil(math.log2(16))
    assert not server.concurrent_duplicates


def test_a_batch_that_fails_is_retried_whole_and_nothing_is_stored_twice(
    store: Store, server: LoopbackServer, transport, senders
) -> None:
    ids = enqueue_windows(store, 8)
    server.script(Fault.reply(503, {"message": "down"}), Fault.reply(429, {"message": "busy"}, {"Retry-After": "0"}))
    sender = senders(store, transport, batch_size=8)
    assert sender.flush(10) == {"delivered": 8, "queued": 0, "rejected": 0}
    assert server.stored_ids == ids
    assert [len(r.event_ids) for r in server.received] == [8, 8, 8]
    assert [r["attempts"] for r in store.events()] == [3] * 8  # each failed try counted on every row
    assert sender.last_error is None  # the retry's error passed with the delivery


def test_events_of_different_sensors_go_in_separate_envelopes_and_each_run_stays_in_order(
    store: Store, server: LoopbackServer, transport, senders
) -> None:
    other_run = "0b7e4d8a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    mine, theirs = [], []
    for i in range(6):  # interleaved commits of two courses with their own sensors
        envelope = events.time_spent_envelope(window(i), target(), send_time=iso_utc_ms(T0))
        store.enqueue(events.event_id(envelope), "time", RUN, events.dumps(envelope))
        mine.append(events.event_id(envelope))
        envelope = events.time_spent_envelope(
            window(i, other_run), target(sensor="https://other.example.org"), send_time=iso_utc_ms(T0)
        )
        store.enqueue(events.event_id(envelope), "time", other_run, events.dumps(envelope))
        theirs.append(events.event_id(envelope))

    assert senders(store, transport, batch_size=10).flush(5)["delivered"] == 12

    assert [r.event_ids for r in server.received] == [mine, theirs]
    assert {json.loads(r.body)["sensor"] for r in server.received} == {
        target().sensor, "https://other.example.org"
    }


class RecordingTransport:
    """A transport that takes batches; records each request's event ids."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []

    def batch_key(self, body: str) -> str | None:
        return events.batch_key(body)

    def send(self, body: str, event_id: str) -> Outcome:
        self.requests.append([event_id])
        return Outcome.delivered()

    def send_batch(self, items: list[tuple[str, str]]) -> Outcome:
        self.requests.append([event_id for event_id, _ in items])
        return Outcome.delivered()

    def close(self) -> None:
        pass


def test_a_row_that_is_no_envelope_goes_alone_and_nothing_overtakes_it(store: Store, senders) -> None:
    ids = enqueue_windows(store, 4)
    store.enqueue("odd", "time", RUN, '{"not": "an envelope"}')
    more = enqueue_windows(store, 6)[4:]
    transport = RecordingTransport()
    assert senders(store, transport, batch_size=10).flush(5)["delivered"] == 7
    assert transport.requests == [ids, ["odd"], more]


def test_a_transport_without_batches_gets_one_row_per_send(store: Store, senders) -> None:
    ids = enqueue_windows(store, 3)

    class Single:
        sent: list[str] = []

        def send(self, body: str, event_id: str) -> Outcome:
            self.sent.append(event_id)
            return Outcome.delivered()

        def close(self) -> None:
            pass

    transport = Single()
    assert senders(store, transport, batch_size=10).flush(5)["delivered"] == 3
    assert transport.sent == ids


def test_a_batch_too_large_for_the_endpoint_goes_through_in_halves(
    store: Store, server: LoopbackServer, transport, senders
) -> None:
    ids = enqueue_windows(store, 8)
    server.script(Fault.reply(413, {"message": "request entity too large"}))
    assert senders(store, transport, batch_size=8).flush(5) == {"delivered": 8, "queued": 0, "rejected": 0}
    assert [len(r.event_ids) for r in server.received] == [8, 4, 4]
    assert server.stored_ids == ids
