"""The relay as a real process on loopback, delivering to the loopback Caliper stand-in:
killed with SIGKILL mid-stream, the Caliper endpoint down, what /health shows; and the
kernel side never loading the relay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from ..loopback import CLIENT_SECRET, LoopbackServer
from ..browser.harness import wait_until
from .harness import ROOT, RelayProcess, heartbeat_body, new_run


@pytest.fixture
def caliper() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def relay(tmp_path: Path, caliper: LoopbackServer) -> Iterator[RelayProcess]:
    process = RelayProcess(tmp_path, caliper)
    process.start()
    yield process
    process.stop()


def _past(windows_back: int) -> int:
    """Epoch ms of a window grid start far enough back that no window is in the future."""
    return (time.time_ns() // 1_000_000) - windows_back * 15_000 - 3_600_000


def test_health_needs_no_token_and_shows_no_secret(relay: RelayProcess) -> None:
    reply = relay.client.get(relay.url + "/health")
    assert reply.status_code == 200
    health = reply.json()
    assert health["status"] == "ok" and health["mode"] == "standalone" and health["transport"] == "caliper"
    assert CLIENT_SECRET not in reply.text and "tok-alice" not in reply.text


@pytest.mark.parametrize("victim", ["relay", "writer"])
def test_sigkill_mid_stream_loses_nothing_and_repeats_no_event_id(relay: RelayProcess, caliper: LoopbackServer, victim: str) -> None:
    """Four kernels stream windows; the relay (restarted by hand) or its writer process
    (started again by the relay) is killed with SIGKILL while they do. Each kernel does what
    its outbox does: resend until 204/200, and once more a window whose reply it never saw.
    Every window reaches Caliper, each under one event id; a killed relay's writer stops."""
    per_kernel = 40
    t0 = _past(per_kernel)
    kernels = [(token, new_run()) for token in ("tok-alice", "tok-alice", "tok-bob", "tok-bob")]
    answers: dict[str, list[int]] = defaultdict(list)
    accepted = threading.Semaphore(0)

    def kernel(token: str, run: str) -> None:
        client = httpx.Client(timeout=5)
        for i in range(per_kernel):
            body = heartbeat_body(run, t0 + i * 15_000)
            while True:
                try:
                    reply = client.post(f"{relay.url}/activity/heartbeat", json=body, headers={"Authorization": f"token {token}"})
                except httpx.TransportError:
                    time.sleep(0.05)  # the relay is down: the kernel's outbox keeps the window
                    continue
                answers[run].append(reply.status_code)
                if reply.status_code in (200, 204):
                    break
                assert reply.status_code >= 500, reply.text
                time.sleep(0.05)
            accepted.release()
            time.sleep(0.01)
        client.close()

    threads = [threading.Thread(target=kernel, args=k) for k in kernels]
    for thread in threads:
        thread.start()
    for _ in range(50):
        accepted.acquire(timeout=30)
    writer = relay.writer_pid()
    assert writer is not None
    if victim == "relay":
        relay.kill()
        wait_until(lambda: not Path(f"/proc/{writer}").exists() or "Z" in Path(f"/proc/{writer}/stat").read_text().split()[2], 10, "the killed relay's writer to stop")
        relay.start()
    else:
        os.kill(writer, signal.SIGKILL)
        wait_until(lambda: relay.writer_pid() not in (None, writer), 30, "the relay to start another writer")
    for thread in threads:
        thread.join(60)
    # A kernel killed between the relay's 204 and its own commit sends the window again.
    for token, run in kernels:
        assert relay.post("heartbeat", heartbeat_body(run, t0), token=token).json() == {"duplicate": True}

    total = per_kernel * len(kernels)
    wait_until(lambda: len(caliper.stored_ids) >= total, 30, "every window at the Caliper stand-in")
    ids_per_window: dict[tuple[str, str], set[str]] = defaultdict(set)
    with caliper.lock:
        bodies = [r.body for r in caliper.received]
    for body in bodies:
        for event in json.loads(body)["data"]:
            ids_per_window[(event["session"], event["eventTime"])].add(event["id"])
    assert len(ids_per_window) == total
    assert all(len(ids) == 1 for ids in ids_per_window.values())
    assert len(caliper.stored_ids) == len(set(caliper.stored_ids)) == total
    for token, run in kernels:
        assert answers[run].count(204) + answers[run].count(200) >= per_kernel


def test_caliper_down_kernels_still_get_204_and_events_arrive_later(relay: RelayProcess, caliper: LoopbackServer) -> None:
    caliper.outage(3600)
    run, t0 = new_run(), _past(5)
    for i in range(5):
        assert relay.post("heartbeat", heartbeat_body(run, t0 + i * 15_000)).status_code == 204
    health = wait_until(lambda: (h := relay.client.get(relay.url + "/health").json())["lastError"] and h, 20, "a failed delivery")
    assert health["queued"] == 5 and "503" in health["lastError"]
    assert caliper.stored_ids == []
    caliper.outage(0)
    wait_until(lambda: len(caliper.stored_ids) == 5, 40, "the queued events after the outage")
    health = relay.client.get(relay.url + "/health").json()
    assert (health["queued"], health["accepted"], health["lastError"]) == (0, 5, None)
    # The relay batches by default: what queued up went out in one envelope.
    with caliper.lock:
        sizes = [len(r.event_ids) for r in caliper.received if r.event_ids]
    assert max(sizes) == 5


def test_the_relay_log_holds_no_secret_and_no_token(relay: RelayProcess) -> None:
    relay.post("heartbeat", heartbeat_body(new_run(), _past(1)))
    relay.post("heartbeat", {"id": "x"}, token="tok-bob")
    relay.client.post(relay.url + "/activity/heartbeat", json={}, headers={"Authorization": "token guessed-token"})
    relay.stop()
    log = (relay.home / "relay.log").read_text()
    assert "relay (standalone) on http://127.0.0.1" in log
    for secret in (CLIENT_SECRET, "tok-alice", "tok-bob", "guessed-token"):
        assert secret not in log


def test_kernel_side_modules_never_load_the_relay() -> None:
    """Importing timeback_nb and every kernel-side module leaves timeback_nb.relay, tornado's
    server and jupyterhub unloaded (the kernel must not depend on the relay extra)."""
    code = (
        "import pkgutil, importlib, sys, timeback_nb\n"
        "names = [m.name for m in pkgutil.iter_modules(timeback_nb.__path__) if m.name != 'relay']\n"
        "for name in names: importlib.import_module('timeback_nb.' + name)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('timeback_nb.relay', 'jupyterhub')))\n"
        "print(len(names), loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    count, loaded = out.split(" ", 1)
    assert int(count) >= 15 and loaded.strip() == "[]"
