"""The kernel's `relay` transport: the SDK's adapter bodies from the outbox to a relay on
127.0.0.1 (the loopback adapter stand-in), with the kernel's own token; every reply class;
settings, `timeback-nb check` and `events`; no secret anywhere."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

import timeback_nb
from timeback_nb import cli, events
from timeback_nb.adapter import RelayTransport, adapter_body, route_of
from timeback_nb.config import Settings
from timeback_nb.delivery import Delivery
from timeback_nb.errors import ConfigError
from timeback_nb.outbox import Sender, make_transport
from timeback_nb.store import Store
from timeback_nb.transport import LocalTransport, request_id

from .fakes import FakeClock, visit_and_end
from .loopback import CLIENT_SECRET, Fault, LoopbackServer, adapter_error
from .test_delivery_integration import FAST, RUN, T0, completion, target, window

HUB_TOKEN = "hubtok-5d1c0e2a9f7b4c3e8a6d-never-shown"
RELAY_TOKEN = "relaytok-0a9b8c7d6e5f-never-shown"
MATH8 = {"subject": "Math", "grade": 8}


@pytest.fixture
def server():
    with LoopbackServer() as s:
        s.adapter_tokens.update({HUB_TOKEN: "alice", RELAY_TOKEN: "bob"})
        yield s


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "tb.sqlite3") as s:
        yield s


def relay_env(server: LoopbackServer, *, hub: bool = True, **more: str) -> dict[str, str]:
    env = {"TIMEBACK_RELAY_URL": server.adapter_url, **more}
    env.update({"JUPYTERHUB_API_TOKEN": HUB_TOKEN} if hub else {"TIMEBACK_RELAY_TOKEN": RELAY_TOKEN})
    return env


class Kernel:
    """Delivery(wire="adapter") + Sender + RelayTransport over one store, as start() wires them."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.transport = make_transport(settings, store)
        self.sender = Sender(store, self.transport, backoff=FAST)
        self.delivery = Delivery(target(), store, self.sender, clock=FakeClock(wall_ms=T0), wire="adapter")

    def close(self) -> None:
        self.sender.stop(5)
        self.transport.close()


@pytest.fixture
def kernel(store: Store, server: LoopbackServer):
    k = Kernel(store, Settings.from_env(relay_env(server)))
    yield k
    k.close()


# -- settings -------------------------------------------------------------------------------------


def test_relay_is_the_default_with_a_relay_url_and_no_credentials(server: LoopbackServer) -> None:
    assert Settings.from_env(relay_env(server)).transport == "relay"
    assert Settings.from_env({}).transport == "local"
    with_credentials = relay_env(server, TIMEBACK_CLIENT_ID="id", TIMEBACK_CLIENT_SECRET=CLIENT_SECRET)
    assert Settings.from_env(with_credentials).transport == "caliper"
    assert Settings.from_env(dict(with_credentials, TIMEBACK_NB_TRANSPORT="relay")).transport == "relay"


