"""Who is asking: a request's token → a hub user name → the student's Timeback identity.

The identity always comes from the request's credentials, never from the body. Under
JupyterHub the token is the kernel's own `JUPYTERHUB_API_TOKEN`, and the hub says whose it is
(`GET $JUPYTERHUB_API_URL/user` with that token, through JupyterHub's own `HubAuth`, which
caches answers): a user's default server token can do that with no extra scope. Standalone,
a tokens file maps tokens to names.

A name becomes an email and a OneRoster sourcedId by the users file, else the email template,
else the name itself taken as the email; a missing sourcedId is looked up in OneRoster by
email, as the kernel does (`timeback_nb.identity`), and remembered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from ..config import Settings
from ..errors import ConfigError, DeliveryError, ValidationError
from ..identity import resolve_user
from ..store import Store
from ..validation import validate_user
from .adapter import AdapterError

log = logging.getLogger(__name__)

__all__ = ["Directory", "FileTokens", "HubTokens", "TokenResolver", "bearer_token", "load_json_file"]

_AUTHORIZATION = re.compile(r"(?:token|bearer)\s+(\S+)\s*", re.IGNORECASE)
HUB_CACHE_S = 300  # how long the hub's answer about a token is trusted


def bearer_token(header: str | None) -> str | None:
    """The token of `Authorization: token <t>` or `Authorization: Bearer <t>`."""
    match = _AUTHORIZATION.fullmatch(header or "")
    return match.group(1) if match else None


def load_json_file(path: Path, option: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {str(path)!r}: {exc.strerror or exc}", field=option) from None
    except ValueError as exc:
        raise ConfigError(f"{option}: {str(path)!r} is not valid JSON: {exc}", field=option) from None


class TokenResolver(Protocol):
    mode: str

    async def name(self, token: str) -> str | None:
        """The user name the token belongs to, or None for an unknown token."""


class FileTokens:
    """Standalone mode: `{"<token>": {"name": "alice"}, ...}` read once at start."""

    mode = "standalone"

    def __init__(self, path: Path) -> None:
        raw = load_json_file(path, "--tokens")
        if not isinstance(raw, dict):
            raise ConfigError(f'--tokens: {str(path)!r} must hold an object {{"<token>": {{"name": "alice"}}}}', field="--tokens")
        self._names: dict[str, str] = {}
        for index, (token, entry) in enumerate(raw.items()):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name.strip() or not token:
                # The token itself is a secret: name the entry by its position.
                raise ConfigError(f'--tokens: entry {index + 1} in {str(path)!r} needs {{"name": "<user>"}}', field="--tokens")
            self._names[token] = name.strip()

    def __repr__(self) -> str:
        return f"FileTokens({len(self._names)} tokens)"

    async def name(self, token: str) -> str | None:
        return self._names.get(token)


class HubTokens:
    """JupyterHub mode: the hub says whose token it is (`HubAuth.user_for_token`, cached).

    Only user tokens count (a service's token identifies no student). The hub being down is a
    502 the kernel retries, not a 401 it would give up on.
    """

    mode = "jupyterhub"

    def __init__(self, api_url: str, api_token: str | None, *, cache_s: int = HUB_CACHE_S) -> None:
        from jupyterhub.services.auth import HubAuth  # the relay extra

        self.api_url = api_url
        self._auth = HubAuth(api_url=api_url, api_token=api_token or "", cache_max_age=cache_s)

    def __repr__(self) -> str:
        return f"HubTokens({self.api_url!r})"

    async def name(self, token: str) -> str | None:
        from tornado.web import HTTPError

        try:
            model = await self._auth.user_for_token(token, sync=False)
        except HTTPError as exc:
            raise AdapterError(502, "INTERNAL_ERROR", f"The hub could not identify the token: {exc.log_message}") from None
        if not isinstance(model, dict) or model.get("kind", "user") != "user" or not model.get("name"):
            return None
        return str(model["name"])


@dataclass(frozen=True)
class Student:
    email: str
    user_id: str


class Directory:
    """Hub user name → the student's email and OneRoster sourcedId (remembered)."""

    def __init__(
        self, settings: Settings, store: Store, *, users: Mapping[str, Any] | None = None,
        email_template: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.email_template = email_template
        self._users: dict[str, dict[str, str | None]] = {}
        for name, entry in (users or {}).items():
            try:
                user = validate_user(entry if isinstance(entry, str) else dict(entry))
            except (ValidationError, TypeError, ValueError) as exc:
                raise ConfigError(f"--users: entry {name!r}: {exc}", field="--users") from None
            assert user is not None
            self._users[name] = user
        if email_template is not None and "{name}" not in email_template:
            raise ConfigError(
                f"--email-template: {email_template!r} has no {{name}}; e.g. '{{name}}@school.edu'",
                field="--email-template",
            )

    @classmethod
    def from_file(cls, settings: Settings, store: Store, path: Path | None, email_template: str | None) -> Directory:
        users = None
        if path is not None:
            users = load_json_file(path, "--users")
            if not isinstance(users, dict):
                raise ConfigError(f'--users: {str(path)!r} must hold an object {{"alice": {{"email": ...}}}}', field="--users")
        return cls(settings, store, users=users, email_template=email_template)

    def email_of(self, name: str) -> tuple[str, str | None]:
        """(email, sourcedId or None): the users file, else the template, else the name."""
        entry = self._users.get(name)
        if entry is not None:
            return str(entry["email"]), entry.get("id")
        email = self.email_template.format(name=name) if self.email_template else name
        try:
            validate_user(email)
        except ValidationError:
            raise AdapterError(
                404, "USER_RESOLUTION_FAILED",
                f"No email for hub user {name!r}: add it to --users or set --email-template",
            ) from None
        return email, None

    async def student(self, name: str) -> Student:
        """The student `name` is; a OneRoster lookup runs off the event loop (and its answer
        is remembered in the store, as the kernel's is)."""
        email, user_id = self.email_of(name)
        if user_id is None:
            user_id = await asyncio.get_running_loop().run_in_executor(None, self._look_up, email)
        return Student(email, user_id)

    def _look_up(self, email: str) -> str:
        try:
            return resolve_user({"email": email, "id": None}, self.settings, self.store)[1]
        except DeliveryError as exc:  # the lookup itself failed: worth a retry, not a refusal
            raise AdapterError(502, "INTERNAL_ERROR", str(exc)) from None
        except ConfigError as exc:
            status = 409 if "several" in str(exc) else 404
            raise AdapterError(status, "USER_RESOLUTION_FAILED", f"{exc} (or give it in the relay's --users)") from None
