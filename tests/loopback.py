"""A real HTTP server on 127.0.0.1 for delivery tests: OAuth2 token endpoint, Caliper event
endpoint and OneRoster users endpoint, with faults a test can script; and a stand-in for a
relay / Timeback app server's adapter (`adapter_url`, protocol reference §5).

It behaves like a receiver that drops replays: every request is kept in `received` (so a
test sees resends), but each event id is stored once (`stored_ids`, in arrival order). An
envelope may carry several events (`Envelope.data` is an array); like a validating endpoint,
it refuses a whole envelope with 400 when any event in it is one the test `refuse`d.

    with LoopbackServer() as server:
        server.script(Fault.status(503), Fault.drop_after_store())
        transport = CaliperTransport(server.event_url, server.token_url, CLIENT_ID, CLIENT_SECRET)

Hostile replies for the hardening tests: `Fault.rate_limited("0")` (any Retry-After text),
`Fault.echo_auth()` (an error body that repeats the request's credentials in every encoding a
careless server might), `Fault.dribble()` (a reply trickling out one byte at a time), and
short-lived tokens (`LoopbackServer(token_lifetime=2)`; `token_requests` counts fetches).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

CLIENT_ID = "nb-client-7f3a"
CLIENT_SECRET = "s3cr3t-Vq9Zx2Lk8Pw4-never-shown"
USERS_PATH = "/ims/oneroster/rostering/v1p2/users"
ADAPTER_PREFIX = "/api/timeback"
# What the stand-in requires of a body, in the adapter's validation order (§5.4-§5.6).
ADAPTER_FIELDS = {
    "heartbeat": ("id", "name", "course", "runId", "startedAt", "endedAt", "elapsedMs", "pausedMs"),
    "submit": ("id", "name", "course", "runId", "endedAt", "metrics"),
}


def _adapter_error(code: str, message: str, *, field: str | None = None, why: str | None = None) -> dict[str, Any]:
    """The adapter's error envelope (§5.3)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["details"] = {"field": field, "message": why}
    return {"error": error}


def adapter_error(code: str, message: str, *, field: str | None = None, why: str | None = None) -> str:
    return json.dumps(_adapter_error(code, message, field=field, why=why))


@dataclass(frozen=True)
class Fault:
    """What the event endpoint does with one request instead of storing it and replying 200."""

    kind: str  # "pass" | "status" | "drop_after_store" | "slow" | "revoke_token" | "echo_auth" | "dribble"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    seconds: float = 0.0

    @classmethod
    def none(cls) -> Fault:
        """Handle this request normally (to aim a later fault at a later request)."""
        return cls("pass")

    @classmethod
    def reply(cls, status: int, body: Any = None, headers: dict[str, str] | None = None) -> Fault:
        text = body if isinstance(body, str) else json.dumps(body) if body is not None else ""
        return cls("status", status=status, headers=headers or {}, body=text)

    @classmethod
    def drop_after_store(cls) -> Fault:
        """Store the event, then close the connection without a reply (the reply is lost)."""
        return cls("drop_after_store")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Store the event, then answer only after `seconds` (longer than the client waits)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def rate_limited(cls, retry_after: str, status: int = 429) -> Fault:
        """`status` with this exact `Retry-After` text ("0", "-5", "soon", an HTTP date...)."""
        return cls.reply(status, {"message": "slow down"}, {"Retry-After": retry_after})

    @classmethod
    def echo_auth(cls, status: int = 500) -> Fault:
        """Reply `status` with an error body that repeats the request's Authorization header,
        its decoded Basic credentials, and the client secret URL-encoded (as a server that
        logs the form it got would)."""
        return cls("echo_auth", status=status)

    @classmethod
    def dribble(cls, every: float = 0.5, *, status: int = 200, headers_too: bool = False) -> Fault:
        """Store the event, then send the reply one byte every `every` s (the status line and
        headers too with `headers_too`): each read gets a byte in time, the whole never ends."""
        return cls("dribble", status=status, seconds=every, headers={"headers_too": "1"} if headers_too else {})

    @classmethod
    def revoke_token(cls) -> Fault:
        """Forget every issued token first, so this request gets a 401."""
        return cls("revoke_token")


