"""The relay as a whole, framework-free: one request (route, Authorization header, raw body)
in, one reply (status, JSON or nothing) out.

Order per request, as the SDK's adapter (protocol reference §5.5, §5.6): identity from the
token, parse, validate, resolve the course; then the relay's own checks (plausibility,
run ownership, duplicates) and the durable commit; 204 only once the event is in the outbox.
The commit, delivery and pruning happen in the writer process (`writer.py`, reached through
`link.WriterLink`), or with `in_process=True` on threads of this one (`writer.InProcessWriter`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ResolvedCourse, Settings, find_config, load_config, no_config_error
from ..errors import ConfigError
from ..events import Target
from ..store import Store
from .adapter import AdapterError, CourseResolver, Heartbeat, parse_body, validate_heartbeat, validate_submit
from .identity import Directory, FileTokens, HubTokens, TokenResolver, bearer_token
from .journal import ACCEPTED, CompletionItem, Item, Result, TimeItem
from .lock import StoreLock
from .plausibility import check_age, check_not_future, check_window
from .retention import DEFAULT_RETENTION_DAYS, retention_ms, validate_retention_days
from .link import WriterLink, WriterProcess
from .writer import InProcessWriter, StoreSide, wire_item

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BASE_PATH", "Relay", "RelayOptions", "Reply", "hub_environment"]

DEFAULT_BASE_PATH = "/api/timeback"
RELAY_TRANSPORTS = ("caliper", "local")

Reply = tuple[int, "dict[str, Any] | None"]
LOCK_WAIT_S = 10.0  # a killed relay's writer may take a moment to notice and let go of the store
_UNAUTHORIZED = AdapterError(401, "UNAUTHORIZED", "Unauthorized")


@dataclass
class RelayOptions:
    """`timeback-nb relay`'s options (design §10)."""

    host: str = "127.0.0.1"
    port: int = 8765
    base_path: str = DEFAULT_BASE_PATH
    store: Path | None = None
    tokens: Path | None = None
    users: Path | None = None
    email_template: str | None = None
    batch: int = 100
    max_parallel: int = 2
    retention_days: float | str = DEFAULT_RETENTION_DAYS
    environ: dict[str, str] = field(default_factory=dict)


def hub_environment(environ: dict[str, str]) -> dict[str, str] | None:
    """The hub service variables when this process runs as a JupyterHub service. A user's own
    server has URL and prefix variables too, for itself; only a service has a service name."""
    names = ("JUPYTERHUB_SERVICE_NAME", "JUPYTERHUB_API_URL", "JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_SERVICE_PREFIX")
    if not environ.get("JUPYTERHUB_SERVICE_NAME"):
        return None
    missing = [n for n in names if not environ.get(n)]
    if missing:
        raise ConfigError(f"{missing[0]}: not set, but JUPYTERHUB_SERVICE_NAME is; a hub service needs {', '.join(names)}", field=missing[0])
    return {n: environ[n] for n in (*names, "JUPYTERHUB_API_TOKEN") if n in environ}


