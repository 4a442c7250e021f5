"""The relay's writer process seen from the HTTP process (`link.py`), without HTTP: a `Relay`
with a real writer child, its routes awaited on an event loop here, as `serve` runs it (the
relay closed on that loop at the end)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from timeback_nb.relay import Relay, RelayOptions, link, writer
from timeback_nb.validation import iso_to_epoch_ms

from .harness import heartbeat_body, relay_files


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[[], Relay]]:
    started: list[Relay] = []

    def start() -> Relay:
        files = relay_files(tmp_path)
        env = {"TIMEBACK_CONFIG": str(files["config"]), "TIMEBACK_NB_TRANSPORT": "local"}
        options = RelayOptions(store=tmp_path / "relay.sqlite", tokens=files["tokens"], users=files["users"], environ=env)
        started.append(Relay(options).start())
        return started[-1]

    yield start
    for relay in started:
        relay.stop()


def _windows(count: int) -> list[bytes]:
    run, t0 = str(uuid.uuid4()), time.time_ns() // 1_000_000 - 3_600_000
    return [json.dumps(heartbeat_body(run, t0 + i * 15_000)).encode() for i in range(count)]


def _run(relay: Relay, scenario: Any) -> Any:
    """`scenario` on a loop of its own, on a thread of its own (the test's thread may have a
    loop running); the relay closed on that loop at the end, as `serve` does."""

    async def main() -> Any:
        try:
            return await scenario
        finally:
            await relay.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result(120)


async def _post_all(relay: Relay, bodies: list[bytes]) -> list[Any]:
    return await asyncio.gather(*(relay.heartbeat("token tok-alice", body) for body in bodies))


def _writer_pid(relay: Relay) -> int:
    process = relay.writer.process._process  # type: ignore[union-attr]
    assert process is not None
    return process.pid


def _stored(relay: Relay) -> int:
    with sqlite3.connect(relay.store.path) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def test_a_burst_is_answered_once_durable_and_again_as_duplicates(start_relay: Callable[[], Relay]) -> None:
    relay, bodies = start_relay(), _windows(200)

    async def scenario() -> tuple[list[Any], int, list[Any]]:
        first = await _post_all(relay, bodies)
        stored = _stored(relay)  # every 204 came after its commit
        return first, stored, await _post_all(relay, bodies)

    first, stored, again = _run(relay, scenario())
    assert first == [(204, None)] * 200 and stored == 200
    assert again == [(200, {"duplicate": True})] * 200
    assert _stored(relay) == 200


def test_a_writer_that_stops_answering_is_replaced_at_once_and_its_requests_get_503(
    start_relay: Callable[[], Relay], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link, "ANSWER_TIMEOUT_S", 1.0)
    relay = start_relay()
    hung = _writer_pid(relay)

    async def scenario() -> tuple[list[Any], list[Any], float]:
        assert await relay.heartbeat("token tok-alice", _windows(1)[0]) == (204, None)
        os.kill(hung, signal.SIGSTOP)  # alive, holding its socket, answering nothing
        started = time.monotonic()
        stuck = await _post_all(relay, _windows(3))
        after = await _post_all(relay, _windows(3))
        return stuck, after, time.monotonic() - started

    try:
        stuck, after, took = _run(relay, scenario())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert [status for status, _ in stuck] == [503] * 3
    assert all(body["error"]["code"] == "INTERNAL_ERROR" for _, body in stuck)
    assert after == [(204, None)] * 3
    assert _writer_pid(relay) != hung
    # The timeout, then a new writer: not the stop timeout a writer that ignores SIGTERM would cost.
    assert took < link.STOP_TIMEOUT_S


def test_health_reports_the_writers_counts(start_relay: Callable[[], Relay]) -> None:
    relay = start_relay()

    async def scenario() -> tuple[Any, Any]:
        await _post_all(relay, _windows(5))
        return await relay.health()

    status, body = _run(relay, scenario())
    assert status == 200 and body["accepted"] == 5 and body["status"] == "ok"


def test_close_lets_the_writer_answer_what_it_was_sent_before_it_stops(start_relay: Callable[[], Relay]) -> None:
    relay = start_relay()

    async def scenario() -> list[Any]:
        posts = asyncio.gather(*(relay.heartbeat("token tok-alice", body) for body in _windows(50)))
        await asyncio.sleep(0)  # the requests are read and sent, not yet answered
        await relay.close()
        return list(await posts)

    assert _run(relay, scenario()) == [(204, None)] * 50
    assert _stored(relay) == 50


def test_a_writer_that_cannot_read_its_stream_stops_and_the_next_request_gets_a_new_one(
    start_relay: Callable[[], Relay],
) -> None:
    relay = start_relay()
    broken = _writer_pid(relay)
    assert isinstance(relay.writer, link.WriterLink) and relay.writer.process.socket is not None
    relay.writer.process.socket.send(writer.HEADER.pack(5) + b"junk!")  # a frame nothing can unpickle

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and relay.writer.process._process.poll() is None:  # type: ignore[union-attr]
        time.sleep(0.05)
    assert relay.writer.process._process.poll() is not None, "the writer waits for a builder that is gone"  # type: ignore[union-attr]

    async def scenario() -> list[Any]:
        first = await relay.heartbeat("token tok-alice", _windows(1)[0])
        return [first, await relay.heartbeat("token tok-alice", _windows(1)[0])]

    replies = _run(relay, scenario())
    assert replies[-1] == (204, None) and _writer_pid(relay) != broken


def test_the_writer_says_whether_a_students_window_was_accepted(start_relay: Callable[[], Relay]) -> None:
    relay, body = start_relay(), _windows(1)[0]
    window = json.loads(body)
    run, start = window["runId"], iso_to_epoch_ms(window["startedAt"])
    assert isinstance(relay.writer, link.WriterLink)

    async def scenario() -> list[Any]:
        before = await relay.writer.has_window("alice", run, start)
        assert await relay.heartbeat("token tok-alice", body) == (204, None)
        return [before, await relay.writer.has_window("alice", run, start),
                await relay.writer.has_window("bob", run, start), await relay.writer.has_window("alice", run, start + 1)]

    assert _run(relay, scenario()) == [False, True, False, False]
