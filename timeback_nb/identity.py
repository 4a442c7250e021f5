"""Who the student is: an email and a OneRoster user sourcedId (the actor of every event).

Precedence: the `user=` argument > `TIMEBACK_USER_EMAIL` / `TIMEBACK_USER_ID`. With an email
but no id, the caliper transport looks the sourcedId up once in OneRoster (with the same
OAuth2 token as the events, protocol reference §2.1) and remembers it in the store. The local
transport needs no account: with no user at all it reports as `<login>@localhost` /
`local-<login>`, which only means something inside this machine's store.
"""

from __future__ import annotations

import getpass
import logging
import re
from typing import TYPE_CHECKING, Any, Mapping

import httpx

from .errors import ConfigError, DeliveryError
from .events import ROSTERING_PATH
from .transport import CaliperTransport

if TYPE_CHECKING:
    from .config import Settings
    from .store import Store

log = logging.getLogger(__name__)

_FIELD = "TIMEBACK_USER_ID"


def resolve_user(
    user: Mapping[str, Any] | None,
    settings: Settings,
    store: Store,
    *,
    client: httpx.Client | None = None,
    transport: CaliperTransport | None = None,
) -> tuple[str, str]:
    """`(email, user_id)` for the events' actor.

    `user` is None or `{"email": ..., "id": ... | None}` as `validation.validate_user` returns it.
    `transport` (or a fresh `CaliperTransport` over `client`) makes the OneRoster lookup when
    one is needed, so its token logic is the only one.
    """
    if user is not None:
        email, user_id = user["email"], user.get("id")
        if user_id is None and settings.user_id and email == settings.user_email:
            user_id = settings.user_id  # the environment's id belongs to this email
    else:
        email, user_id = settings.user_email, settings.user_id
    if email and user_id:
        return email, user_id
    if settings.transport == "outbox":
        # The process that will deliver these events holds the credentials, not this one.
        raise ConfigError(
            "TIMEBACK_USER_ID: TIMEBACK_NB_TRANSPORT=outbox needs the student's email and OneRoster "
            "sourcedId from the environment (TIMEBACK_USER_EMAIL, TIMEBACK_USER_ID) or user=",
            field="TIMEBACK_USER_ID",
        )
    if settings.transport != "caliper":
        login = _login()
        if email is None:
            return f"{login}@localhost", user_id or f"local-{login}"
        return email, f"local-{email}"
    if email is None:
        raise ConfigError(
            "TIMEBACK_USER_EMAIL: the caliper transport needs the student's email "
            "(pass user={'email': ..., 'id': ...} to start() or set TIMEBACK_USER_EMAIL)",
            field="TIMEBACK_USER_EMAIL",
        )
    cached = store.cached_user_id(email, settings.env)
    if cached is not None:
        return email, cached
    user_id = _look_up(email, settings, client=client, transport=transport)
    store.remember_user_id(email, settings.env, user_id)
    return email, user_id


def _login() -> str:
    try:
        login = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        login = "student"
    return re.sub(r"[^A-Za-z0-9._-]", "-", login) or "student"


def _look_up(
    email: str, settings: Settings, *, client: httpx.Client | None, transport: CaliperTransport | None
) -> str:
    """The OneRoster sourcedId of the one user with exactly this email."""
    if "'" in email:  # OneRoster filters have no escape for a quote
        raise ConfigError(f"{_FIELD}: cannot look up {email!r} in OneRoster; set {_FIELD}", field=_FIELD)
    if not settings.has_credentials:
        raise ConfigError(
            f"{_FIELD}: no OneRoster id for {email!r} and no credentials to look it up; "
            f"set {_FIELD} or TIMEBACK_CLIENT_ID/TIMEBACK_CLIENT_SECRET",
            field=_FIELD,
        )
    own = transport is None
    lookup = transport or CaliperTransport(
        settings.caliper_url, settings.auth_url, settings.client_id or "", settings.client_secret or "", client=client
    )
    url = settings.oneroster_url.rstrip("/") + ROSTERING_PATH + "/users"
    try:
        response = lookup.get(url, params={"filter": f"email='{email}'", "limit": 2})
    except DeliveryError as exc:
        raise DeliveryError(f"OneRoster lookup of {email!r} failed ({exc}); set {_FIELD} to skip it") from None
    finally:
        if own:
            lookup.close()
    if response.status_code != 200:
        raise DeliveryError(
            f"OneRoster lookup of {email!r} failed: HTTP {response.status_code}; set {_FIELD} to skip it"
        )
    try:
        users = response.json().get("users")
        ids = [u["sourcedId"] for u in users if isinstance(u, dict) and isinstance(u.get("sourcedId"), str)]
    except (ValueError, AttributeError, TypeError, KeyError):
        raise DeliveryError(f"OneRoster lookup of {email!r}: the reply has no users list; set {_FIELD}") from None
    if not ids:
        raise ConfigError(
            f"{_FIELD}: no OneRoster user has the email {email!r} in {settings.env}; "
            f"set {_FIELD} to the student's sourcedId",
            field=_FIELD,
        )
    if len(ids) > 1:
        raise ConfigError(
            f"{_FIELD}: several OneRoster users have the email {email!r} in {settings.env}; "
            f"set {_FIELD} to the student's sourcedId",
            field=_FIELD,
        )
    log.debug("OneRoster id for %s found and remembered", email)
    return ids[0]
