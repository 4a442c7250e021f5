"""The Caliper transport and the sender against an endpoint that misbehaves on purpose
(tests/loopback.py): odd Retry-After values, credentials echoed in error bodies, replies that
dribble in one byte at a time, short-lived tokens. Real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import email.utils
import logging
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from timeback_nb.deadline import deadline_client, enforce_deadlines
from timeback_nb.outbox import Backoff, Sender
from timeback_nb.redaction import Redactor
from timeback_nb.store import Store
from timeback_nb.transport import CaliperTransport, Outcome

from .loopback import CLIENT_ID, Fault, LoopbackServer
from .test_outbox import wait_for
from .test_transport import FakeClock, envelope

# A secret whose URL and JSON encodings differ from the plain text.
ODD_SECRET = "s3cr3t/Vq9+Zx2=Lk8 Pw4&never~shown"


def secret_forms(secret: str, tokens: list[str]) -> list[str]:
    """Every form in which the tests look for a leak."""
    basic = base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()
    forms = [secret, basic, quote(secret, safe=""), quote_plus(secret), quote(secret, safe="").lower()]
    for token in tokens:
        forms += [token, quote(token, safe="")]
    return forms


# -- item 1: a Retry-After of 0, negative, garbage or in the past still backs off ----------------


def past_http_date() -> str:
    return email.utils.formatdate(time.time() - 120, usegmt=True)  # a server whose clock lags ours


@pytest.mark.parametrize("retry_after", ["0", "-5", "soon", "", past_http_date()])
def test_an_odd_retry_after_still_backs_off_at_least_the_normal_step(tmp_path: Path, retry_after: str) -> None:
    backoff = Backoff(base=0.2, cap=5.0)
    with LoopbackServer() as server, Store(tmp_path / "tb.sqlite3") as store:
        store.enqueue("e0", "time", "r1", envelope("e0"))
        server.script(*[Fault.rate_limited(retry_after)] * 200)
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, server.client_secret) as transport:
            sender = Sender(store, transport, backoff=backoff).start()
            try:
                wait_for(lambda: len(server.received) >= 2)
                time.sleep(max(0.0, server.received[0].at + 1.5 - time.time()))
            finally:
                sender.stop(5)
        times = [r.at for r in server.received if r.at <= server.received[0].at + 1.5]
    # Before the fix: ~500 requests a second. Steps 0.2, 0.4, 0.8 s, each at least half taken,
    # so at most five requests in the first 1.5 s (the fifth not before 1.5 s).
    assert 2 <= len(times) <= 5
    for n, (a, b) in enumerate(zip(times, times[1:]), start=1):
        assert b - a >= backoff.base * 2 ** (n - 1) / 2 * 0.95


def test_backoff_is_never_zero() -> None:
    b = Backoff(base=0.5, cap=30.0)
    assert [b.delay(n, lambda: 0.0) for n in (1, 2, 3, 8)] == [0.25, 0.5, 1.0, 15.0]
    assert [b.delay(n, lambda: 1.0) for n in (1, 2, 3, 8)] == [0.5, 1.0, 2.0, 30.0]


# -- item 7: no secret in any form ------------------------------------------------------------------


def test_a_redactor_masks_every_form_of_the_secret_and_the_tokens() -> None:
    redact = Redactor()
    redact.add_credentials(CLIENT_ID, ODD_SECRET)
    for i in range(12):
        redact.add_token(f"tok-{i}-abcdef")
    text = " | ".join(secret_forms(ODD_SECRET, ["tok-11-abcdef", "tok-4-abcdef"]))
    text += ' | {"s": ' + __import__("json").dumps(ODD_SECRET) + "}"
    masked = redact(text)
    for form in secret_forms(ODD_SECRET, ["tok-11-abcdef", "tok-4-abcdef"]):
        assert form not in masked
    assert "tok-3-abcdef" in redact("tok-3-abcdef")  # only the last eight tokens are kept
    assert redact("nothing secret here") == "nothing secret here"
    assert "ODD" not in repr(redact) and ODD_SECRET not in repr(redact)


def test_an_endpoint_that_echoes_the_credentials_leaks_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The token endpoint and the event endpoint echo the Authorization header (Basic
    base64(id:secret), the bearer token) and the secret URL-encoded in their error bodies."""
    caplog.set_level(logging.DEBUG)
    statuses: list[dict] = []
    path = tmp_path / "tb.sqlite3"
    with LoopbackServer(client_secret=ODD_SECRET) as server, Store(path) as store:
        for i in range(4):
            store.enqueue(f"e{i}", "time", "r1", envelope(f"e{i}"))
        server.script_token(Fault.echo_auth(400))
        server.script(Fault.echo_auth(503), Fault.echo_auth(500), Fault.none(), Fault.echo_auth(422))
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, ODD_SECRET, timeout=2) as transport:
            sender = Sender(store, transport, backoff=Backoff(base=0.02, cap=0.05), on_status=statuses.append)
            counts = sender.flush(10)
            texts = [repr(transport), repr(vars(transport)), repr(sender), str(sender.last_error)]
            texts += [str(s) for s in statuses] + [repr(r) for r in store.events()]
            sender.stop(5)
        echoed = [r.body for r in server.received]
        tokens = list(server.issued)
    assert counts == {"delivered": 3, "queued": 0, "rejected": 1}
    assert len(statuses) > 3 and any("***" in str(s) for s in statuses)
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    files = b"".join(f.read_bytes() for f in tmp_path.glob("tb.sqlite3*"))
    assert tokens and echoed
    for form in secret_forms(ODD_SECRET, tokens):
        assert form.encode() not in files, form
        for text in texts:
            assert form not in text, (form, text)


