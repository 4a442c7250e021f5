"""The kernel's side of Timeback's adapter protocol (protocol reference §5): `relay` mode.

Instead of Caliper envelopes, the outbox holds the SDK's heartbeat and submit bodies (§5.5,
§5.6), built from the same records, and `RelayTransport` POSTs them to
`<TIMEBACK_RELAY_URL>/activity/heartbeat` or `/activity/submit`. The relay (or any Timeback
app server's adapter that takes a bearer token) knows who the student is from the request's
token, holds the client secret and builds the Caliper events; the kernel needs neither.

Outbox ids are the ids of the Caliper events the relay will build from these bodies (the same
UUIDv5 over runId + window start, or runId + endedAt), so a replay is the same event everywhere.

Replies (§5.7): 2xx (204, 200 `{"duplicate": true}`, 200 `{"preview": true}`) is delivered;
429, 5xx, 408, timeouts and connection errors are retried by the sender; so are 401 and
redirects, which mean the kernel's token or URL is wrong, not the event (fix it and the queued
events go out); every other 4xx rejects the event with the relay's code and message.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import httpx

from . import events
from .config import check_endpoint
from .deadline import deadline
from .records import Completion, TimeWindow
from .redaction import Redactor
from .transport import MAX_TIMEOUT_S, MIN_TIMEOUT_S, Outcome, _HTTPTransport, _Secret, request_id, retry_after_seconds
from .validation import validate_timeout

log = logging.getLogger(__name__)

__all__ = ["HEARTBEAT", "SUBMIT", "RelayTransport", "adapter_body", "route_of"]

HEARTBEAT = "heartbeat"  # outbox kinds of adapter rows = the route they go to
SUBMIT = "submit"
KINDS = (HEARTBEAT, SUBMIT)


def adapter_body(record: TimeWindow | Completion, user_key: str) -> tuple[str, str, str]:
    """`(kind, event id, body)` of the outbox row for `record` in relay mode.

    A completion with no run (a `record()` outside any run) gets a runId derived from what it
    describes, as the adapter requires one: rebuilding it gives the same body and id."""
    if isinstance(record, TimeWindow):
        body = record.as_body()
        return HEARTBEAT, events.time_spent_id(record.run_id, record.started_at), _dumps(body)
    body = record.as_body()
    if body["runId"] is None:
        course = json.dumps(body["course"], sort_keys=True)
        body["runId"] = str(
            uuid.uuid5(events.EVENT_NAMESPACE, f"record:{user_key}:{body['id']}:{course}:{body['endedAt']}")
        )
    return SUBMIT, events.completion_id(body["runId"], body["endedAt"]), _dumps(body)


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def route_of(body: str) -> str | None:
    """`heartbeat` or `submit` for an adapter body; None for anything else (e.g. a Caliper
    envelope committed while another transport was configured)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or "runId" not in parsed or "data" in parsed:
        return None
    if "startedAt" in parsed and "elapsedMs" in parsed:
        return HEARTBEAT
    if "metrics" in parsed:
        return SUBMIT
    return None


def relay_error(response: httpx.Response) -> str:
    """`[<status> <CODE>] <message> (<field>: <why>)` from the adapter's error envelope (§5.3),
    or the status and text of any other reply."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        text = response.text.strip()
        return f"[{response.status_code}] {text or f'HTTP {response.status_code}'}"
    code = error.get("code")
    reason = f"[{response.status_code}{f' {code}' if isinstance(code, str) and code else ''}]"
    message = error.get("message")
    if isinstance(message, str) and message:
        reason += f" {message}"
    details = error.get("details")
    if isinstance(details, dict) and isinstance(details.get("field"), str):
        why = details.get("message")
        reason += f" ({details['field']}{f': {why}' if isinstance(why, str) and why else ''})"
    return reason


class RelayTransport(_HTTPTransport):
    """POSTs adapter bodies to a relay at `base_url` with the kernel's own token.

    `scheme` is `token` (a JupyterHub API token, as the hub itself takes it) or `Bearer`.
    `client` (an `httpx.Client`) may be injected; it is then the caller's to close. Each
    request has an overall deadline of `timeout` seconds, as in caliper mode.
    """

    kinds = KINDS  # the outbox rows this transport can send (the sender parks the others)

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        scheme: str = "Bearer",
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        plain_http_hosts: tuple[str, ...] = (),
    ) -> None:
        self.base_url = check_endpoint(base_url, "TIMEBACK_RELAY_URL", plain_http_hosts=plain_http_hosts).rstrip("/")
        if scheme not in ("token", "Bearer"):
            raise ValueError(f"scheme: expected 'token' or 'Bearer', got {scheme!r}")
        self.scheme = scheme
        self.timeout = validate_timeout(timeout, "timeout", low=MIN_TIMEOUT_S, high=MAX_TIMEOUT_S)
        self._auth = _Secret(f"{scheme} {token}")
        self.redact = Redactor()  # a relay may echo the token it was sent
        self.redact.add_secret(token)
        self._use_client(client, self.timeout)

    def __repr__(self) -> str:
        return f"RelayTransport(base_url={self.base_url!r}, scheme={self.scheme!r})"

    def send(self, body: str, event_id: str) -> Outcome:
        if self._closed:
            return Outcome.retry(None, "transport closed")
        route = route_of(body)
        if route is None:
            return Outcome.rejected(
                "not an adapter heartbeat or submit body (committed while another transport was "
                "configured?); the relay cannot take it"
            )
        url = f"{self.base_url}/activity/{route}"
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": self._auth.reveal(),
            "X-Request-ID": request_id(event_id),
        }
        try:
            with deadline(self.timeout):
                response = self._client.post(url, content=body.encode("utf-8"), headers=headers, timeout=self.timeout)
        except httpx.TimeoutException as exc:
            return Outcome.retry(None, f"relay: timeout after {self.timeout:g} s ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return Outcome.retry(None, f"relay: {type(exc).__name__}: {self._scrub(str(exc)) or 'connection failed'}")
        status = response.status_code
        if 200 <= status < 300:
            if status == 200:
                log.debug("relay %s %s: %s", route, event_id, self._scrub(response.text))
            return Outcome.delivered()
        reason = "relay: " + self._scrub(relay_error(response))
        if status in (401, 408, 429) or status >= 500:
            # 401: this kernel's token is not accepted (expired server, wrong relay): the
            # events wait, visibly, until it is fixed, rather than being rejected one by one.
            return Outcome.retry(retry_after_seconds(response.headers.get("Retry-After")), reason)
        if status < 400:
            where = self._scrub(response.headers.get("Location", ""))
            return Outcome.retry(
                None, f"{reason}: redirected{f' to {where}' if where else ''}; set TIMEBACK_RELAY_URL to the "
                "relay's adapter base (redirects are not followed: often a login page, i.e. no valid token)"
            )
        return Outcome.rejected(reason)