class Relay:
    """Everything the routes need; `start()` starts the writer (a process, or with `in_process`
    the journal, sender and pruner on threads here: `writer`, either way); `await close()` on
    the serving loop once it takes no more requests (the writer answers what it was sent), then
    `stop()`."""

    def __init__(
        self, options: RelayOptions, *, wall_ms: Callable[[], int] | None = None, in_process: bool = False,
        lock_wait: float = LOCK_WAIT_S,
    ) -> None:
        environ = options.environ
        self.options = options
        self.settings = Settings.from_env(environ)
        if self.settings.transport not in RELAY_TRANSPORTS:
            raise ConfigError(
                f"TIMEBACK_NB_TRANSPORT: the relay delivers with {' or '.join(RELAY_TRANSPORTS)}, "
                f"not {self.settings.transport!r}",
                field="TIMEBACK_NB_TRANSPORT",
            )
        if options.max_parallel < 1:
            raise ConfigError(f"--max-parallel: expected an integer ≥ 1, got {options.max_parallel}", field="--max-parallel")
        retention_days = validate_retention_days(options.retention_days)
        self.hub = hub_environment(environ)
        config_path = find_config(environ=environ)
        if config_path is None:
            raise no_config_error()
        self.config = load_config(config_path, self.settings.env)
        self.courses = CourseResolver(self.config, self.settings.env)
        self.tokens: TokenResolver
        if self.hub is not None:
            self.tokens = HubTokens(self.hub["JUPYTERHUB_API_URL"], self.hub.get("JUPYTERHUB_API_TOKEN"))
        elif options.tokens is not None:
            self.tokens = FileTokens(options.tokens)
        else:
            raise ConfigError(
                "--tokens: required outside JupyterHub (a JSON file {\"<token>\": {\"name\": \"alice\"}})",
                field="--tokens",
            )
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.retention_days = retention_days
        self.max_age_ms = retention_ms(retention_days)
        store_path = options.store or self.settings.store_path
        # Before the store is touched: a second relay on this file stops here (see .lock).
        self.lock = StoreLock(store_path).acquire(wait=lock_wait)
        self.writer: InProcessWriter | WriterLink
        try:
            self.store = Store(store_path)  # here: the directory's cache of looked-up students
            self.directory = Directory.from_file(self.settings, self.store, options.users, options.email_template)
            if in_process:
                self.writer = InProcessWriter(StoreSide(
                    self.store, self.settings, batch=options.batch, max_parallel=options.max_parallel,
                    retention_days=retention_days, wall_ms=self._wall_ms,
                ))
            else:
                config = {
                    "environ": environ, "store": str(store_path), "batch": options.batch,
                    "max_parallel": options.max_parallel, "retention_days": retention_days,
                    "log_level": logging.getLogger().getEffectiveLevel(),
                }
                self.writer = WriterLink(WriterProcess(config, pass_fds=self.lock.fds()))  # it holds the lock too
        except BaseException:
            if hasattr(self, "store"):
                self.store.close()
            self.lock.release()
            raise
        self._targets: dict[tuple[Any, ...], Target] = {}

    def __repr__(self) -> str:
        return f"Relay({self.tokens!r}, {self.store!r})"

    @property
    def base_path(self) -> str:
        """Where the routes live: the hub service prefix (if any) + the base path."""
        base = "/" + self.options.base_path.strip("/")
        if self.hub is not None:
            return "/" + self.hub["JUPYTERHUB_SERVICE_PREFIX"].strip("/") + base
        return base.rstrip("/") if base != "/" else ""

    @property
    def address(self) -> tuple[str, int]:
        if self.hub is not None:
            from urllib.parse import urlsplit

            url = urlsplit(self.hub["JUPYTERHUB_SERVICE_URL"])
            return url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)
        return self.options.host, self.options.port

    def start(self) -> Relay:
        self.writer.start()
        return self

    async def close(self) -> None:
        """On the loop that served the requests, after the last one: the writer commits and
        answers what it was sent."""
        await self.writer.close()

    def stop(self) -> None:
        self.writer.stop()
        self.store.close()
        self.lock.release()

    # -- the routes ----------------------------------------------------------------------------

    async def heartbeat(self, authorization: str | None, raw: bytes) -> Reply:
        try:
            name = await self._identify(authorization)
            beat = validate_heartbeat(parse_body(raw))
            course = self._course_before_dedup(beat.window.activity.course)
            now_ms = self._wall_ms()
            check_window(beat, now_ms)
            check_age("startedAt", beat.started_ms, now_ms, self.max_age_ms)
            try:
                if isinstance(course, AdapterError):
                    raise course
                target = await self._target(name, course)
            except AdapterError:
                # The SDK's order (§5.5): a window it has seen is a duplicate before the synced
                # course id (step 5) and the student (step 6) are looked at.
                if await self._has_window(name, beat):
                    return 200, {"duplicate": True}
                raise
            result = await self._commit(TimeItem(name, beat, target), raw)
        except AdapterError as exc:
            return exc.status, exc.body()
        return _reply(result)

    async def submit(self, authorization: str | None, raw: bytes) -> Reply:
        try:
            name = await self._identify(authorization)
            submit = validate_submit(parse_body(raw))
            resolved = self.courses.resolve(submit.completion.activity.course)
            now_ms = self._wall_ms()
            check_not_future("endedAt", submit.ended_ms, now_ms)
            check_age("endedAt", submit.ended_ms, now_ms, self.max_age_ms)
            target = await self._target(name, resolved)
            result = await self._commit(CompletionItem(name, submit, target), raw)
        except AdapterError as exc:
            return exc.status, exc.body()
        return _reply(result)

    async def health(self) -> Reply:
        """No token needed, so nothing secret: modes and the writer's counts (see
        `StoreSide.status`); 503 when the writer process is not running."""
        status = await self.writer.status()
        failed = "error" in status
        return (503 if failed else 200), {
            "status": "error" if failed else "ok",
            "mode": self.tokens.mode,
            "transport": self.settings.transport,
            **status,
            "retentionDays": self.retention_days,
        }

    def _course_before_dedup(self, selector: Any) -> ResolvedCourse | AdapterError:
        """The request's course, or the one error about it that the SDK's heartbeat gives only
        after its duplicate check: no synced course id (§5.5 step 5). The others (no such
        course, more than one, no sensor) are validation (step 3) and are raised."""
        try:
            return self.courses.resolve(selector)
        except AdapterError as exc:
            if exc.code == "MISSING_SYNCED_COURSE_ID":
                return exc
            raise

    async def _has_window(self, name: str, beat: Heartbeat) -> bool:
        return await self.writer.has_window(name, beat.window.run_id, beat.started_ms)

    async def _commit(self, item: Item, raw: bytes) -> Result:
        return await self.writer.commit(wire_item(item, raw))

    async def _identify(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        name = await self.tokens.name(token) if token else None
        if name is None:
            raise _UNAUTHORIZED
        return name

    async def _target(self, name: str, resolved: Any) -> Target:
        key = (name, resolved.course_id, resolved.sensor, resolved.subject, resolved.course_name, resolved.app_name)
        target = self._targets.get(key)
        if target is None:
            student = await self.directory.student(name)
            target = Target.from_course(resolved, self.settings, student.email, student.user_id)
            if len(self._targets) > 100_000:  # a bound, not a policy: rebuilt on demand
                self._targets.clear()
            self._targets[key] = target
        return target


def _reply(result: Any) -> Reply:
    if isinstance(result, AdapterError):
        return result.status, result.body()
    if result == ACCEPTED:
        return 204, None
    return 200, {"duplicate": True}
