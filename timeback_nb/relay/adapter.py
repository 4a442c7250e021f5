"""The Timeback SDK's adapter protocol, server side: request bodies in, records or errors out.

Protocol reference §5.3-§5.7: the heartbeat and submit bodies, their validation order (the
first failing field wins), the error envelope and its codes. Pure: a body (already parsed JSON)
goes in; a `TimeWindow` / `Completion` comes out, or an `AdapterError` that knows its HTTP
status and the JSON the client gets. Course resolution maps the config's problems onto the
SDK's codes (UNKNOWN_COURSE, AMBIGUOUS_COURSE_SELECTOR, MISSING_SENSOR,
MISSING_SYNCED_COURSE_ID).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import ResolvedCourse, TimebackConfig
from ..errors import ConfigError, ValidationError
from ..records import ActivityRef, Completion, TimeWindow
from ..validation import DATETIME_PATTERN, REQUEST_SUBJECTS, iso_to_epoch_ms

__all__ = [
    "AdapterError",
    "CourseResolver",
    "Heartbeat",
    "Submit",
    "invalid_payload",
    "parse_body",
    "validate_heartbeat",
    "validate_submit",
]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class AdapterError(Exception):
    """A refused request: HTTP `status`, the SDK's error `code`, and for a field-level failure
    the `field` with its own message (the envelope's `details`)."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" ({field}: {detail})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.detail = detail

    def body(self) -> dict[str, Any]:
        """The SDK's error envelope (§5.3)."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["details"] = {"field": self.field, "message": self.detail}
        return {"error": error}


def invalid_payload(field: str, detail: str) -> AdapterError:
    """400 INVALID_PAYLOAD naming the field, as the SDK's validator reports it."""
    return AdapterError(400, "INVALID_PAYLOAD", "Invalid payload", field=field, detail=detail)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes) -> Any:
    """The body as JSON whatever the Content-Type (§5.2); NaN and Infinity are not JSON."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(400, "INVALID_PAYLOAD", f"Malformed JSON: {exc}") from None


# -- field rules (§5.4) ----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _required_text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise invalid_payload(key, "Required")
    if not isinstance(value, str):
        raise invalid_payload(key, "Expected string")
    return value.strip()


def _course(body: Mapping[str, Any]) -> dict[str, Any]:
    course = body.get("course")
    if course is None or course == {}:
        raise invalid_payload("course", "Required")
    if not isinstance(course, dict):
        raise invalid_payload("course", "Expected object")
    code = course.get("code")
    if code:  # a truthy code wins over subject and grade
        if not isinstance(code, str) or not code.strip():
            raise invalid_payload("course.code", "Expected non-empty string")
        return {"code": code.strip()}
    subject = course.get("subject")
    if not isinstance(subject, str) or not subject:
        raise invalid_payload("course.subject", "Required")
    grade = course.get("grade")
    if grade is None:
        raise invalid_payload("course", "Either code, or subject and grade, is required")
    if not _is_int(grade):
        raise invalid_payload("course.grade", "Expected integer")
    if subject not in REQUEST_SUBJECTS:
        raise invalid_payload("course.subject", f"Expected one of: {', '.join(REQUEST_SUBJECTS)}")
    if not 0 <= grade <= 12:
        raise invalid_payload("course.grade", "Number must be between 0 and 12")
    return {"subject": subject, "grade": grade}


def _run_id(body: Mapping[str, Any]) -> str:
    value = body.get("runId")
    if value is None:
        raise invalid_payload("runId", "Required")
    if not isinstance(value, str) or not _is_uuid(value):
        raise invalid_payload("runId", "Expected UUID")
    # One run, one spelling: the relay keys ownership, overlap and event ids on it.
    return value.lower()


def _is_uuid(text: str) -> bool:
    return _UUID.fullmatch(text) is not None


def _datetime(body: Mapping[str, Any], key: str) -> tuple[str, int]:
    """The string as sent and its epoch ms (the de-duplication key's unit, §5.8)."""
    value = body.get(key)
    if value is None:
        raise invalid_payload(key, "Required")
    if not isinstance(value, str) or DATETIME_PATTERN.fullmatch(value) is None:
        raise invalid_payload(key, "Invalid datetime")
    try:
        return value, iso_to_epoch_ms(value, key)
    except ValidationError:  # the right shape but no such date (month 13)
        raise invalid_payload(key, "Invalid datetime") from None


def _count(container: Mapping[str, Any], key: str, field: str, *, required: bool) -> int | None:
    value = container.get(key)
    if value is None:
        if required:
            raise invalid_payload(field, "Required")
        return None
    if not _is_int(value) or value < 0:
        raise invalid_payload(field, "Expected nonnegative integer")
    return value


def _common(body: Any) -> tuple[ActivityRef, str]:
    if not isinstance(body, dict):
        raise AdapterError(400, "INVALID_PAYLOAD", "Invalid payload", field="(body)", detail="Expected object")
    activity_id = _required_text(body, "id")
    name = _required_text(body, "name")
    course = _course(body)
    return ActivityRef(activity_id, name, course), _run_id(body)


# -- the two bodies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """A valid heartbeat body: the window it reports, with its bounds in epoch ms."""

    window: TimeWindow
    started_ms: int
    ended_ms: int


@dataclass(frozen=True)
class Submit:
    """A valid submit body: the completion, `process` (true when absent), and its endedAt in epoch ms."""

    completion: Completion
    process: bool
    ended_ms: int


def validate_heartbeat(body: Any) -> Heartbeat:
    """§5.5: common fields, startedAt, endedAt, elapsedMs, pausedMs; unknown keys ignored."""
    activity, run_id = _common(body)
    started_at, started_ms = _datetime(body, "startedAt")
    ended_at, ended_ms = _datetime(body, "endedAt")
    elapsed = _count(body, "elapsedMs", "elapsedMs", required=True)
    paused = _count(body, "pausedMs", "pausedMs", required=True)
    assert elapsed is not None and paused is not None
    return Heartbeat(TimeWindow(activity, run_id, started_at, ended_at, elapsed, paused), started_ms, ended_ms)


def validate_submit(body: Any) -> Submit:
    """§5.6: common fields, endedAt, process, pctComplete, metrics (xpEarned, the counts, the
    pairing, correct ≤ total). xpEarned may be negative (a deduction), as in the SDK; a
    pctComplete outside 0-100 is clamped before it is sent (the SDK forgets to, §5.6)."""
    activity, run_id = _common(body)
    ended_at, ended_ms = _datetime(body, "endedAt")
    process = body.get("process")
    if process is not None and not isinstance(process, bool):
        raise invalid_payload("process", "Expected boolean")
    pct = body.get("pctComplete")
    if pct is not None and not _is_number(pct):
        raise invalid_payload("pctComplete", "Expected number")
    metrics = body.get("metrics")
    if metrics is None:
        raise invalid_payload("metrics", "Required")
    if not isinstance(metrics, dict):
        raise invalid_payload("metrics", "Expected object")
    xp = metrics.get("xpEarned")
    if xp is None:
        raise invalid_payload("metrics.xpEarned", "Required")
    if not _is_number(xp):
        raise invalid_payload("metrics.xpEarned", "Expected number")
    counts = {
        key: _count(metrics, key, f"metrics.{key}", required=False)
        for key in ("totalQuestions", "correctQuestions", "masteredUnits")
    }
    total, correct = counts["totalQuestions"], counts["correctQuestions"]
    if (total is None) != (correct is None):
        raise invalid_payload("metrics", "totalQuestions and correctQuestions must be provided together")
    if total is not None and correct is not None and correct > total:
        raise invalid_payload("metrics.correctQuestions", "correctQuestions cannot exceed totalQuestions")
    values: dict[str, Any] = {"xpEarned": xp, **{k: v for k, v in counts.items() if v is not None}}
    if pct is not None:
        values["pctComplete"] = min(max(pct, 0), 100)
    completion = Completion(activity, run_id, ended_at, values)
    return Submit(completion, True if process is None else process, ended_ms)


# -- course resolution (§5.4 step 5, §5.5 step 5) ------------------------------------------------


class CourseResolver:
    """A request's selector → the config course, resolved for the API env (cached: the config
    is read once at start, as the SDK reads it)."""

    def __init__(self, config: TimebackConfig, env: str) -> None:
        self.config = config
        self.env = env
        self._cache: dict[tuple[Any, ...], ResolvedCourse | AdapterError] = {}

    def resolve(self, selector: Mapping[str, Any]) -> ResolvedCourse:
        key = tuple(sorted(selector.items()))
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._resolve(selector)
        if isinstance(found, AdapterError):
            raise found
        return found

    def _resolve(self, selector: Mapping[str, Any]) -> ResolvedCourse | AdapterError:
        shown = json.dumps(dict(selector))
        matches = [course for course in self.config.courses if course.matches(selector)]
        if not matches:
            return AdapterError(400, "UNKNOWN_COURSE", f"No course in the config matches {shown}")
        if len(matches) > 1:
            return AdapterError(500, "AMBIGUOUS_COURSE_SELECTOR", f"More than one course matches {shown}")
        course = matches[0]
        if not self.config.sensor_for(course, self.env):
            return AdapterError(500, "MISSING_SENSOR", f"Course {course.label} has no sensor for {self.env}")
        try:
            return self.config.resolve(selector, self.env)
        except ConfigError as exc:
            if (exc.field or "").endswith(".ids"):
                return AdapterError(
                    503, "MISSING_SYNCED_COURSE_ID",
                    f"Course {course.label} has no synced id for {self.env}; push the course resources first",
                )
            return AdapterError(502, "INTERNAL_ERROR", str(exc))
