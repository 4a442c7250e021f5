"""Transports move an event's bytes and say what happened; they never decide when to retry.

`LocalTransport` delivers into the store's `events` table (no account, no network).
`CaliperTransport` POSTs to a Caliper event endpoint with an OAuth2 client-credentials token
(protocol reference §1.3-§1.6). Unlike the SDK it never sleeps or loops on failures itself:
it returns `Outcome.retry(...)` for 429, 5xx, timeouts and connection errors, and the outbox
sender keeps the event queued and tries again later (design §6).

The client secret and access tokens live only in `_Secret` holders: they never appear in a
repr, a log line, an exception message or an `Outcome` reason. Text from the endpoint (error
bodies, exception messages) passes through a `Redactor` that masks every encoding of them.
Every send has one overall deadline, `timeout`, from the token request to the last byte of
the reply (`deadline`), so a server that dribbles its reply cannot hold a send (and its lease).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, TypeVar

import httpx

from . import events
from .config import check_endpoint
from .deadline import deadline, deadline_client, time_left
from .errors import ConfigError, DeliveryError
from .redaction import Redactor
from .validation import validate_timeout

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

# A token is refetched shortly before it expires: a tenth of its lifetime before, at most 60 s
# (§1.3), so a 30 s token is reused for 27 s rather than fetched for every event.
TOKEN_EARLY_REFRESH_SHARE = 0.1
TOKEN_EARLY_REFRESH_S = 60.0
DEFAULT_TOKEN_LIFETIME_S = 3600.0
MAX_TOKEN_LIFETIME_S = 86_400.0
MAX_REASON_CHARS = 300
MAX_RETRY_AFTER_S = 3600.0  # a broken Retry-After must not park the outbox for days
MIN_TIMEOUT_S = 0.1  # below this no request over a real network can finish
MAX_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Outcome:
    """What one send attempt came to: delivered, retry later, or rejected for good."""

    status: Literal["delivered", "retry", "rejected"]
    reason: str | None = None
    after_s: float | None = None  # retry: the server's Retry-After in seconds, if it gave one

    @classmethod
    def delivered(cls) -> Outcome:
        return cls("delivered")

    @classmethod
    def retry(cls, after_s: float | None, reason: str) -> Outcome:
        return cls("retry", reason, after_s)

    @classmethod
    def rejected(cls, reason: str) -> Outcome:
        return cls("rejected", reason)


class Transport(Protocol):
    def send(self, body: str, event_id: str) -> Outcome: ...

    def close(self) -> None: ...


CALIPER_KINDS = ("time", "completion")  # outbox rows holding Caliper envelopes


class LocalTransport:
    """Delivers into the `events` table of the same store (the embedded default)."""

    kinds = CALIPER_KINDS  # the rows it can send (the sender parks the others)

    def __init__(self, store: Store) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"LocalTransport({self.store!r})"

    def send(self, body: str, event_id: str) -> Outcome:
        try:
            self.store.store_local_event(event_id, body)
        except Exception as exc:  # e.g. the file is locked for longer than the busy timeout
            return Outcome.retry(None, f"local store: {type(exc).__name__}: {exc}")
        return Outcome.delivered()

    def close(self) -> None:
        """Nothing to release: the store belongs to the caller."""

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Secret:
    """Holds a secret value; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def request_id(event_id: str) -> str:
    """X-Request-ID: 8 characters, the same for every attempt at one event (and traceable to
    it: the first 8 hex digits of the event's UUID when it has one)."""
    match = re.search(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-", event_id)
    if match:
        return match.group(0)[:8].lower()
    return hashlib.sha256(event_id.encode("utf-8")).hexdigest()[:8]


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header (integer seconds or an HTTP date) as seconds from now, or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float()
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


def _lifetime(expires_in: object) -> float:
    """A token's `expires_in` in seconds: the default when absent or not a positive number,
    at most a day (a huge or infinite value must not pin one token forever)."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
        return DEFAULT_TOKEN_LIFETIME_S
    try:
        seconds = float(expires_in)
    except OverflowError:  # an integer like 10**400
        return MAX_TOKEN_LIFETIME_S
    if seconds != seconds or seconds <= 0:  # NaN, zero or negative
        return DEFAULT_TOKEN_LIFETIME_S
    return min(seconds, MAX_TOKEN_LIFETIME_S)


def error_message(response: httpx.Response) -> str:
    """`[<status>] <message>` per protocol reference §1.6."""
    text = response.text
    message = None
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = next(
            (body[k] for k in ("message", "error", "imsx_description") if isinstance(body.get(k), str)), None
        )
    return f"[{response.status_code}] {message or text.strip() or f'HTTP {response.status_code}'}"


class _TokenUnavailable(Exception):
    """No access token could be had; the event stays queued."""


_T = TypeVar("_T", bound="_HTTPTransport")


class _HTTPTransport:
    """What the HTTP transports share: a client of their own (or one passed in, left open),
    `close()` safe to call twice, use as a context manager, and `_scrub` for remote text."""

    redact: Redactor
    _client: httpx.Client
    _owns_client: bool
    _closed: bool

    def _use_client(self, client: httpx.Client | None, timeout: float) -> None:
        self._owns_client = client is None
        self._client = client if client is not None else deadline_client(timeout)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._forget()
            if self._owns_client:
                self._client.close()

    def _forget(self) -> None:
        """Drop what must not outlive the transport (a token)."""

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        """Text that came from outside (a server may echo credentials), masked, then cut short
        (in that order: a cut could leave the start of a secret unrecognised)."""
        return self.redact(text)[:MAX_REASON_CHARS]


class CaliperTransport(_HTTPTransport):
    """POSTs events to `event_url` with a bearer token from `token_url` (client credentials).

    `client` (an `httpx.Client`) may be injected; it is then the caller's to close, and keeps
    httpx's per-operation timeouts unless it was passed to `enforce_deadlines`. The token is
    cached until shortly before it expires; threads share one in-flight token request.
    """

    kinds = CALIPER_KINDS

    def __init__(
        self,
        event_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event_url = check_endpoint(event_url, "TIMEBACK_CALIPER_URL")
        self.token_url = check_endpoint(token_url, "TIMEBACK_AUTH_URL")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError("TIMEBACK_CLIENT_ID: required for the caliper transport", field="TIMEBACK_CLIENT_ID")
        if not isinstance(client_secret, str) or not client_secret:
            raise ConfigError(
                "TIMEBACK_CLIENT_SECRET: required for the caliper transport", field="TIMEBACK_CLIENT_SECRET"
            )
        self.timeout = validate_timeout(timeout, "timeout", low=MIN_TIMEOUT_S, high=MAX_TIMEOUT_S)
        self._basic = _Secret("Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii"))
        self.redact = Redactor()
        self.redact.add_credentials(client_id, client_secret)
        self._clock = clock
        self._token: _Secret | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()
        self._use_client(client, self.timeout)

    def __repr__(self) -> str:
        return f"CaliperTransport(event_url={self.event_url!r}, token_url={self.token_url!r})"

    def _forget(self) -> None:
        self._token = None

    # -- token ---------------------------------------------------------------------------------


    def _bearer(self) -> tuple[_Secret, str]:
        """The cached token, or a fresh one (one request at a time; the others wait for it,
        within the request's deadline)."""
        left = time_left()
        if not self._token_lock.acquire(timeout=self.timeout if left is None else max(left, 0.0)):
            raise _TokenUnavailable(f"token endpoint: another request for a token took over {self.timeout:g} s")
        try:
            token = self._token
            if token is not None and self._clock() < self._token_expires:
                return token, f"Bearer {token.reveal()}"
            self._token = None
            asked = self._clock()  # the lifetime runs from (at the latest) the moment we asked
            token, lifetime = self._fetch_token()
            self._token = token
            margin = min(lifetime * TOKEN_EARLY_REFRESH_SHARE, TOKEN_EARLY_REFRESH_S)
            self._token_expires = asked + lifetime - margin
            return token, f"Bearer {token.reveal()}"
        finally:
            self._token_lock.release()

    def _fetch_token(self) -> tuple[_Secret, float]:
        try:
            response = self._client.post(
                self.token_url,
                data={"grant_type": "client_credentials"},
                headers={"Authorization": self._basic.reveal(), "Accept": "application/json"},
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            raise _TokenUnavailable(f"token endpoint: timeout after {self.timeout:g} s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise _TokenUnavailable(f"token endpoint: {type(exc).__name__}: {self._scrub(str(exc))}") from None
        if response.status_code != 200:
            raise _TokenUnavailable(f"token endpoint: {self._scrub(error_message(response))}")
        try:
            payload = response.json()
            token = payload["access_token"]
            if not isinstance(token, str) or not token:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise _TokenUnavailable("token endpoint: the reply has no access_token") from None
        self.redact.add_token(token)
        lifetime = _lifetime(payload.get("expires_in"))
        log.debug("fetched an access token from %s (lifetime %.0f s)", self.token_url, lifetime)
        return _Secret(token), lifetime

    def _drop_token(self, token: _Secret) -> None:
        with self._token_lock:
            if self._token is token:  # another thread may already have fetched a new one
                self._token = None

    def _authorized(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request with the bearer token; on 401 the token is dropped and the request is
        made once more with a fresh one. Raises `_TokenUnavailable` or `httpx.HTTPError`."""
        headers = dict(kwargs.pop("headers", {}))
        for attempt in (1, 2):
            token, header = self._bearer()
            response = self._client.request(
                method, url, headers={**headers, "Authorization": header}, timeout=self.timeout, **kwargs
            )
            if response.status_code != 401 or attempt == 2:
                return response
            log.debug("%s %s: 401, fetching a new token and trying once more", method, url)
            self._drop_token(token)
        raise AssertionError("unreachable")

    def get(self, url: str, *, params: dict[str, Any] | None = None) -> httpx.Response:
        """An authorized GET on another service behind the same token (e.g. OneRoster).
        Raises DeliveryError when no token can be had or the request fails."""
        check_endpoint(url, "TIMEBACK_ONEROSTER_URL")
        try:
            with deadline(self.timeout):
                return self._authorized("GET", url, params=params, headers={"Accept": "application/json"})
        except _TokenUnavailable as exc:
            raise DeliveryError(str(exc)) from None
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"GET {url}: timeout after {self.timeout:g} s ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"GET {url}: {type(exc).__name__}: {self._scrub(str(exc))}") from None

    # -- sending -------------------------------------------------------------------------------

    def batch_key(self, body: str) -> str | None:
        """Rows with the same key may share one envelope (`send_batch`)."""
        return events.batch_key(body)

    def send_batch(self, items: list[tuple[str, str]]) -> Outcome:
        """POST the events of several envelopes (`(event_id, body)`, one `batch_key`) as one
        envelope; the outcome is the whole batch's (the sender splits a rejected batch)."""
        try:
            body = events.join_envelopes([body for _, body in items])
        except ValueError as exc:  # the sender groups by batch_key, so this is a bug
            return Outcome.rejected(str(exc))
        return self.send(body, items[0][0])

    def send(self, body: str, event_id: str) -> Outcome:
        if self._closed:
            return Outcome.retry(None, "transport closed")
        content = body.encode("utf-8") if isinstance(body, str) else body
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Request-ID": request_id(event_id),
        }
        try:
            with deadline(self.timeout):
                response = self._authorized("POST", self.event_url, content=content, headers=headers)
        except _TokenUnavailable as exc:
            return Outcome.retry(None, str(exc))
        except httpx.TimeoutException as exc:
            return Outcome.retry(None, f"timeout after {self.timeout:g} s ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return Outcome.retry(None, f"{type(exc).__name__}: {self._scrub(str(exc)) or 'connection failed'}")
        status = response.status_code
        if status < 300:
            return Outcome.delivered()
        reason = self._scrub(error_message(response))
        if status == 429 or status >= 500 or status in (401, 408):
            # 401 here means a fresh token was refused too: a credentials problem, not the event's.
            return Outcome.retry(retry_after_seconds(response.headers.get("Retry-After")), reason)
        if status < 400:
            return Outcome.rejected(f"{reason} (redirects are not followed; set TIMEBACK_CALIPER_URL to the final URL)")
        return Outcome.rejected(reason)
