"""A kernel-like process for the crash and two-process tests (run as a script).

    python tests/crash_worker.py produce STORE EVENT_URL TOKEN_URL --interval 0.05 --lease 1
        Commits one event per interval to the outbox (as a heartbeat would) with a Sender
        pointed at EVENT_URL running, and prints "committed <event id> <monotonic s>" after
        each commit returns. Runs until it is killed.

    python tests/crash_worker.py drain STORE EVENT_URL TOKEN_URL --timeout 20 --batch 5 [--wait]
        Another kernel starting up: flush() the store through EVENT_URL and print
        {"flush": <counts>, "sent": <deliveries this process made>} as JSON. With --wait it
        first prints "ready" and waits for a line on stdin (so two workers start together).

The client id and secret come from TB_TEST_CLIENT_ID / TB_TEST_CLIENT_SECRET.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid

from timeback_nb.outbox import Backoff, Sender
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport, Outcome

NAMESPACE = uuid.UUID("6a1f7c2e-0b8e-4f55-9d1c-3c7a0e5b2f10")


def event_id(run: str, n: int) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{run}:{n}')}"


def envelope(run: str, n: int) -> str:
    return json.dumps(
        {
            "sensor": "https://nb.example.org",
            "sendTime": "2025-01-15T10:00:15.000Z",
            "dataVersion": "http://purl.imsglobal.org/ctx/caliper/v1p2",
            "data": [{"id": event_id(run, n), "type": "TimeSpentEvent", "session": f"urn:uuid:{run}", "n": n}],
        },
        separators=(",", ":"),
    )


class CountingTransport:
    def __init__(self, inner: CaliperTransport) -> None:
        self.inner = inner
        self.sent = 0
        self.lock = threading.Lock()

    def send(self, body: str, event_id: str) -> Outcome:
        outcome = self.inner.send(body, event_id)
        if outcome.status == "delivered":
            with self.lock:
                self.sent += 1
        return outcome

    def close(self) -> None:
        self.inner.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "drain"])
    parser.add_argument("store")
    parser.add_argument("event_url")
    parser.add_argument("token_url")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--lease", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--run", default=str(uuid.uuid4()))
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args()
    client_id, secret = os.environ["TB_TEST_CLIENT_ID"], os.environ["TB_TEST_CLIENT_SECRET"]

    store = Store(args.store)
    transport = CountingTransport(CaliperTransport(args.event_url, args.token_url, client_id, secret, timeout=10))
    sender = Sender(
        store, transport, lease_seconds=args.lease, batch=args.batch, backoff=Backoff(base=0.05, cap=0.5)
    )
    if args.mode == "produce":
        sender.start()
        n = 0
        while True:
            eid = event_id(args.run, n)
            store.enqueue(eid, "time", args.run, envelope(args.run, n))
            print(f"committed {eid} {time.monotonic():.6f}", flush=True)
            sender.wake()
            n += 1
            time.sleep(args.interval)
    if args.wait:
        print("ready", flush=True)
        sys.stdin.readline()
    counts = sender.flush(args.timeout)
    sender.stop(5)
    transport.close()
    store.close()
    print(json.dumps({"flush": counts, "sent": transport.sent}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
