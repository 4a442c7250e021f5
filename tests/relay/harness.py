"""The relay under test: in-process (a `Relay` called directly, for the many request cases) and
as a real `python -m timeback_nb.relay` process on loopback (for kills and restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from timeback_nb.clock import iso_utc_ms
from timeback_nb.relay import Relay, RelayOptions

from ..conftest import CONFIG as KERNEL_CONFIG
from ..loopback import CLIENT_ID, CLIENT_SECRET, LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
# The kernel tests' config, with DS-101 synced for production only (the relay runs on staging).
CONFIG = {
    **KERNEL_CONFIG,
    "courses": [KERNEL_CONFIG["courses"][0], {**KERNEL_CONFIG["courses"][1], "ids": {"production": "c-prd-2"}}],
}
TOKENS = {"tok-alice": {"name": "alice"}, "tok-bob": {"name": "bob"}, "tok-carol": {"name": "carol"}}
USERS = {"alice": {"email": "alice@school.edu", "id": "u-alice"}, "bob": {"email": "bob@school.edu", "id": "u-bob"}}
NOW = 1_736_935_200_000  # 2025-01-15T10:00:00.000Z: the in-process relay's wall clock


def heartbeat_body(run_id: str, start_ms: int, *, length_ms: int = 15_000, paused_ms: int = 1_500, **changes: Any) -> dict[str, Any]:
    body = {
        "id": "week-3", "name": "Week 3: Linear functions", "course": {"subject": "Math", "grade": 8},
        "runId": run_id, "startedAt": iso_utc_ms(start_ms), "endedAt": iso_utc_ms(start_ms + length_ms),
        "elapsedMs": length_ms - paused_ms, "pausedMs": paused_ms,
    }
    body.update(changes)
    return body


def submit_body(run_id: str, ended_ms: int, **changes: Any) -> dict[str, Any]:
    body = {
        "id": "week-3", "name": "Week 3: Linear functions", "course": {"subject": "Math", "grade": 8},
        "runId": run_id, "endedAt": iso_utc_ms(ended_ms),
        "metrics": {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8, "masteredUnits": 1},
        "pctComplete": 40,
    }
    body.update(changes)
    return body


def relay_files(home: Path, *, config: dict[str, Any] = CONFIG) -> dict[str, Path]:
    home.mkdir(parents=True, exist_ok=True)
    files = {"config": home / "timeback.config.json", "tokens": home / "tokens.json", "users": home / "users.json"}
    files["config"].write_text(json.dumps(config))
    files["tokens"].write_text(json.dumps(TOKENS))
    files["users"].write_text(json.dumps(USERS))
    return files


def caliper_env(server: LoopbackServer) -> dict[str, str]:
    """The relay's credentials and endpoints: the loopback Caliper stand-in."""
    return {
        "TIMEBACK_CLIENT_ID": CLIENT_ID, "TIMEBACK_CLIENT_SECRET": CLIENT_SECRET,
        "TIMEBACK_CALIPER_URL": server.event_url, "TIMEBACK_AUTH_URL": server.token_url,
        "TIMEBACK_ONEROSTER_URL": server.oneroster_url, "TIMEBACK_ENV": "staging",
    }


class InProcessRelay:
    """A `Relay` on a store in `home`, called without HTTP; its wall clock is `self.now`."""

    def __init__(self, home: Path, *, environ: dict[str, str] | None = None, **options: Any) -> None:
        files = relay_files(home)
        self.home = home
        self.now = NOW
        env = {"TIMEBACK_CONFIG": str(files["config"]), "TIMEBACK_NB_TRANSPORT": "local", **(environ or {})}
        options.setdefault("users", files["users"])
        options.setdefault("tokens", files["tokens"])
        self.options = RelayOptions(store=home / "relay.sqlite", environ=env, **options)
        self.relay = Relay(self.options, wall_ms=lambda: self.now, in_process=True).start()
        # The relay's own loop, on a thread of its own (the test's thread may have a loop running).
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="relay-test-loop", daemon=True)
        self._loop_thread.start()

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def post(self, route: str, body: Any, token: str | None = "tok-alice", *, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        auth = None if token is None else f"token {token}"
        handler = self.relay.heartbeat if route == "heartbeat" else self.relay.submit
        return self.call(handler(auth, data))

    def post_as_one_group(self, requests: list[tuple[str, Any, str]]) -> list[tuple[int, Any]]:
        """Post `(route, body, token)` requests so the writer commits them as one group: it is
        stopped while they queue, then started again."""
        thread = self.relay.writer.thread  # type: ignore[union-attr]  # in process: a GroupThread
        thread.stop()
        groups = thread.groups
        pending = []
        for route, body, token in requests:
            handler = self.relay.heartbeat if route == "heartbeat" else self.relay.submit
            pending.append(asyncio.run_coroutine_threadsafe(handler(f"token {token}", json.dumps(body).encode()), self.loop))
        deadline = time.monotonic() + 10
        while thread.queued() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.005)
        thread.start()
        replies = [future.result(30) for future in pending]
        assert thread.groups == groups + 1, "the requests were not committed as one group"
        return replies

    def restart(self) -> None:
        self.relay.stop()
        self.relay = Relay(self.options, wall_ms=lambda: self.now, in_process=True).start()

    def outbox(self) -> list[dict[str, Any]]:
        return [json.loads(row["body"]) for row in self.relay.store.events()]  # oldest first

    def close(self) -> None:
        self.relay.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(5)
        self.loop.close()


class RelayProcess:
    """`python -m timeback_nb.relay` standalone on a free port, delivering to `caliper`."""

    def __init__(self, home: Path, caliper: LoopbackServer, *args: str) -> None:
        from ..browser.harness import free_port

        self.home = home
        self.files = relay_files(home)
        self.port = free_port()
        self.args = args
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TIMEBACK_", "JUPYTERHUB_"))},
            **caliper_env(caliper),
            "TIMEBACK_CONFIG": str(self.files["config"]),
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/timeback"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "timeback_nb.relay", "--port", str(self.port), "--store", str(self.home / "relay.sqlite"),
            "--tokens", str(self.files["tokens"]), "--users", str(self.files["users"]), *self.args,
        ]

    def start(self) -> RelayProcess:
        log = open(self.home / "relay.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited: {(self.home / 'relay.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get(self.url + "/health").status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError("the relay did not come up")
            time.sleep(0.05)

    def post(self, route: str, body: Any, token: str = "tok-alice") -> httpx.Response:
        return self.client.post(f"{self.url}/activity/{route}", json=body, headers={"Authorization": f"token {token}"})

    def writer_pid(self) -> int | None:
        """The relay's writer process (its one child; None while it has none or two). A child
        is listed under the thread that started it: the relay's, or its group thread's."""
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        children = [pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()]
        return int(children[0]) if len(children) == 1 else None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None
        self.client.close()


def delivered_events(caliper: LoopbackServer) -> list[dict[str, Any]]:
    """Every event the Caliper stand-in stored, once each, in arrival order."""
    with caliper.lock:
        stored = [(event_id, caliper.stored[event_id]) for event_id in caliper.stored_ids]
    events = []
    for event_id, body in stored:
        events += [event for event in json.loads(body)["data"] if event["id"] == event_id]
    return events


def new_run() -> str:
    return str(uuid.uuid4())


def refused(reply: Any, field: str) -> str:
    """The message of a 400 INVALID_PAYLOAD naming `field`."""
    assert reply["error"]["code"] == "INVALID_PAYLOAD", reply
    assert reply["error"]["details"]["field"] == field, reply
    return str(reply["error"]["details"]["message"])
