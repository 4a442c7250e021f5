"""Where events go and for which course: environment settings and `timeback.config.json`.

`Settings` reads the operator's environment (design §5). `find_config` / `load_config` read
Timeback's own config file exactly as Timeback reads it (protocol §6), and
`TimebackConfig.resolve` turns an activity's course selector into everything an event needs
(sensor, synced course id, names). Pure apart from reading the one file; no network.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from .errors import ConfigError, ValidationError
from .events import activity_url
from .validation import (
    CALIPER_SUBJECTS,
    REQUEST_SUBJECTS,
    validate_course_selector,
    validate_user,
)

__all__ = [
    "API_ENVS",
    "CONFIG_FILENAME",
    "CourseConfig",
    "ResolvedCourse",
    "Settings",
    "TimebackConfig",
    "api_env",
    "check_endpoint",
    "describe",
    "find_config",
    "load_config",
    "no_config_error",
]

API_ENVS: tuple[str, ...] = ("staging", "production")
CONFIG_FILENAME = "timeback.config.json"
DEFAULT_APP_NAME = "Timeback App"

# Timeback's default platform, BEYOND_AI (protocol §1.1).
_ENDPOINTS: dict[str, dict[str, str]] = {
    "staging": {
        "caliper": "https://caliper.staging.alpha-1edtech.ai/caliper/event",
        "auth": "https://staging-beyond-timeback-api-2-idp.auth.us-east-1.amazoncognito.com/oauth2/token",
        "oneroster": "https://api.staging.alpha-1edtech.ai",
    },
    "production": {
        "caliper": "https://caliper.alpha-1edtech.ai/caliper/event",
        "auth": "https://prod-beyond-timeback-api-2-idp.auth.us-east-1.amazoncognito.com/oauth2/token",
        "oneroster": "https://api.alpha-1edtech.ai",
    },
}


def api_env(value: Any, field: str = "TIMEBACK_ENV") -> str:
    """``staging`` | ``production``; the SDK's ``local`` means staging for ids and endpoints."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text == "local":
        return "staging"
    if text not in API_ENVS:
        raise ConfigError(
            f"{field}: {value!r} is not an environment; allowed: staging, production, local",
            field=field,
        )
    return text