def test_under_jupyterhub_the_hub_token_is_used_else_the_relay_token(server: LoopbackServer) -> None:
    both = Settings.from_env(relay_env(server, TIMEBACK_RELAY_TOKEN=RELAY_TOKEN))
    assert both.relay_token_source == "JUPYTERHUB_API_TOKEN"
    assert make_transport(both, None).scheme == "token"  # type: ignore[arg-type]
    alone = Settings.from_env(relay_env(server, hub=False))
    assert alone.relay_token_source == "TIMEBACK_RELAY_TOKEN"
    assert make_transport(alone, None).scheme == "Bearer"  # type: ignore[arg-type]
    for settings in (both, alone):
        shown = repr(settings) + repr(make_transport(settings, None))  # type: ignore[arg-type]
        assert HUB_TOKEN not in shown and RELAY_TOKEN not in shown and "hub_token=<set>" in repr(both)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        ({"TIMEBACK_NB_TRANSPORT": "relay", "TIMEBACK_RELAY_TOKEN": RELAY_TOKEN}, "TIMEBACK_RELAY_URL", "adapter base"),
        ({"TIMEBACK_RELAY_URL": "https://hub.example.edu/services/timeback/api/timeback"}, "TIMEBACK_RELAY_TOKEN",
         "JUPYTERHUB_API_TOKEN under JupyterHub, else TIMEBACK_RELAY_TOKEN"),
        ({"TIMEBACK_RELAY_URL": "http://relay.example.edu/api/timeback", "TIMEBACK_RELAY_TOKEN": RELAY_TOKEN},
         "TIMEBACK_RELAY_URL", "must use https"),
        ({"TIMEBACK_RELAY_URL": "hub.example.edu/api", "TIMEBACK_RELAY_TOKEN": RELAY_TOKEN},
         "TIMEBACK_RELAY_URL", "absolute http(s) URL"),
        ({"TIMEBACK_RELAY_URL": "https://u:p@hub.example.edu/api", "TIMEBACK_RELAY_TOKEN": RELAY_TOKEN},
         "TIMEBACK_RELAY_URL", "credentials do not belong in the URL"),
        ({"TIMEBACK_NB_TRANSPORT": "relai"}, "TIMEBACK_NB_TRANSPORT", "allowed: local, caliper, outbox, relay"),
    ],
)
def test_a_relay_setting_that_cannot_work_is_refused_naming_the_variable(env: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.field == field and words in str(caught.value)
    assert "u:p" not in str(caught.value) and RELAY_TOKEN not in str(caught.value)


def test_plain_http_reaches_a_relay_on_the_hubs_own_host_only_under_jupyterhub() -> None:
    # Zero to JupyterHub: the kernel already sends its hub token to http://hub:8081 in clear.
    hub = {"JUPYTERHUB_API_TOKEN": HUB_TOKEN, "JUPYTERHUB_API_URL": "http://hub:8081/hub/api"}
    settings = Settings.from_env(dict(hub, TIMEBACK_RELAY_URL="http://hub:10101/services/timeback/api/timeback"))
    assert settings.relay_url == "http://hub:10101/services/timeback/api/timeback"
    assert make_transport(settings, None).base_url == settings.relay_url  # type: ignore[arg-type,attr-defined]
    with pytest.raises(ConfigError, match="must use https"):
        Settings.from_env(dict(hub, TIMEBACK_RELAY_URL="http://elsewhere:10101/api/timeback"))
    with pytest.raises(ConfigError, match="must use https"):  # no hub token: no such exception
        Settings.from_env({"JUPYTERHUB_API_URL": "http://hub:8081/hub/api", "TIMEBACK_RELAY_TOKEN": RELAY_TOKEN,
                           "TIMEBACK_RELAY_URL": "http://hub:10101/api/timeback"})


# -- bodies ---------------------------------------------------------------------------------------


def test_outbox_rows_are_the_sdk_bodies_with_the_ids_of_the_events_the_relay_will_build() -> None:
    w, c = window(2), completion(T0 + 60_000)
    kind, event_id, body = adapter_body(w, "local-alice")
    assert (kind, route_of(body)) == ("heartbeat", "heartbeat")
    assert json.loads(body) == w.as_body()
    assert event_id == events.event_id(events.time_spent_envelope(w, target(), send_time="2025-01-15T10:00:00.000Z"))
    kind, event_id, body = adapter_body(c, "local-alice")
    assert (kind, route_of(body)) == ("submit", "submit") and json.loads(body) == c.as_body()
    envelope = events.completion_envelope(c, target(), attempt=1, send_time="2025-01-15T10:00:00.000Z")
    assert event_id == events.event_id(envelope)


def test_a_completion_outside_a_run_gets_a_stable_run_id_of_its_own() -> None:
    c = completion(T0, run=None)
    kind, event_id, body = adapter_body(c, "local-alice")
    run_id = json.loads(body)["runId"]
    assert run_id and adapter_body(c, "local-alice") == (kind, event_id, body)  # rebuilt: the same
    assert json.loads(adapter_body(c, "local-bob")[2])["runId"] != run_id
    assert json.loads(adapter_body(completion(T0 + 1, run=None), "local-alice")[2])["runId"] != run_id


def test_route_of_refuses_what_is_no_adapter_body() -> None:
    envelope = events.dumps(events.time_spent_envelope(window(0), target(), send_time="2025-01-15T10:00:00.000Z"))
    for body in (envelope, "{}", "not json", "[1]", '{"runId": "x"}'):
        assert route_of(body) is None


# -- the wire -------------------------------------------------------------------------------------


def test_windows_and_the_completion_reach_the_relay_as_committed_with_the_hub_token(
    kernel: Kernel, server: LoopbackServer
) -> None:
    records = [window(0), window(1), completion(T0 + 30_000)]
    for record in records:
        kernel.delivery.emit(record)
    assert kernel.sender.flush(5) == {"delivered": 3, "queued": 0, "rejected": 0}

    assert [r.route for r in server.adapter_requests] == ["heartbeat", "heartbeat", "submit"]
    assert server.accepted_bodies() == [r.as_body() for r in records]
    rows = kernel.store.events()
    assert [r.body for r in server.adapter_requests] == [r["body"].encode("utf-8") for r in rows]  # the committed bytes
    assert {(r.scheme, r.user) for r in server.adapter_requests} == {("token", "alice")}
    assert [r.request_id for r in server.adapter_requests] == [request_id(r["event_id"]) for r in rows]
    assert not server.received  # nothing went to a Caliper endpoint


def test_outside_jupyterhub_the_relay_token_goes_as_a_bearer_token(store: Store, server: LoopbackServer) -> None:
    k = Kernel(store, Settings.from_env(relay_env(server, hub=False)))
    try:
        k.delivery.emit(window(0))
        assert k.sender.flush(5)["delivered"] == 1
    finally:
        k.close()
    assert [(r.scheme, r.user) for r in server.adapter_requests] == [("Bearer", "bob")]


@pytest.mark.parametrize(
    "reply",
    [
        Fault.reply(200, {"duplicate": True}),
        Fault.reply(200, {"preview": True}),
        Fault.reply(204),
        Fault.reply(202, ""),
    ],
)
def test_every_success_reply_is_delivered(kernel: Kernel, server: LoopbackServer, reply: Fault) -> None:
    server.script_adapter(reply)
    kernel.delivery.emit(window(0))
    assert kernel.sender.flush(5) == {"delivered": 1, "queued": 0, "rejected": 0}
    assert len(server.adapter_requests) == 1 and kernel.sender.last_error is None


def test_a_replayed_window_is_a_duplicate_at_the_relay_and_delivered(kernel: Kernel, server: LoopbackServer) -> None:
    kernel.delivery.emit(window(0))
    assert kernel.sender.flush(5)["delivered"] == 1
    # The same window from another kernel's store (or after a lost reply): the relay drops it.
    with Store(kernel.store.path.with_name("other.sqlite3")) as other:
        twin = Kernel(other, Settings.from_env(relay_env(server)))
        try:
            twin.delivery.emit(window(0))
            assert twin.sender.flush(5) == {"delivered": 1, "queued": 0, "rejected": 0}
        finally:
            twin.close()
    assert len(server.adapter_requests) == 2 and len(server.accepted_bodies()) == 1


@pytest.mark.parametrize(
    ("reply", "after", "words"),
    [
        (Fault.reply(429, adapter_error("RATE_LIMITED", "slow down"), {"Retry-After": "7"}), 7.0, "[429 RATE_LIMITED] slow down"),
        (Fault.reply(503, adapter_error("MISSING_SYNCED_COURSE_ID", "Course Math grade 8 has no staging id")), None,
         "[503 MISSING_SYNCED_COURSE_ID] Course Math grade 8 has no staging id"),
        (Fault.reply(502, "<html>Bad Gateway</html>"), None, "[502] <html>Bad Gateway</html>"),
        (Fault.reply(401, adapter_error("UNAUTHORIZED", "Unauthorized")), None, "[401 UNAUTHORIZED] Unauthorized"),
        (Fault.reply(302, "", {"Location": "/hub/login?next=x"}), None, "redirected to /hub/login?next=x"),
    ],
)
def test_outages_limits_and_a_refused_token_keep_the_event_queued_with_the_reason(
    store: Store, server: LoopbackServer, reply: Fault, after: float | None, words: str
) -> None:
    _, event_id, body = adapter_body(window(0), "local-alice")
    with RelayTransport(server.adapter_url, HUB_TOKEN, scheme="token") as transport:
        server.script_adapter(reply)
        outcome = transport.send(body, event_id)
        assert outcome.status == "retry" and outcome.after_s == after
        assert outcome.reason is not None and words in outcome.reason and outcome.reason.startswith("relay: ")
        assert transport.send(body, event_id).status == "delivered"  # the next try goes through


def test_a_relay_that_is_down_keeps_everything_queued_and_delivers_it_later(
    kernel: Kernel, server: LoopbackServer
) -> None:
    server.script_adapter(*[Fault.reply(503, adapter_error("INTERNAL_ERROR", "down"))] * 3)
    for i in range(3):
        kernel.delivery.emit(window(i))
    assert kernel.sender.flush(10) == {"delivered": 3, "queued": 0, "rejected": 0}
    assert server.accepted_bodies() == [window(i).as_body() for i in range(3)]  # once each, in order
    assert len(server.adapter_requests) == 6 and kernel.sender.last_error is None


def test_connection_refused_and_timeouts_are_retried(store: Store) -> None:
    _, event_id, body = adapter_body(window(0), "local-alice")
    with LoopbackServer() as gone:
        url = gone.adapter_url
    with RelayTransport(url, HUB_TOKEN, scheme="token", timeout=0.5) as transport:
        outcome = transport.send(body, event_id)
    assert outcome.status == "retry" and "ConnectError" in (outcome.reason or "")
    with LoopbackServer(delay=1.0) as slow:
        slow.adapter_tokens[HUB_TOKEN] = "alice"
        with RelayTransport(slow.adapter_url, HUB_TOKEN, scheme="token", timeout=0.2) as transport:
            outcome = transport.send(body, event_id)
    assert outcome.status == "retry" and "timeout after 0.2 s" in (outcome.reason or "")


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (Fault.reply(400, adapter_error("INVALID_PAYLOAD", "Invalid payload", field="endedAt", why="must be after startedAt")),
         "relay: [400 INVALID_PAYLOAD] Invalid payload (endedAt: must be after startedAt)"),
        (Fault.reply(403, adapter_error("FORBIDDEN", "runId belongs to another user")),
         "relay: [403 FORBIDDEN] runId belongs to another user"),
        (Fault.reply(400, adapter_error("UNKNOWN_COURSE", 'No course matches {"subject":"Math","grade":8}')),
         'relay: [400 UNKNOWN_COURSE] No course matches {"subject":"Math","grade":8}'),
        (Fault.reply(404, "no such route"), "relay: [404] no such route"),
    ],
)
def test_any_other_4xx_rejects_the_event_with_the_relays_code_and_message_shown(
    kernel: Kernel, server: LoopbackServer, reply: Fault, words: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statuses: list[dict] = []
    kernel.sender.on_status = statuses.append  # what the Activity (and the widget's chip) is told
    server.script_adapter(reply)
    kernel.delivery.emit(window(0))
    kernel.delivery.emit(window(1))
    assert kernel.sender.flush(5) == {"delivered": 1, "queued": 0, "rejected": 1}  # the next one still goes
    rejected = kernel.store.events(state="rejected")
    assert [r["reason"] for r in rejected] == [words]
    assert kernel.sender.last_error == words
    deadline = time.monotonic() + 5  # the sender reports right after it marks the rows
    while not (statuses and statuses[-1]["last_error"] == words) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert statuses[-1]["last_error"] == words
    monkeypatch.setenv("TIMEBACK_NB_STORE", str(kernel.store.path))
    assert cli.main(["events", "--state", "rejected"]) == 0
    out = capsys.readouterr().out
    assert words in out and "Week 3: Linear functions" in out and "active 13.5 s, inactive 1.5 s" in out


def test_the_token_never_shows_even_when_the_relay_echoes_it(
    store: Store, server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, event_id, body = adapter_body(window(0), "local-alice")
    echo = f"token {HUB_TOKEN} is not valid here"
    server.script_adapter(Fault.reply(400, adapter_error("INVALID_PAYLOAD", echo)), Fault.reply(401, echo))
    with RelayTransport(server.adapter_url, HUB_TOKEN, scheme="token") as transport:
        outcomes = [transport.send(body, event_id) for _ in range(2)]
        seen = repr(transport) + "".join(str(o) for o in outcomes) + caplog.text
    assert [o.status for o in outcomes] == ["rejected", "retry"]
    assert HUB_TOKEN not in seen and "***" in outcomes[0].reason  # type: ignore[operator]


def test_rows_of_another_transport_are_parked_with_the_reason_not_sent(
    store: Store, server: LoopbackServer, kernel: Kernel
) -> None:
    envelope = events.time_spent_envelope(window(0), target(), send_time="2025-01-15T10:00:00.000Z")
    store.enqueue(events.event_id(envelope), "time", RUN, events.dumps(envelope))  # from caliper mode
    kernel.delivery.emit(window(1))
    assert kernel.sender.flush(5) == {"delivered": 1, "queued": 0, "rejected": 1}
    parked = store.events(state="rejected")[0]
    assert parked["event_id"] == events.event_id(envelope) and "'time' row" in parked["reason"]
    assert [r.route for r in server.adapter_requests] == ["heartbeat"]
    # And the other way: adapter rows are never stored as if they were Caliper events.
    with Store(store.path.with_name("local.sqlite3")) as local:
        kind, event_id, body = adapter_body(window(2), "local-alice")
        local.enqueue(event_id, kind, RUN, body)
        assert Sender(local, LocalTransport(local)).flush(5)["rejected"] == 1
        assert local.local_events() == []


# -- a kernel in relay mode -----------------------------------------------------------------------


@pytest.fixture
def relay_kernel_env(local_env: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """start() as under JupyterHub with a relay: no credentials, no student email."""
    for name in ("TIMEBACK_NB_TRANSPORT", "TIMEBACK_USER_EMAIL"):
        monkeypatch.delenv(name)
    for name, value in relay_env(server).items():
        monkeypatch.setenv(name, value)
    return local_env


def test_a_kernel_in_relay_mode_tracks_and_completes_through_the_relay(
    relay_kernel_env: Path, server: LoopbackServer
) -> None:
    activity = timeback_nb.start("week-3", "Week 3: Linear functions", MATH8, heartbeat_interval=0.2, display=False)
    assert activity.mode == "relay"
    visit_and_end(activity, {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8, "pctComplete": 40})
    assert activity.finished
    counts = timeback_nb.flush(timeout=5)
    assert counts["queued"] == 0 and counts["rejected"] == 0

    heartbeats, submits = server.accepted_bodies("heartbeat"), server.accepted_bodies("submit")
    assert len(heartbeats) >= 2 and {h["runId"] for h in heartbeats} == {activity.run_id}
    assert sum(h["elapsedMs"] for h in heartbeats) == activity.elapsed_ms
    assert submits == [{
        "id": "week-3", "name": "Week 3: Linear functions", "course": MATH8, "runId": activity.run_id,
        "endedAt": submits[0]["endedAt"], "metrics": {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8},
        "pctComplete": 40,
    }]
    assert {r.user for r in server.adapter_requests} == {"alice"} and not server.received
    assert not activity.last_error


def test_a_kernel_sees_the_relays_refusal_in_its_last_error(relay_kernel_env: Path, server: LoopbackServer) -> None:
    server.adapter_tokens.clear()  # the relay does not know this kernel's token
    activity = timeback_nb.start("week-3", "Week 3", MATH8, display=False)
    activity.end({"xpEarned": 1})
    deadline = time.monotonic() + 5
    while not activity.last_error and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "[401 UNAUTHORIZED]" in activity.last_error
    assert HUB_TOKEN not in activity.last_error
    assert Store(relay_kernel_env / "store.sqlite3").counts()["queued"] >= 1  # kept for when the token works


def test_check_shows_relay_mode_the_url_and_the_token_source_never_the_token(
    relay_kernel_env: Path, server: LoopbackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert f"transport     relay: {server.adapter_url}" in out
    assert "JUPYTERHUB_API_TOKEN" in out and "Authorization: token" in out
    assert HUB_TOKEN not in out and "relay identifies the student" in out


def test_check_in_relay_mode_without_a_token_says_which_variable(
    relay_kernel_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    assert cli.main(["check"]) == 1
    assert "TIMEBACK_RELAY_TOKEN: the relay transport needs a token" in capsys.readouterr().err
