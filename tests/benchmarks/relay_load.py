"""A load generator for the relay-ingest benchmark: keep-alive HTTP/1.1 connections driven by
asyncio protocols (no stream objects: the generator shares the server's two cores, so every
microsecond it spends is one the server under test does not get), each one a student
streaming heartbeat windows of its own run.

    python -m tests.benchmarks.relay_load PORT PATH SECONDS RATE SPEC.json  -> JSON on stdout

RATE 0 = as fast as the replies come (closed loop); RATE r = r requests/s in all, on a fixed
schedule, latency counted from the scheduled instant (so queueing shows). SPEC holds one
`{"token": ..., "run": ...}` per connection and the epoch ms the windows start at.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from timeback_nb.clock import iso_utc_ms

WINDOW_MS = 15_000
HEAD_END = b"\r\n\r\n"


def _request(host: str, path: str, token: str, run: str, window: tuple[str, str]) -> bytes:
    started_at, ended_at = window
    body = (
        '{"id":"week-3","name":"Week 3: Linear functions","course":{"subject":"Math","grade":8},'
        f'"runId":"{run}","startedAt":"{started_at}","endedAt":"{ended_at}","elapsedMs":13500,"pausedMs":1500}}'
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: token {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    return 0


class _Load:
    """What all connections share: the schedule and what was measured."""

    def __init__(self, host: str, path: str, seconds: float, rate: float, spec: dict[str, Any]) -> None:
        self.host, self.path, self.t0 = host, path, spec["t0"]
        self.started = time.perf_counter()
        self.deadline = self.started + seconds
        self.rate = rate
        self.interval = len(spec["clients"]) / rate if rate else 0.0
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self.open = len(spec["clients"])
        self.done = asyncio.get_running_loop().create_future()
        self._windows: list[tuple[str, str]] = []  # window i of every run: the same times

    def request(self, client: dict[str, str], index: int) -> bytes:
        while len(self._windows) <= index:
            start = self.t0 + len(self._windows) * WINDOW_MS
            self._windows.append((iso_utc_ms(start), iso_utc_ms(start + WINDOW_MS)))
        return _request(self.host, self.path, client["token"], client["run"], self._windows[index])

    def finished(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.done.done():
            self.done.set_result(None)


class _Student(asyncio.Protocol):
    """One keep-alive connection: a request, its reply, the next request (now, or when due)."""

    def __init__(self, load: _Load, slot: int, client: dict[str, str]) -> None:
        self.load = load
        self.client = client
        self.index = 0
        self.due = load.started + slot / load.rate if load.rate else load.started
        self.sent = 0.0
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def _next(self) -> None:
        load = self.load
        if load.rate:
            wait = self.due - time.perf_counter()
            if wait > 0:
                asyncio.get_running_loop().call_later(wait, self._send)
                return
        self._send()

    def _send(self) -> None:
        load = self.load
        self.sent = self.due if load.rate else time.perf_counter()
        if self.sent >= load.deadline:
            assert self.transport is not None
            self.transport.close()
            return
        assert self.transport is not None
        self.transport.write(load.request(self.client, self.index))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(HEAD_END)
        if end < 0:
            return
        size = end + len(HEAD_END) + _content_length(self.buffer[:end])
        if len(self.buffer) < size:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[size:]
        load = self.load
        load.latencies.append(time.perf_counter() - self.sent)
        load.statuses[status] = load.statuses.get(status, 0) + 1
        self.index += 1
        self.due += load.interval
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.finished()


async def _main(port: int, path: str, seconds: float, rate: float, spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = _Load(f"127.0.0.1:{port}", path, seconds, rate, spec)
    for slot, client in enumerate(spec["clients"]):
        await loop.create_connection(lambda slot=slot, client=client: _Student(load, slot, client), "127.0.0.1", port)
    await load.done
    took = time.perf_counter() - load.started
    latencies = sorted(load.latencies)
    return {
        "requests": len(latencies),
        "seconds": took,
        "statuses": load.statuses,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
    }


if __name__ == "__main__":
    port, path, seconds, rate, spec_path = sys.argv[1:6]
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_main(int(port), path, float(seconds), float(rate), spec))
    print(json.dumps(result))
