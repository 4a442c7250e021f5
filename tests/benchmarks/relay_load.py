"""A load generator for the relay-ingest benchmark: keep-alive HTTP/1.1 connections on raw
asyncio sockets (cheap enough to leave most of the CPU to the server under test), each one a
student streaming heartbeat windows of its own run.

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

from timeback_nb.clock import iso_utc_ms

WINDOW_MS = 15_000


def _request(host: str, path: str, token: str, run: str, index: int, t0: int) -> bytes:
    start = t0 + index * WINDOW_MS
    body = (
        '{"id":"week-3","name":"Week 3: Linear functions","course":{"subject":"Math","grade":8},'
        f'"runId":"{run}","startedAt":"{iso_utc_ms(start)}","endedAt":"{iso_utc_ms(start + WINDOW_MS)}",'
        '"elapsedMs":13500,"pausedMs":1500}'
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: token {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_reply(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _main(port: int, path: str, seconds: float, rate: float, spec: dict) -> dict:
    host = f"127.0.0.1:{port}"
    clients = spec["clients"]
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    interval = len(clients) / rate if rate else 0.0

    async def connection(slot: int, client: dict) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = 0
        due = started + slot / rate if rate else started
        try:
            while True:
                if rate:
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                sent = due if rate else time.perf_counter()
                if sent >= deadline:
                    return
                writer.write(_request(host, path, client["token"], client["run"], index, spec["t0"]))
                status = await _read_reply(reader)
                latencies.append(time.perf_counter() - sent)
                statuses[status] = statuses.get(status, 0) + 1
                index += 1
                due += interval
        finally:
            writer.close()

    await asyncio.gather(*(connection(i, c) for i, c in enumerate(clients)))
    took = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": took,
        "statuses": statuses,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
    }


if __name__ == "__main__":
    port, path, seconds, rate, spec_path = sys.argv[1:6]
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_main(int(port), path, float(seconds), float(rate), spec))
    print(json.dumps(result))