# ---------------------------------------------------------------------------------------------
# Environment settings


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: Any, field: str, *, plain_http_hosts: tuple[str, ...] = ()) -> str:
    """``url`` (trimmed) if it is an absolute https URL, plain http only for a loopback host
    (127.0.0.0/8, ::1, localhost) or one of ``plain_http_hosts``; else a ConfigError naming
    ``field``.

    The one rule for every outbound endpoint (Caliper, token, OneRoster, relay). Credentials
    in the URL are refused and never echoed.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{field}: an endpoint URL is required", field=field)
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        has_userinfo = parts.username is not None or parts.password is not None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts, host, has_userinfo = None, None, False
    if parts is None or host is None or parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"{field}: expected an absolute http(s) URL such as https://example.org/path, "
            f"got {url.strip()!r}",
            field=field,
        )
    shown = f"{parts.scheme}://{host}{parts.path}"
    if has_userinfo:
        raise ConfigError(f"{field}: credentials do not belong in the URL ({shown})", field=field)
    allowed = {h.lower() for h in plain_http_hosts}
    if parts.scheme != "https" and not _is_loopback(host) and host.lower() not in allowed:
        also = f", and {', '.join(sorted(allowed))}" if allowed else ""
        raise ConfigError(
            f"{field}: must use https (plain http is allowed only for loopback hosts "
            f"127.0.0.0/8, ::1, localhost{also}), got {shown}",
            field=field,
        )
    return url.strip()


# local: delivered into the store's events table; caliper: sent to the endpoint; outbox: kept
# queued for a trusted process with the credentials to deliver; relay: the SDK's adapter bodies
# POSTed to a relay that holds the credentials (JupyterHub, see docs/relay.md).
TRANSPORTS = ("local", "caliper", "outbox", "relay")
_SECRET_FIELDS = ("client_secret", "relay_token", "hub_token")


def unknown_transport(value: Any) -> ConfigError:
    return ConfigError(
        f"TIMEBACK_NB_TRANSPORT: {value!r} is not a transport; allowed: {', '.join(TRANSPORTS)}",
        field="TIMEBACK_NB_TRANSPORT",
    )


def _default_store_path() -> Path:
    return platformdirs.user_data_path("timeback-nb") / "timeback.sqlite3"


@dataclass(frozen=True, repr=False)
class Settings:
    """The operator's environment (design §5). Build it with `Settings.from_env()`.

    The client secret never appears in a repr, a log line or an error message.
    """

    env: str  # API env: "staging" or "production" ("local" is read as staging)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    auth_url: str
    caliper_url: str  # the full event URL (base + /caliper/event)
    oneroster_url: str  # OneRoster / main API base, no trailing slash
    user_email: str | None
    user_id: str | None
    transport: str  # one of TRANSPORTS
    store_path: Path
    config_path: Path | None
    relay_url: str | None = None  # the relay's adapter base (TIMEBACK_RELAY_URL)
    relay_token: str | None = field(default=None, repr=False)  # TIMEBACK_RELAY_TOKEN
    hub_token: str | None = field(default=None, repr=False)  # JUPYTERHUB_API_TOKEN: under JupyterHub
    hub_api_url: str | None = None  # JUPYTERHUB_API_URL

    @property
    def has_credentials(self) -> bool:
        return bool(self.client_id and self.client_secret)

    @property
    def relay_token_source(self) -> str | None:
        """The variable whose token authenticates this kernel to the relay: the hub's own
        token under JupyterHub, else TIMEBACK_RELAY_TOKEN; None when neither is set."""
        if self.hub_token:
            return "JUPYTERHUB_API_TOKEN"
        return "TIMEBACK_RELAY_TOKEN" if self.relay_token else None

    @property
    def relay_plain_http_hosts(self) -> tuple[str, ...]:
        """Under JupyterHub, the hub's host: the hub token already goes there over plain http
        (e.g. Zero to JupyterHub's http://hub:8081), so a relay next to the hub may be reached so too."""
        return _plain_http_hosts(self.hub_api_url) if self.hub_token else ()

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if f.name in _SECRET_FIELDS:
                shown.append(f"{f.name}=<{'set' if getattr(self, f.name) else 'unset'}>")
            else:
                shown.append(f"{f.name}={getattr(self, f.name)!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the environment; an empty variable counts as unset."""
        source = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = source.get(name)
            value = value.strip() if value is not None else None
            return value or None

        env = api_env(get("TIMEBACK_ENV") or "staging")
        defaults = _ENDPOINTS[env]
        client_id = get("TIMEBACK_CLIENT_ID")
        client_secret = get("TIMEBACK_CLIENT_SECRET")

        transport = get("TIMEBACK_NB_TRANSPORT")
        missing = [
            name
            for name, value in (
                ("TIMEBACK_CLIENT_ID", client_id),
                ("TIMEBACK_CLIENT_SECRET", client_secret),
            )
            if not value
        ]
        if transport is None:
            if len(missing) == 1:
                # Half a credential is a mistake; silently staying local would lose the events.
                raise ConfigError(
                    f"{missing[0]}: not set while the other credential is; set it, or set "
                    "TIMEBACK_NB_TRANSPORT=local to keep events on this machine",
                    field=missing[0],
                )
            transport = "caliper" if not missing else "relay" if get("TIMEBACK_RELAY_URL") else "local"
        transport = transport.lower()
        if transport not in TRANSPORTS:
            raise unknown_transport(transport)
        if transport == "caliper" and missing:
            raise ConfigError(
                f"TIMEBACK_NB_TRANSPORT=caliper needs credentials: {' and '.join(missing)} "
                "not set",
                field=missing[0],
            )
        hub_token, relay_token = get("JUPYTERHUB_API_TOKEN"), get("TIMEBACK_RELAY_TOKEN")
        hub_api_url = get("JUPYTERHUB_API_URL")
        relay_url = get("TIMEBACK_RELAY_URL")
        if transport == "relay":
            relay_url = _relay_url(relay_url, hub_api_url if hub_token else None)
            if not (hub_token or relay_token):
                raise ConfigError(
                    "TIMEBACK_RELAY_TOKEN: the relay transport needs a token: the kernel's own "
                    "JUPYTERHUB_API_TOKEN under JupyterHub, else TIMEBACK_RELAY_TOKEN",
                    field="TIMEBACK_RELAY_TOKEN",
                )

        user_email = get("TIMEBACK_USER_EMAIL")
        if user_email is not None:
            try:
                validate_user(user_email)
            except ValidationError:
                raise ConfigError(
                    "TIMEBACK_USER_EMAIL: expected an email address such as "
                    f"'student@example.edu', got {user_email!r}",
                    field="TIMEBACK_USER_EMAIL",
                ) from None

        store = get("TIMEBACK_NB_STORE")
        config = get("TIMEBACK_CONFIG")
        return cls(
            env=env,
            client_id=client_id,
            client_secret=client_secret,
            auth_url=check_endpoint(
                get("TIMEBACK_AUTH_URL") or defaults["auth"], "TIMEBACK_AUTH_URL"
            ),
            caliper_url=check_endpoint(
                get("TIMEBACK_CALIPER_URL") or defaults["caliper"], "TIMEBACK_CALIPER_URL"
            ),
            oneroster_url=check_endpoint(
                get("TIMEBACK_ONEROSTER_URL") or defaults["oneroster"], "TIMEBACK_ONEROSTER_URL"
            ).rstrip("/"),
            user_email=user_email,
            user_id=get("TIMEBACK_USER_ID"),
            transport=transport,
            store_path=Path(store).expanduser() if store else _default_store_path(),
            config_path=Path(config).expanduser() if config else None,
            relay_url=relay_url,
            relay_token=relay_token,
            hub_token=hub_token,
            hub_api_url=hub_api_url,
        )


def _plain_http_hosts(hub_api_url: str | None) -> tuple[str, ...]:
    try:
        host = urlsplit(hub_api_url).hostname if hub_api_url else None
    except ValueError:
        host = None
    return (host,) if host else ()


def _relay_url(url: str | None, hub_api_url: str | None) -> str:
    if url is None:
        raise ConfigError(
            "TIMEBACK_RELAY_URL: TIMEBACK_NB_TRANSPORT=relay needs the relay's adapter base, e.g. "
            "https://hub.example.edu/services/timeback/api/timeback",
            field="TIMEBACK_RELAY_URL",
        )
    return check_endpoint(url, "TIMEBACK_RELAY_URL", plain_http_hosts=_plain_http_hosts(hub_api_url)).rstrip("/")


# ---------------------------------------------------------------------------------------------
# timeback.config.json


def find_config(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Path | None:
    """`config=` > ``TIMEBACK_CONFIG`` > ``timeback.config.json`` in cwd and its parents.

    A path that is given but does not exist is an error (a typo must not fall through to
    some other file); a directory stands for the ``timeback.config.json`` inside it.
    """
    source = os.environ if environ is None else environ
    given = ((explicit, "config"), (source.get("TIMEBACK_CONFIG") or None, "TIMEBACK_CONFIG"))
    for value, origin in given:
        if value is None:
            continue
        path = Path(value).expanduser()
        if path.is_dir():
            path = path / CONFIG_FILENAME
        if not path.is_file():
            raise ConfigError(f"{origin}: no config file at {str(path)!r}", field=origin)
        return path
    start = Path(cwd).absolute() if cwd is not None else Path.cwd()
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    return None


def no_config_error(cwd: str | os.PathLike[str] | None = None) -> ConfigError:
    """The error for "no config anywhere": where we looked and how to point at one."""
    start = Path(cwd).absolute() if cwd is not None else Path.cwd()
    # Run from a project's root, the config usually sits one folder down (notebooks/): say so.
    nearby = sorted(start.glob(f"*/{CONFIG_FILENAME}"))
    hint = f" (there is one in {nearby[0].parent.name}/: TIMEBACK_CONFIG={nearby[0].relative_to(start)})" if nearby else ""
    return ConfigError(
        f"config: no {CONFIG_FILENAME} found in {str(start)!r} or its parents; pass "
        f"config='path/to/timeback.config.json' or set TIMEBACK_CONFIG{hint}",
        field="config",
    )


def _origin(url: Any) -> str | None:
    """``scheme://host[:port]`` of a launch URL; None when it has no scheme or host."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}" if parts.scheme and host else None


def _merge_metadata(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Protocol §6.4: shallow, except ``goals`` one level deeper; ``metrics`` replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if key == "goals" and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class CourseConfig:
    """One ``courses[i]`` entry as Timeback loads it (camelCase keys only, §6.3)."""

    index: int
    subject: Any  # "Other" when missing; checked against the Caliper subjects on use
    grade: Any  # kept only when present and not null
    course_code: str | None
    level: Any
    ids: Mapping[str, Any]
    sensor: str | None
    launch_url: str | None
    metadata: Mapping[str, Any]
    overrides: Mapping[str, Any]

    @property
    def path(self) -> str:
        return f"courses[{self.index}]"

    @property
    def label(self) -> str:
        """How Timeback names a course in messages: its code, or "<subject> grade <n>"."""
        return self.course_code or f"{self.subject} grade {self.grade}"

    def for_env(self, env: str) -> CourseConfig:
        """The course with ``overrides[env]`` applied (truthy values only, §6.4)."""
        override = self.overrides.get(env) or {}
        launch = override.get("launch_url") or override.get("launchUrl")
        metadata = self.metadata
        if isinstance(override.get("metadata"), Mapping):
            metadata = _merge_metadata(self.metadata, override["metadata"])
        return CourseConfig(
            index=self.index,
            subject=self.subject,
            grade=self.grade,
            course_code=self.course_code,
            level=override.get("level") or self.level,
            ids=self.ids,
            sensor=override.get("sensor") or self.sensor,
            launch_url=launch or self.launch_url,
            metadata=metadata,
            overrides=self.overrides,
        )

    def selector(self) -> dict[str, Any]:
        """The selector a client of the SDK would use for this course (grade first)."""
        if self.grade is not None and (self.subject in REQUEST_SUBJECTS or not self.course_code):
            return {"subject": self.subject, "grade": self.grade}
        return {"code": self.course_code}

    def matches(self, selector: Mapping[str, Any]) -> bool:
        """Protocol §6.8: exact, case-sensitive; a grade stored as a string never matches."""
        if "code" in selector:
            return self.course_code is not None and self.course_code == selector["code"]
        return (
            self.subject == selector["subject"]
            and not isinstance(self.grade, (str, bool))
            and self.grade == selector["grade"]
        )


@dataclass(frozen=True)
class ResolvedCourse:
    """Everything an event needs from the config for one activity's course in one env."""

    selector: dict[str, Any]  # the normalized request selector (feeds object.id)
    subject: str  # Caliper subject from the config course
    grade: int | None
    code: str | None
    course_id: str  # ids[env], the bare OneRoster sourcedId
    course_name: str
    sensor: str
    app_name: str
    total_lessons: int | None


@dataclass(frozen=True)
class TimebackConfig:
    """A loaded ``timeback.config.json``."""

    path: Path
    name: str
    sensor: str | None
    launch_url: str | None
    courses: tuple[CourseConfig, ...]

    def sensor_for(self, course: CourseConfig, env: str) -> str | None:
        """Protocol §6.6: override > course > top-level sensor > origin of the launch URL."""
        effective = course.for_env(env)
        return (
            effective.sensor
            or self.sensor
            or _origin(effective.launch_url or self.launch_url)
        )

    def resolve(self, selector: Mapping[str, Any] | None, env: str) -> ResolvedCourse:
        """The config course an activity's ``course=`` selects, resolved for ``env``."""
        env = api_env(env, "env")
        if selector is None:
            if len(self.courses) != 1:
                raise ConfigError(
                    f"course: required because {self.path} has {len(self.courses)} courses; "
                    'pass course={"subject": ..., "grade": ...} or {"code": ...}; '
                    f"configured: {self._listing()}",
                    field="course",
                )
            course = self.courses[0]
            return self._resolve_course(course, course.selector(), env)
        normalized = validate_course_selector(selector)
        found = [course for course in self.courses if course.matches(normalized)]
        if not found:
            raise ConfigError(
                f"course: no course in {self.path} matches {json.dumps(normalized)}; "
                f"configured: {self._listing()}{self._string_grade_hint()}",
                field="course",
            )
        if len(found) > 1:
            raise ConfigError(
                f"course: {json.dumps(normalized)} matches several courses in {self.path}: "
                f"{', '.join(f'{c.path} ({c.label})' for c in found)}; make them distinct",
                field="course",
            )
        return self._resolve_course(found[0], normalized, env)

    def _resolve_course(
        self, course: CourseConfig, selector: dict[str, Any], env: str
    ) -> ResolvedCourse:
        if course.subject not in CALIPER_SUBJECTS:
            raise ConfigError(
                f"{course.path}.subject: {course.subject!r} in {self.path} is not a Caliper "
                f"subject; allowed: {', '.join(CALIPER_SUBJECTS)}",
                field=f"{course.path}.subject",
            )
        sensor = self.sensor_for(course, env)
        if not sensor:
            raise ConfigError(_no_sensor_message(self.path, course, env), field="sensor")
        course_id = course.ids.get(env)
        if not isinstance(course_id, str) or not course_id.strip():
            other = next(e for e in API_ENVS if e != env)
            alternative = f", or use TIMEBACK_ENV={other}" if course.ids.get(other) else ""
            raise ConfigError(
                f"{course.path}.ids.{env}: course {course.label} is not synced for {env}; add "
                f'"ids": {{"{env}": "<sourcedId>"}} to that course in {self.path}{alternative}',
                field=f"{course.path}.ids",
            )
        effective = course.for_env(env)
        metrics = effective.metadata.get("metrics")
        total_lessons = metrics.get("totalLessons") if isinstance(metrics, Mapping) else None
        if isinstance(total_lessons, bool) or not isinstance(total_lessons, int):
            total_lessons = None
        if course.course_code:
            course_name = course.course_code
        elif course.grade is not None:
            course_name = f"{course.subject} G{course.grade}"
        else:
            course_name = course.subject
        return ResolvedCourse(
            selector=dict(selector),
            subject=course.subject,
            grade=course.grade,
            code=course.course_code,
            course_id=course_id,
            course_name=course_name,
            sensor=sensor,
            app_name=self.name,
            total_lessons=total_lessons,
        )

    def _listing(self) -> str:
        if not self.courses:
            return "none"
        return ", ".join(json.dumps(c.selector()) for c in self.courses)

    def _string_grade_hint(self) -> str:
        quoted = [c.path for c in self.courses if isinstance(c.grade, str)]
        if not quoted:
            return ""
        where = ", ".join(f"{q}.grade" for q in quoted)
        return f" ({where} is a string; Timeback matches only integer grades)"


def _no_sensor_message(path: Path, course: CourseConfig, env: str) -> str:
    return (
        f"{path}: course {course.label} ({course.path}) has no sensor for {env}; set a "
        'top-level "sensor", a per-course "sensor" or a "launchUrl"'
    )


class _Reader:
    """Typed access to the parsed JSON, naming the JSON path of anything refused."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {message}", field=where)

    def optional(self, obj: Mapping[str, Any], key: str, where: str, kind: type, what: str) -> Any:
        value = obj.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise self.fail(where, f"expected {what}, got {json.dumps(value)}")
        return value

    def sensor(self, obj: Mapping[str, Any], where: str) -> str | None:
        value = self.optional(obj, "sensor", where, str, "a URL string")
        if value is None:
            return None
        if value != value.strip():
            raise self.fail(where, f"remove the surrounding whitespace from {value!r}")
        if value and _origin(value) is None:
            raise self.fail(
                where,
                f"{value!r} is not an absolute URL; expected scheme and host, "
                "e.g. https://notebooks.example.org",
            )
        return value


def _read_course(reader: _Reader, raw: Any, index: int) -> CourseConfig:
    where = f"courses[{index}]"
    if not isinstance(raw, Mapping):
        raise reader.fail(where, f"expected an object, got {json.dumps(raw)}")
    ids = reader.optional(
        raw, "ids", f"{where}.ids", Mapping, 'an object such as {"staging": "<sourcedId>"}'
    )
    for env in ids or {}:
        reader.optional(ids, env, f"{where}.ids.{env}", str, "a sourcedId string or null")
    metadata = reader.optional(raw, "metadata", f"{where}.metadata", Mapping, "an object")
    overrides = reader.optional(
        raw, "overrides", f"{where}.overrides", Mapping, "an object keyed by env"
    )
    for env, override in (overrides or {}).items():
        if override is None:
            continue
        if not isinstance(override, Mapping):
            raise reader.fail(
                f"{where}.overrides.{env}", f"expected an object, got {json.dumps(override)}"
            )
        reader.sensor(override, f"{where}.overrides.{env}.sensor")
        reader.optional(
            override, "metadata", f"{where}.overrides.{env}.metadata", Mapping, "an object"
        )
    # Only camelCase is read at course level; snake_case course_code/launch_url are ignored (§6.3).
    return CourseConfig(
        index=index,
        subject=raw.get("subject") or "Other",
        grade=raw.get("grade"),
        course_code=reader.optional(raw, "courseCode", f"{where}.courseCode", str, "a string"),
        level=raw.get("level"),
        ids=dict(ids or {}),
        sensor=reader.sensor(raw, f"{where}.sensor"),
        launch_url=reader.optional(raw, "launchUrl", f"{where}.launchUrl", str, "a URL string"),
        metadata=dict(metadata or {}),
        overrides={k: dict(v) for k, v in (overrides or {}).items() if isinstance(v, Mapping)},
    )


def load_config(path: str | os.PathLike[str], env: str | None = None) -> TimebackConfig:
    """Read ``timeback.config.json`` as Timeback does and run its start-up checks (§6.5).

    Every course needs a grade or a courseCode, identities must be unique, and every course
    needs an effective sensor in ``env`` (both API envs when ``env`` is None).
    """
    path = Path(path)
    reader = _Reader(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config: no config file at {str(path)!r}", field="config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}", field="config") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}",
            field="config",
        ) from None
    if not isinstance(raw, Mapping):
        raise reader.fail("(top level)", f"expected a JSON object, got {type(raw).__name__}")

    name = reader.optional(raw, "name", "name", str, "a string")
    courses_raw = raw.get("courses")
    if courses_raw is None:
        courses_raw = []
    if not isinstance(courses_raw, list):
        raise reader.fail(
            "courses", f"expected an array of course objects, got {json.dumps(courses_raw)}"
        )
    config = TimebackConfig(
        path=path,
        name=name or DEFAULT_APP_NAME,
        sensor=reader.sensor(raw, "sensor"),
        launch_url=reader.optional(raw, "launchUrl", "launchUrl", str, "a URL string"),
        courses=tuple(_read_course(reader, c, i) for i, c in enumerate(courses_raw)),
    )
    _check_startup(config, API_ENVS if env is None else (api_env(env, "env"),))
    return config


def _check_startup(config: TimebackConfig, envs: tuple[str, ...]) -> None:
    """Timeback's start-up validation (§6.5), each failure naming the course."""
    grades: dict[tuple[Any, Any], CourseConfig] = {}
    codes: dict[str, CourseConfig] = {}
    for course in config.courses:
        if course.grade is None and not course.course_code:
            raise ConfigError(
                f"{config.path}: {course.path} ({course.subject}): needs a \"grade\" or a "
                '"courseCode" (snake_case "course_code" is not read)',
                field=course.path,
            )
        if course.grade is not None:
            key = (course.subject, course.grade)
            if key in grades:
                raise ConfigError(
                    f"{config.path}: {course.path} repeats {course.subject} grade {course.grade} "
                    f"of {grades[key].path}; each (subject, grade) may appear once",
                    field=course.path,
                )
            grades[key] = course
        if course.course_code:
            if course.course_code in codes:
                raise ConfigError(
                    f"{config.path}: {course.path} repeats courseCode {course.course_code!r} of "
                    f"{codes[course.course_code].path}; each courseCode may appear once",
                    field=course.path,
                )
            codes[course.course_code] = course
        for env in envs:
            if not config.sensor_for(course, env):
                raise ConfigError(_no_sensor_message(config.path, course, env), field=course.path)


def describe(config: TimebackConfig, settings: Settings) -> list[dict[str, Any]]:
    """For ``timeback-nb check``: each course in each env, resolved, with any problem stated.

    Holds no secret: sensors, sourcedIds and URLs only.
    """
    rows: list[dict[str, Any]] = []
    for course in config.courses:
        selector = course.selector()
        for env in API_ENVS:
            sensor = config.sensor_for(course, env)
            course_id = course.ids.get(env) or "not synced"
            problem = None
            try:
                config._resolve_course(course, selector, env)
            except ConfigError as exc:
                problem = str(exc)
            prefix = None
            if sensor:
                try:
                    prefix = activity_url(sensor, selector, "")
                except ConfigError as exc:
                    problem = problem or str(exc)
            rows.append(
                {
                    "course": course.label,
                    "selector": selector,
                    "env": env,
                    "active": env == settings.env,
                    "subject": course.subject,
                    "sensor": sensor,
                    "course_id": course_id,
                    "object_id_prefix": prefix,
                    "problem": problem,
                }
            )
    return rows
