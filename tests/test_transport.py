"""Transports against a real HTTP server on 127.0.0.1 (tests/loopback.py)."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import socket
import threading
from pathlib import Path

import httpx
import pytest

from timeback_nb.errors import ConfigError, DeliveryError, TimebackError
from timeback_nb.store import Store
from timeback_nb.transport import (
    CaliperTransport,
    LocalTransport,
    Outcome,
    error_message,
    request_id,
    retry_after_seconds,
)

from .loopback import CLIENT_ID, CLIENT_SECRET, Fault, LoopbackServer

EVENT_ID = "urn:uuid:3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def envelope(event_id: str = EVENT_ID, extra: str = "") -> str:
    # Deliberately odd spacing and a non-ASCII name: the bytes must arrive unchanged.
    return (
        '{"sensor":"https://nb.example.org",  "sendTime":"2025-01-15T10:00:15.000Z",'
        '"dataVersion":"http://purl.imsglobal.org/ctx/caliper/v1p2",'
        f'"data":[{{"id":"{event_id}","type":"TimeSpentEvent","name":"Zoë ✓{extra}"}}]}}'
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def transport(server: LoopbackServer):
    with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET, timeout=2) as t:
        yield t


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- pure helpers -------------------------------------------------------------------------------


def test_outcome_constructors() -> None:
    assert Outcome.delivered() == Outcome("delivered")
    assert Outcome.retry(2.5, "[429] slow down") == Outcome("retry", "[429] slow down", 2.5)
    assert Outcome.rejected("[400] bad") == Outcome("rejected", "[400] bad", None)


def test_request_id_is_eight_characters_stable_and_traceable() -> None:
    assert request_id(EVENT_ID) == "3f2504e0"
    other = request_id("time:run-1:2025-01-15T10:00:00.000Z")
    assert len(other) == 8 and other == request_id("time:run-1:2025-01-15T10:00:00.000Z")
    assert other != request_id("time:run-1:2025-01-15T10:00:15.000Z")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("99999999") == 3600.0  # capped
    assert retry_after_seconds("9" * 400) == 3600.0
    for odd in ("²", "٣", "+5", "5.5", "-5", "1e3", ""):  # never an exception, and no wait of ours
        assert retry_after_seconds(odd) is None
    now = 1_700_000_000.0
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"message": "sensor missing", "error": "x"}, "[400] sensor missing"),
        (422, {"error": "bad actor"}, "[422] bad actor"),
        (409, {"imsx_description": "conflict here"}, "[409] conflict here"),
        (404, "no such route", "[404] no such route"),
        (403, "", "[403] HTTP 403"),
        (400, {"message": 12}, '[400] {"message": 12}'),
    ],
)
def test_error_message_follows_the_sdk(status: int, body: object, expected: str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    assert error_message(httpx.Response(status, text=text)) == expected


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.bad_input
def test_a_plain_http_remote_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="^TIMEBACK_CALIPER_URL: must use https"):
        CaliperTransport("http://caliper.example.org/caliper/event", "https://a.example/t", CLIENT_ID, CLIENT_SECRET)
    with pytest.raises(ConfigError, match="^TIMEBACK_AUTH_URL: must use https"):
        CaliperTransport("https://caliper.example.org/caliper/event", "http://a.example/t", CLIENT_ID, CLIENT_SECRET)


@pytest.mark.bad_input
def test_credentials_in_an_endpoint_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="^TIMEBACK_AUTH_URL: credentials do not belong") as info:
        CaliperTransport("https://c.example/e", "https://me:hunter2@a.example/t", CLIENT_ID, CLIENT_SECRET)
    assert "hunter2" not in str(info.value)


@pytest.mark.bad_input
def test_credentials_are_required() -> None:
    with pytest.raises(ConfigError, match="^TIMEBACK_CLIENT_ID: required"):
        CaliperTransport("https://c.example/e", "https://a.example/t", "", CLIENT_SECRET)
    with pytest.raises(ConfigError, match="^TIMEBACK_CLIENT_SECRET: required"):
        CaliperTransport("https://c.example/e", "https://a.example/t", CLIENT_ID, "")


@pytest.mark.parametrize("timeout", [0, -1, 0.001, float("nan"), float("inf"), pytest.param(10**400, id="10**400"), True, "10"])
@pytest.mark.bad_input
def test_a_timeout_that_is_no_usable_duration_is_refused_by_name(timeout: object) -> None:
    with pytest.raises(TimebackError, match=r"^timeout: expected a number of seconds from 0.1 to 600") as info:
        CaliperTransport("https://c.example/e", "https://a.example/t", CLIENT_ID, CLIENT_SECRET, timeout=timeout)  # type: ignore[arg-type]
    assert info.value.field == "timeout"


def test_tls_verification_is_on_and_close_is_idempotent() -> None:
    t = CaliperTransport("https://c.example/e", "https://a.example/t", CLIENT_ID, CLIENT_SECRET)
    assert t._client._transport._pool._ssl_context.verify_mode.name == "CERT_REQUIRED"
    t.close()
    t.close()
    assert t.send("{}", EVENT_ID).status == "retry"


def test_an_injected_client_stays_the_callers(server: LoopbackServer) -> None:
    with httpx.Client() as client:
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET, client=client) as t:
            assert t.send(envelope(), EVENT_ID) == Outcome.delivered()
        assert not client.is_closed
        assert client.get(server.base_url + "/nothing").status_code == 404


# -- the happy path -----------------------------------------------------------------------------


def test_send_posts_the_exact_bytes_with_the_sdk_headers(server: LoopbackServer, transport: CaliperTransport) -> None:
    body = envelope()
    assert transport.send(body, EVENT_ID) == Outcome.delivered()
    [got] = server.received
    assert got.body == body.encode("utf-8")
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"
    assert headers["authorization"] == f"Bearer {server.issued[0]}"
    assert headers["x-request-id"] == "3f2504e0"
    [token_request] = server.token_requests
    assert token_request["auth_ok"] is True
    assert token_request["form"] == {"grant_type": ["client_credentials"]}  # no scope
    assert token_request["content_type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(("lifetime", "reused_for"), [(120, 108.0), (3600, 3540.0), (None, 3540.0), pytest.param(10**400, 86_340.0, id="10**400")])
def test_the_token_is_reused_until_shortly_before_it_expires(lifetime: int | None, reused_for: float) -> None:
    """Refetched a tenth of its lifetime early, at most 60 s: `expires_in` 120 s is reused for
    108 s; no `expires_in`: an hour is assumed; an absurd one: a day."""
    clock = FakeClock()
    with LoopbackServer(token_lifetime=lifetime) as server:
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET, clock=clock) as t:
            t.send(envelope("e1"), "e1")
            clock.now += reused_for - 0.1
            t.send(envelope("e2"), "e2")
            assert len(server.token_requests) == 1
            clock.now += 0.1
            t.send(envelope("e3"), "e3")
            assert len(server.token_requests) == 2
            auths = [r.headers["Authorization"] for r in server.received]
            assert auths == [f"Bearer {server.issued[0]}"] * 2 + [f"Bearer {server.issued[1]}"]


def test_threads_share_one_token_request() -> None:
    with LoopbackServer(token_delay=0.2) as server:
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET) as t:
            outcomes: list[Outcome] = []
            threads = [
                threading.Thread(target=lambda i=i: outcomes.append(t.send(envelope(f"e{i}"), f"e{i}")))
                for i in range(6)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert outcomes == [Outcome.delivered()] * 6
        assert len(server.token_requests) == 1
        assert sorted(server.stored_ids) == sorted(f"e{i}" for i in range(6))


# -- failures -------------------------------------------------------------------------------------


def test_a_401_drops_the_token_and_tries_once_more_with_a_fresh_one(
    server: LoopbackServer, transport: CaliperTransport
) -> None:
    transport.send(envelope("e0"), "e0")
    server.script(Fault.revoke_token())
    assert transport.send(envelope(), EVENT_ID) == Outcome.delivered()
    assert len(server.token_requests) == 2
    mine = [r for r in server.received if r.event_id == EVENT_ID]
    assert [r.headers["Authorization"] for r in mine] == [f"Bearer {t}" for t in server.issued]
    assert {r.request_id for r in mine} == {"3f2504e0"}  # one logical request
    assert server.stored_ids == ["e0", EVENT_ID]


def test_a_second_401_is_a_retry_not_a_reject(server: LoopbackServer, transport: CaliperTransport) -> None:
    server.script(Fault.reply(401, {"message": "nope"}), Fault.reply(401, {"message": "still nope"}))
    outcome = transport.send(envelope(), EVENT_ID)
    assert outcome == Outcome.retry(None, "[401] still nope")
    assert len(server.token_requests) == 2


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.reply(429, {"message": "slow down"}, {"Retry-After": "7"}), Outcome.retry(7.0, "[429] slow down")),
        (Fault.reply(429, ""), Outcome.retry(None, "[429] HTTP 429")),
        (Fault.reply(503, {"message": "maintenance"}, {"Retry-After": "2"}), Outcome.retry(2.0, "[503] maintenance")),
        (Fault.reply(500, "boom"), Outcome.retry(None, "[500] boom")),
        (Fault.reply(502, ""), Outcome.retry(None, "[502] HTTP 502")),
        (Fault.reply(408, ""), Outcome.retry(None, "[408] HTTP 408")),
        (Fault.reply(400, {"message": "sendTime missing"}), Outcome.rejected("[400] sendTime missing")),
        (Fault.reply(422, {"error": "actor.email required"}), Outcome.rejected("[422] actor.email required")),
        (Fault.reply(403, ""), Outcome.rejected("[403] HTTP 403")),
        (Fault.reply(404, "gone"), Outcome.rejected("[404] gone")),
        (Fault.reply(204, ""), Outcome.delivered()),
    ],
)
def test_statuses_map_to_outcomes(server: LoopbackServer, transport: CaliperTransport, fault: Fault, expected: Outcome) -> None:
    server.script(fault)
    assert transport.send(envelope(), EVENT_ID) == expected


def test_a_redirect_is_not_followed_and_says_what_to_fix(server: LoopbackServer, transport: CaliperTransport) -> None:
    server.script(Fault.reply(307, "", {"Location": "https://elsewhere.example/caliper/event"}))
    outcome = transport.send(envelope(), EVENT_ID)
    assert outcome.status == "rejected" and "TIMEBACK_CALIPER_URL" in (outcome.reason or "")
    assert len(server.received) == 1


def test_a_timeout_is_a_retry(server: LoopbackServer) -> None:
    with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET, timeout=0.3) as t:
        server.script(Fault.slow(2))
        outcome = t.send(envelope(), EVENT_ID)
    assert outcome.status == "retry" and outcome.reason is not None and outcome.reason.startswith("timeout after 0.3 s")


def test_a_lost_reply_is_a_retry(server: LoopbackServer, transport: CaliperTransport) -> None:
    server.script(Fault.drop_after_store())
    outcome = transport.send(envelope(), EVENT_ID)
    assert outcome.status == "retry" and "RemoteProtocolError" in (outcome.reason or "")
    assert server.stored_ids == [EVENT_ID]
    assert transport.send(envelope(), EVENT_ID) == Outcome.delivered()  # the receiver drops the replay
    assert server.stored_ids == [EVENT_ID]


def test_a_refused_connection_is_a_retry() -> None:
    port = free_port()
    with CaliperTransport(
        f"http://127.0.0.1:{port}/caliper/event", f"http://127.0.0.1:{port}/oauth2/token", CLIENT_ID, CLIENT_SECRET
    ) as t:
        outcome = t.send(envelope(), EVENT_ID)
    assert outcome.status == "retry" and "ConnectError" in (outcome.reason or "")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.reply(500, {"error": "idp down"}), "token endpoint: [500] idp down"),
        (Fault.reply(401, {"error": "invalid_client"}), "token endpoint: [401] invalid_client"),
        (Fault.reply(200, {"token_type": "Bearer"}), "token endpoint: the reply has no access_token"),
        (Fault.reply(200, "not json"), "token endpoint: the reply has no access_token"),
    ],
)
def test_no_token_means_retry_later(server: LoopbackServer, transport: CaliperTransport, fault: Fault, reason: str) -> None:
    server.script_token(fault)
    assert transport.send(envelope(), EVENT_ID) == Outcome.retry(None, reason)
    assert server.received == []
    assert transport.send(envelope(), EVENT_ID) == Outcome.delivered()


def test_wrong_credentials_keep_events_queued(server: LoopbackServer) -> None:
    with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, "wrong-secret") as t:
        assert t.send(envelope(), EVENT_ID) == Outcome.retry(None, "token endpoint: [401] invalid_client")


def test_get_uses_the_same_token_and_raises_delivery_errors(server: LoopbackServer, transport: CaliperTransport) -> None:
    transport.send(envelope(), EVENT_ID)
    response = transport.get(server.oneroster_url + "/ims/oneroster/rostering/v1p2/users", params={"limit": 2})
    assert response.status_code == 200
    assert len(server.token_requests) == 1
    assert server.user_requests[0]["auth"] == f"Bearer {server.issued[0]}"
    server.script_token(Fault.reply(500, "idp down"))
    server.tokens.clear()
    with pytest.raises(DeliveryError, match=r"token endpoint: \[500\] idp down"):
        transport.get(server.oneroster_url + "/ims/oneroster/rostering/v1p2/users")


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_never_reach_reprs_logs_reasons_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with LoopbackServer() as server:
        # A careless token endpoint that echoes the secret in its error body.
        server.script_token(Fault.reply(400, {"error": f"bad secret {CLIENT_SECRET}"}))
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET, timeout=0.3) as t:
            texts += [repr(t), str(t), repr(vars(t))]
            server.script(
                Fault.revoke_token(),
                Fault.reply(401, ""),
                Fault.reply(401, ""),
                Fault.slow(1),
                Fault.reply(422, {"message": "bad"}),
            )
            for i in range(6):
                texts.append(repr(t.send(envelope(f"e{i}"), f"e{i}")))
            server.tokens.clear()
            server.script_token(Fault.reply(500, {"error": f"cannot issue {CLIENT_SECRET}"}))
            with pytest.raises(DeliveryError) as info:
                t.get(server.oneroster_url + "/ims/oneroster/rostering/v1p2/users")
            texts += [str(info.value), repr(info.value), repr(t), repr(vars(t))]
        tokens = list(server.issued)
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert len(tokens) >= 2 and any("***" in text for text in texts)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    for text in texts:
        for secret in [CLIENT_SECRET, basic, *tokens]:
            assert secret not in text


# -- local --------------------------------------------------------------------------------------------


def test_local_transport_keeps_bytes_and_ignores_replays(tmp_path: Path) -> None:
    store = Store(tmp_path / "tb.sqlite3")
    with LocalTransport(store) as t:
        body = envelope()
        assert t.send(body, EVENT_ID) == Outcome.delivered()
        assert t.send(body, EVENT_ID) == Outcome.delivered()
        assert [(e["event_id"], e["body"]) for e in store.local_events()] == [(EVENT_ID, body)]
        store.close()
        outcome = t.send(body, "e2")
    assert outcome.status == "retry" and "closed" in (outcome.reason or "")


def test_sends_reuse_one_connection(server: LoopbackServer, transport: CaliperTransport) -> None:
    for i in range(20):
        assert transport.send(envelope(f"e{i}"), f"e{i}") == Outcome.delivered()
    assert len({r.peer for r in server.received}) == 1
    assert len(server.token_requests) == 1
