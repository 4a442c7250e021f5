"""The relay as a managed service of a real JupyterHub: the student's own server token is
all a kernel needs, the hub says whose it is, no admin scope granted."""

from __future__ import annotations

import time
from typing import Iterator

import httpx
import pytest

from ..loopback import CLIENT_SECRET, LoopbackServer
from .harness import delivered_events, heartbeat_body, new_run, submit_body
from .hub import Hub


@pytest.fixture(scope="module")
def caliper() -> Iterator[LoopbackServer]:
    # The relay maps hub names to emails by its --email-template, then finds each student's
    # sourcedId in the stand-in's OneRoster users, as it would in Timeback's.
    users = [{"email": f"{name}@school.edu", "sourcedId": f"u-{name}"} for name in ("alice", "bob")]
    with LoopbackServer(users=users) as server:
        yield server


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, caliper: LoopbackServer) -> Iterator[Hub]:
    hub = Hub(tmp_path_factory.mktemp("hub"), caliper)
    try:
        hub.start()
        for user in ("alice", "bob"):
            hub.start_server(user)
        yield hub
    finally:
        hub.stop()


def _past() -> int:
    return time.time_ns() // 1_000_000 - 3_600_000


def _wait_for(check, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_a_server_token_identifies_its_student_through_the_proxy(hub: Hub, caliper: LoopbackServer) -> None:
    tokens = {user: hub.server_token(user) for user in ("alice", "bob")}
    runs = {user: new_run() for user in tokens}
    with httpx.Client(timeout=30) as client:
        for user, token in tokens.items():
            # Whatever the body claims, the actor is the token's owner.
            body = heartbeat_body(runs[user], _past(), email="mallory@school.edu", user={"email": "mallory@school.edu"})
            reply = client.post(f"{hub.relay_url}/activity/heartbeat", json=body, headers={"Authorization": f"token {token}"})
            assert reply.status_code == 204, reply.text
        # bob cannot post into alice's run, nor complete it.
        for route, body in (("heartbeat", heartbeat_body(runs["alice"], _past() + 15_000)),
                            ("submit", submit_body(runs["alice"], _past() + 15_000))):
            reply = client.post(f"{hub.relay_url}/activity/{route}", json=body, headers={"Authorization": f"token {tokens['bob']}"})
            assert reply.status_code == 403 and reply.json()["error"]["code"] == "FORBIDDEN"
        for header in ("token not-a-hub-token", f"token {hub.tester_token}", ""):
            reply = client.post(f"{hub.relay_url}/activity/heartbeat", json=heartbeat_body(new_run(), _past()),
                                headers={"Authorization": header})
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "UNAUTHORIZED"
        health = client.get(f"{hub.relay_url}/health").json()
        assert health["mode"] == "jupyterhub" and CLIENT_SECRET not in str(health)
    events = _wait_for(lambda: [e for e in delivered_events(caliper) if e["session"] in {f"urn:uuid:{r}" for r in runs.values()}]
                       if len(delivered_events(caliper)) >= 2 else None)
    by_run = {e["session"]: e["actor"]["email"] for e in events}
    assert by_run == {f"urn:uuid:{runs['alice']}": "alice@school.edu", f"urn:uuid:{runs['bob']}": "bob@school.edu"}