# -- item 8: an overall deadline per request --------------------------------------------------------


@pytest.mark.parametrize("where", ["body", "headers", "token"])
def test_a_dribbling_server_does_not_hold_a_send_past_the_timeout(where: str) -> None:
    with LoopbackServer() as server:
        fault = Fault.dribble(0.2, headers_too=where == "headers")
        if where == "token":
            server.script_token(fault)
        else:
            server.script(fault)
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, server.client_secret, timeout=1.0) as t:
            started = time.monotonic()
            outcome = t.send(envelope(), "e1")
            took = time.monotonic() - started
            assert outcome.status == "retry" and "timeout after 1 s" in (outcome.reason or "")
            assert took < 1.0 + 0.5  # dribbled whole, the reply takes 4 s or more
            assert t.send(envelope(), "e1") == Outcome.delivered()  # the next send is fine


def test_a_dribbled_send_gives_its_row_back_within_the_timeout(tmp_path: Path) -> None:
    with LoopbackServer() as server, Store(tmp_path / "tb.sqlite3") as store:
        store.enqueue("e0", "time", "r1", envelope("e0"))
        server.script(Fault.dribble(0.2))
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, server.client_secret, timeout=1.0) as t:
            sender = Sender(store, t, backoff=Backoff(base=30, cap=30)).start()
            try:
                wait_for(lambda: len(server.received) == 1)
                started = time.monotonic()
                wait_for(lambda: store.events()[0]["attempts"] == 1, timeout=10)
                assert time.monotonic() - started < 1.0 + 0.5
            finally:
                sender.stop(5)


def test_the_deadline_also_covers_connections_made_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # httpx mounts a proxy pool for https://
    client = deadline_client(5)
    try:
        pools = [client._transport._pool, *(m._pool for m in client._mounts.values() if m is not None)]
        assert len(pools) == 2
        assert all(type(pool._network_backend).__name__ == "_Backend" for pool in pools)
        assert enforce_deadlines(client) == 0  # already done: nothing wrapped twice
    finally:
        client.close()


# -- item 9: tokens are reused for their lifetime ----------------------------------------------------


@pytest.mark.parametrize("lifetime", [2, 5, 30, 60])
def test_a_short_lived_token_is_reused_until_shortly_before_it_expires(lifetime: int) -> None:
    clock = FakeClock()
    with LoopbackServer(token_lifetime=lifetime) as server:
        with CaliperTransport(server.event_url, server.token_url, CLIENT_ID, server.client_secret, clock=clock) as t:
            used: list[tuple[float, str]] = []
            for i in range(60):  # an event every lifetime/20 s, over three lifetimes
                assert t.send(envelope(f"e{i}"), f"e{i}") == Outcome.delivered()
                used.append((clock.now, server.received[-1].headers["Authorization"]))
                clock.now += lifetime / 20
        fetched_at = {auth: at for at, auth in reversed(used)}  # each token's first use
        last_use = {auth: at for at, auth in used}
    # Refreshed at 90 % of its life: four tokens for three lifetimes, not one per event.
    assert len(server.token_requests) == 4
    for auth, first in fetched_at.items():
        assert last_use[auth] - first < lifetime  # never used after it expired
        assert last_use[auth] - first >= 0.8 * lifetime or auth == used[-1][1]