@dataclass
class Received:
    event_id: str | None  # the envelope's first event
    event_ids: list[str]  # all of them, in order
    request_id: str | None
    body: bytes
    headers: dict[str, str]
    at: float
    peer: tuple[str, int]  # the client's address: one per TCP connection


@dataclass
class AdapterRequest:
    route: str  # "heartbeat" | "submit"
    body: bytes
    scheme: str  # of the Authorization header: "token", "Bearer", or what else came
    user: str | None  # whom the token belongs to (None: unknown token)
    request_id: str | None
    at: float
    parsed: dict[str, Any] | None = None


class LoopbackServer:
    def __init__(
        self,
        *,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        token_lifetime: int | None = 3600,
        users: list[dict[str, str]] | None = None,
        delay: float = 0.0,
        token_delay: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.users = list(users or [])
        self.delay = delay  # every event request takes this long (for concurrency tests)
        self.token_delay = token_delay
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.stored: dict[str, bytes] = {}
        self.stored_ids: list[str] = []
        self.token_requests: list[dict[str, Any]] = []
        self.user_requests: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self.issued: list[str] = []
        self.concurrent_duplicates: list[str] = []
        self.refused: set[str] = set()  # envelopes with one of these event ids get a 400
        # The adapter stand-in: token -> user; every request, and the accepted ones once each.
        self.adapter_tokens: dict[str, str] = {}
        self.adapter_requests: list[AdapterRequest] = []
        self.adapter_accepted: list[AdapterRequest] = []
        self.preview_submits = False  # submit answers 200 {"preview": true} (an app's hook skipped it)
        self._adapter_faults: deque[Fault] = deque()
        self._heartbeat_keys: set[str] = set()
        self._in_flight: Counter[str] = Counter()
        self._faults: deque[Fault] = deque()
        self._token_faults: deque[Fault] = deque()
        self._outage_until = 0.0
        self._outage_status = 503
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self._thread: threading.Thread | None = None

    # -- lifecycle and addresses ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def event_url(self) -> str:
        return self.base_url + "/caliper/event"

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth2/token"

    @property
    def oneroster_url(self) -> str:
        return self.base_url

    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """The next event requests get these faults, one each, in order."""
        with self.lock:
            self._faults.extend(faults)

    def script_token(self, *faults: Fault) -> None:
        with self.lock:
            self._token_faults.extend(faults)

    def outage(self, seconds: float, status: int = 503) -> None:
        """Answer every event request with `status` for the next `seconds`."""
        with self.lock:
            self._outage_until = time.monotonic() + seconds
            self._outage_status = status

    def refuse(self, *event_ids: str) -> None:
        """Answer 400 to every envelope that carries one of these events."""
        with self.lock:
            self.refused.update(event_ids)

    def received_ids(self) -> list[str]:
        """Every event id of every request, in arrival order (a resend shows twice)."""
        with self.lock:
            return [event_id for r in self.received for event_id in r.event_ids]

    # -- request handling (on the server's threads) --------------------------------------------

    def _token(self, handler: _Handler, body: bytes) -> None:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        auth = handler.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        with self.lock:
            self.token_requests.append(
                {"auth_ok": auth == expected, "form": form, "content_type": handler.headers.get("Content-Type")}
            )
            fault = self._token_faults.popleft() if self._token_faults else None
        if self.token_delay:
            self._stopping.wait(self.token_delay)
        if fault is not None and fault.kind == "echo_auth":
            return handler.reply(fault.status, self._echo(auth))
        if fault is not None and fault.kind == "status":
            return handler.reply(fault.status, fault.body, fault.headers)
        if auth != expected:
            return handler.reply(401, json.dumps({"error": "invalid_client"}))
        if form != {"grant_type": ["client_credentials"]}:
            return handler.reply(400, json.dumps({"error": "invalid_request"}))
        token = "tok-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
            self.issued.append(token)
        payload: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
        if self.token_lifetime is not None:
            payload["expires_in"] = self.token_lifetime
        if fault is not None and fault.kind == "dribble":
            return handler.dribble(self._stopping, fault, json.dumps(payload))
        handler.reply(200, json.dumps(payload))

    def _echo(self, auth: str) -> str:
        """What a careless server puts in an error body: the credentials it was sent, as sent,
        decoded, and URL-encoded the ways a form logger shows them."""
        decoded = ""
        if auth.startswith("Basic "):
            try:
                decoded = base64.b64decode(auth[len("Basic ") :]).decode("utf-8", "replace")
            except ValueError:
                decoded = "?"
        secret = self.client_secret
        form = f"client_secret={quote_plus(secret)}&raw={quote(secret, safe='')}&lower={quote(secret, safe='').lower()}"
        return json.dumps({"message": f"bad request: Authorization: {auth}; credentials {decoded}; form {form}"})

    def _authorized(self, handler: _Handler) -> bool:
        auth = handler.headers.get("Authorization", "")
        with self.lock:
            return auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.tokens

    def _event(self, handler: _Handler, body: bytes) -> None:
        try:
            event_ids = [event["id"] for event in json.loads(body)["data"]]
            if not event_ids or not all(isinstance(e, str) for e in event_ids):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            event_ids = []
        with self.lock:
            self.received.append(
                Received(
                    event_ids[0] if event_ids else None,
                    event_ids,
                    handler.headers.get("X-Request-ID"),
                    body,
                    dict(handler.headers),
                    time.time(),
                    handler.client_address[:2],
                )
            )
            for event_id in event_ids:
                if self._in_flight[event_id] > 0:
                    self.concurrent_duplicates.append(event_id)
                self._in_flight[event_id] += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is None and time.monotonic() < self._outage_until:
                fault = Fault.reply(self._outage_status, {"message": "down for maintenance"})
            if fault is not None and fault.kind == "revoke_token":
                self.tokens.clear()
            if fault is not None and fault.kind in ("pass", "revoke_token"):
                fault = None
            refused = [e for e in event_ids if e in self.refused]
        try:
            if self.delay:
                self._stopping.wait(self.delay)
            if fault is not None and fault.kind == "status":
                return handler.reply(fault.status, fault.body, fault.headers)
            if fault is not None and fault.kind == "echo_auth":
                auth = handler.headers.get("Authorization", "")
                token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
                echo = json.loads(self._echo(auth))["message"] + f"; token={quote(token, safe='')}"
                return handler.reply(fault.status, json.dumps({"message": echo}))
            if not self._authorized(handler):
                return handler.reply(401, json.dumps({"message": "invalid token"}))
            if not event_ids:
                return handler.reply(400, json.dumps({"message": "body is not a Caliper envelope"}))
            if refused:
                return handler.reply(400, json.dumps({"message": f"invalid event {refused[0]}"}))
            with self.lock:
                new = [e for e in event_ids if e not in self.stored]
                for event_id in new:
                    self.stored[event_id] = body
                    self.stored_ids.append(event_id)
            if fault is not None and fault.kind == "drop_after_store":
                handler.close_connection = True
                return None
            if fault is not None and fault.kind == "slow":
                self._stopping.wait(fault.seconds)
            if fault is not None and fault.kind == "dribble":
                return handler.dribble(self._stopping, fault, json.dumps({"jobId": secrets.token_hex(4)}))
            handler.reply(200, json.dumps({"duplicate": True} if not new else {"jobId": secrets.token_hex(4)}))
        finally:
            with self.lock:
                for event_id in event_ids:
                    self._in_flight[event_id] -= 1

    def _users(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        with self.lock:
            self.user_requests.append({"query": query, "auth": handler.headers.get("Authorization", "")})
        if not self._authorized(handler):
            return handler.reply(401, json.dumps({"message": "invalid token"}))
        wanted = query.get("filter", [""])[0]
        limit = int(query.get("limit", ["100"])[0])
        matches = [u for u in self.users if wanted == f"email='{u['email']}'"][:limit]
        handler.reply(200, json.dumps({"users": matches, "totalCount": len(matches)}))


    # -- the adapter stand-in (a relay / Timeback app server, protocol reference §5) -------------

    @property
    def adapter_url(self) -> str:
        """The adapter base (`TIMEBACK_RELAY_URL`): `<it>/activity/heartbeat` and `/submit`."""
        return self.base_url + ADAPTER_PREFIX

    def script_adapter(self, *faults: Fault) -> None:
        """The next adapter requests get these faults, one each, in order."""
        with self.lock:
            self._adapter_faults.extend(faults)

    def accepted_bodies(self, route: str | None = None) -> list[dict[str, Any]]:
        """The adapter bodies accepted, once each, in arrival order (a replayed heartbeat is a
        duplicate, not accepted again)."""
        with self.lock:
            return [a.parsed or {} for a in self.adapter_accepted if route is None or a.route == route]

    def _adapter(self, handler: _Handler, route: str, body: bytes) -> None:
        auth = handler.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        with self.lock:
            user = self.adapter_tokens.get(token) if scheme in ("token", "Bearer") else None
            fault = self._adapter_faults.popleft() if self._adapter_faults else None
            if fault is None and time.monotonic() < self._outage_until:
                fault = Fault.reply(self._outage_status, _adapter_error("INTERNAL_ERROR", "down for maintenance"))
            request = AdapterRequest(route, body, scheme, user, handler.headers.get("X-Request-ID"), time.time())
            self.adapter_requests.append(request)
        if self.delay:
            self._stopping.wait(self.delay)
        if fault is not None and fault.kind == "status":
            return handler.reply(fault.status, fault.body, fault.headers)
        if user is None:  # identity first, before the body is read (§5.2)
            return handler.reply(401, json.dumps(_adapter_error("UNAUTHORIZED", "Unauthorized")))
        try:
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                raise ValueError
        except ValueError:
            return handler.reply(400, json.dumps(_adapter_error("INVALID_PAYLOAD", "Malformed JSON body")))
        required = ADAPTER_FIELDS[route]
        missing = next((f for f in required if parsed.get(f) in (None, "", {})), None)
        if missing is not None:
            return handler.reply(
                400, json.dumps(_adapter_error("INVALID_PAYLOAD", "Invalid payload", field=missing, why="Required"))
            )
        with self.lock:
            key = f"{parsed['runId']}:{parsed['startedAt']}" if route == "heartbeat" else None
            duplicate = key is not None and key in self._heartbeat_keys
            if not duplicate:
                if key is not None:
                    self._heartbeat_keys.add(key)
                self.adapter_accepted.append(AdapterRequest(route, body, scheme, user, request.request_id, request.at, parsed))
        if fault is not None and fault.kind == "drop_after_store":
            handler.close_connection = True
            return None
        if duplicate:
            return handler.reply(200, json.dumps({"duplicate": True}))
        if route == "submit" and self.preview_submits:
            return handler.reply(200, json.dumps({"preview": True}))
        handler.reply(204)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_state: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def reply(self, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def dribble(self, stopping: threading.Event, fault: Fault, body: str) -> None:
        """Send a complete reply one byte every `fault.seconds` (until the client hangs up)."""
        data = body.encode("utf-8")
        head = (
            f"HTTP/1.1 {fault.status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode("ascii")
        if not fault.headers.get("headers_too"):
            self.wfile.write(head)
            head = b""
        self.close_connection = True
        try:
            for i in range(len(head + data)):
                self.wfile.write((head + data)[i : i + 1])
                self.wfile.flush()
                if stopping.wait(fault.seconds):
                    return
        except OSError:  # the client gave up: what the test wants
            return

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self._body()
        path = urlsplit(self.path).path
        if path == "/oauth2/token":
            self.server_state._token(self, body)
        elif path == "/caliper/event":
            self.server_state._event(self, body)
        elif path in (f"{ADAPTER_PREFIX}/activity/heartbeat", f"{ADAPTER_PREFIX}/activity/submit"):
            self.server_state._adapter(self, path.rsplit("/", 1)[1], body)
        else:
            self.reply(404, json.dumps({"message": f"no route {path}"}))

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path == USERS_PATH:
            self.server_state._users(self, parse_qs(parts.query))
        else:
            self.reply(404, json.dumps({"message": f"no route {parts.path}"}))


def _handler_for(state: LoopbackServer) -> type[_Handler]:
    return type("BoundHandler", (_Handler,), {"server_state": state})
