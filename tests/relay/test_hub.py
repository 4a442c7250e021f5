"""The relay as a managed service of a real JupyterHub: the student's own server token is
all a kernel needs, the hub says whose it is, no admin scope granted."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Iterator

import httpx
import pytest

from ..browser.harness import Chromium, finish, spent_seconds, start_source
from ..loopback import CLIENT_SECRET, LoopbackServer
from .harness import delivered_events, heartbeat_body, new_run, submit_body
from .hub import Hub, student_page


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


# --- two students in Chromium, each kernel in relay mode ------------------------------------------


SECRETS_CELL = """import hashlib, json, os
values = list(os.environ.values()) + [v.split(b"=", 1)[-1].decode("utf-8", "replace")
                                       for v in open("/proc/self/environ", "rb").read().split(b"\\0")]
print("OUT", json.dumps({"names": sorted(os.environ), "digests": sorted({hashlib.sha256(v.encode()).hexdigest() for v in values})}))"""


def _post_cell(route: str, body: dict, token_expr: str = "os.environ['JUPYTERHUB_API_TOKEN']") -> str:
    return (
        "import httpx, json, os\n"
        f"reply = httpx.post(os.environ['TIMEBACK_RELAY_URL'] + '/activity/{route}', json={body!r},\n"
        f"                   headers={{'Authorization': 'token ' + {token_expr}}}, timeout=30)\n"
        "print('OUT', json.dumps([reply.status_code, reply.json() if reply.content else None]))"
    )


@pytest.mark.browser
def test_two_students_in_chromium_each_reported_as_themselves(hub: Hub, caliper: LoopbackServer, chromium: Chromium) -> None:
    runs = {user: new_run() for user in ("alice", "bob")}
    pages = {}
    for user, run in runs.items():
        name = hub.write_notebook(user, [start_source(run, heartbeat_interval=2)], "lesson.ipynb")
        pages[user] = student_page(chromium, hub, user, name)
        pages[user].run_cell(0)
        pages[user].widget_text()
    time.sleep(5)  # a few 2 s windows of active time each
    kernels = {user: finish(page, {"xpEarned": 7, "totalQuestions": 3, "correctQuestions": 2})[1] for user, page in pages.items()}
    for user, kernel in kernels.items():
        assert kernel["flush"]["queued"] == kernel["flush"]["rejected"] == 0, (user, kernel)

    # At the Caliper stand-in: each run's events carry its own student, time and completion.
    for user, run in runs.items():
        events = _wait_for(lambda: (found := [e for e in delivered_events(caliper) if e["session"] == f"urn:uuid:{run}"])
                           and any(e["type"] == "ActivityEvent" for e in found) and found)
        assert {e["actor"]["email"] for e in events} == {f"{user}@school.edu"}
        assert {e["actor"]["id"].rsplit("/", 1)[1] for e in events} == {f"u-{user}"}
        active = spent_seconds(events)
        assert abs(active - kernels[user]["elapsed_ms"] / 1000) < 0.002 and active > 3
        (completion,) = [e for e in events if e["type"] == "ActivityEvent"]
        assert {i["type"]: i["value"] for i in completion["generated"]["items"]}["xpEarned"] == 7

    # Neither kernel holds the client secret or id: not in os.environ, not in /proc/self/environ.
    secret = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    for page in pages.values():
        seen = json.loads(page.run(SECRETS_CELL))
        assert secret not in seen["digests"]
        assert not [n for n in seen["names"] if n.startswith("TIMEBACK_CLIENT")]
        assert {"JUPYTERHUB_API_TOKEN", "TIMEBACK_RELAY_URL"} <= set(seen["names"])

    # From bob's kernel, with bob's own token: alice's run is refused; a body naming alice is bob's.
    t0 = time.time_ns() // 1_000_000 - 3_600_000
    status, reply = json.loads(pages["bob"].run(_post_cell("heartbeat", heartbeat_body(runs["alice"], t0))))
    assert status == 403 and reply["error"]["code"] == "FORBIDDEN"
    claimed = new_run()
    body = heartbeat_body(claimed, t0, email="alice@school.edu", user="alice", actor={"email": "alice@school.edu"})
    assert json.loads(pages["bob"].run(_post_cell("heartbeat", body)))[0] == 204
    event = _wait_for(lambda: next((e for e in delivered_events(caliper) if e["session"] == f"urn:uuid:{claimed}"), None))
    assert event["actor"]["email"] == "bob@school.edu"

    # A kernel whose token the hub does not know: refused, and the kernel shows why.
    shown = json.loads(pages["bob"].run(INVALID_TOKEN_CELL, timeout=60))
    assert shown["flush"]["delivered"] == 0 and shown["flush"]["queued"] + shown["flush"]["rejected"] == 1
    assert "UNAUTHORIZED" in shown["events"], shown["events"]


# The record goes to a store of its own: the kernel's earlier sender (with the good token)
# must not be the one that picks it up.
INVALID_TOKEN_CELL = """import json, os, subprocess, sys, tempfile, timeback_nb
os.environ["JUPYTERHUB_API_TOKEN"] = "not-a-token-the-hub-knows"
os.environ["TIMEBACK_NB_STORE"] = os.path.join(tempfile.mkdtemp(), "bad-token.sqlite")
timeback_nb.record(id="quiz", name="Quiz", course={"subject": "Math", "grade": 8}, metrics={"xpEarned": 1})
counts = timeback_nb.flush(timeout=3)
events = subprocess.run([sys.executable, "-m", "timeback_nb.cli", "events"], capture_output=True, text=True).stdout
print("OUT", json.dumps({"flush": counts, "events": events}))"""
