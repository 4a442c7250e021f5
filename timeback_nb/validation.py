"""Argument and metric rules (design §4, §7): every refusal names the field and what is allowed.

Pure functions: each takes a value from the caller and returns it normalized, or raises
`errors.ValidationError` via `errors.invalid(field, message)`. Nothing here reads the clock,
the environment or a file.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .clock import iso_utc_ms
from .errors import invalid

# The selector subjects Timeback's activity routes and record() accept (protocol §2.4).
REQUEST_SUBJECTS: tuple[str, ...] = (
    "Math",
    "Reading",
    "Science",
    "Social Studies",
    "Writing",
    "Other",
)

# The subjects a Caliper `object.subject` may carry (protocol §2.4; the SDK's ten).
CALIPER_SUBJECTS: tuple[str, ...] = (
    "Reading",
    "Language",
    "Vocabulary",
    "Social Studies",
    "Writing",
    "Science",
    "FastMath",
    "Math",
    "None",
    "Other",
)

# Metric keys in canonical order (design §4).
METRIC_KEYS: tuple[str, ...] = (
    "xpEarned",
    "totalQuestions",
    "correctQuestions",
    "masteredUnits",
    "pctComplete",
)

MIN_GRADE = 0
MAX_GRADE = 12

# Protocol §5.4: a literal T, seconds and a zone are mandatory. ASCII digits only.
DATETIME_PATTERN = re.compile(
    r"(?P<date>(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2}))"
    r"T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?:\.(?P<frac>[0-9]+))?"
    r"(?P<zone>Z|(?P<sign>[+-])(?P<zh>[0-9]{2}):(?P<zm>[0-9]{2}))"
)
_DATETIME_EXAMPLE = "2025-01-15T10:20:00.000Z"

_UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def _show(value: Any) -> str:
    """A short, safe rendering of a refused value for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value: Any, field: str, what: str) -> str:
    """A non-blank str that survives UTF-8 encoding (it is stored and sent as UTF-8)."""
    if not isinstance(value, str):
        raise invalid(field, f"expected a non-empty string ({what}), got {_show(value)}")
    if not value.strip():
        raise invalid(field, f"expected a non-empty string ({what}), got a blank string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, "contains a character that cannot be encoded as UTF-8") from None
    return value


def validate_activity_id(value: Any, field: str = "id") -> str:
    """The activity slug: a non-blank string, kept exactly as given (it is part of object.id)."""
    return _text(value, field, "the activity's stable slug, e.g. 'week-3'")


def validate_name(value: Any, field: str = "name") -> str:
    """The activity's display name: a non-blank string, kept as given."""
    return _text(value, field, "the activity's display name")


def _as_int(value: Any) -> int | None:
    """A plain int for integer values (numpy integers included); None for anything else."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_course_selector(course: Any) -> dict[str, Any]:
    """``{"subject": S, "grade": G}`` or ``{"code": C}`` → the normalized selector.

    The caller handles ``course=None`` ("the config's only course") before calling this.
    """
    shape = '{"subject": "Math", "grade": 3} or {"code": "CS-101"}'
    if not isinstance(course, Mapping):
        raise invalid("course", f"expected {shape}, got {_show(course)}")
    unknown = sorted(str(k) for k in course if k not in ("subject", "grade", "code"))
    if unknown:
        raise invalid(
            "course",
            f"unknown key(s) {', '.join(unknown)}; allowed keys: subject and grade, or code",
        )
    if "code" in course:
        if "subject" in course or "grade" in course:
            raise invalid("course", f"give either code or subject and grade, not both: {shape}")
        return {"code": _text(course["code"], "course.code", "a courseCode").strip()}
    if "subject" not in course or "grade" not in course:
        missing = [k for k in ("subject", "grade") if k not in course]
        raise invalid("course", f"missing {' and '.join(missing)}; expected {shape}")
    subject, grade = course["subject"], course["grade"]
    if subject not in REQUEST_SUBJECTS:
        raise invalid(
            "course.subject",
            f"{_show(subject)} is not allowed; allowed: {', '.join(REQUEST_SUBJECTS)} "
            "(other subjects are reached with {\"code\": ...})",
        )
    number = _as_int(grade)
    if number is None or not MIN_GRADE <= number <= MAX_GRADE:
        raise invalid(
            "course.grade", f"expected an integer from {MIN_GRADE} to {MAX_GRADE}, got {_show(grade)}"
        )
    return {"subject": subject, "grade": number}


def validate_run_id(value: Any, field: str = "run_id") -> str:
    """A UUID (8-4-4-4-12 hex, either case; version not checked) → lower-case canonical text."""
    if not isinstance(value, str) or not _UUID_PATTERN.fullmatch(value):
        raise invalid(
            field,
            "expected a UUID of 8-4-4-4-12 hex digits, e.g. '3f2504e0-4f89-41d3-9a0c-0305e82c3301', "
            f"got {_show(value)}",
        )
    return value.lower()


# (smallest, largest) accepted seconds per knob: below the smallest the heartbeat would spin
# (a window of 0 ms), above the largest the number means nothing a notebook session could use.
SECONDS_RANGES: dict[str, tuple[float, float]] = {
    "heartbeat_interval": (0.1, 86_400.0),
    "abandon_after": (0.1, 7 * 86_400.0),
    "ping_interval": (0.05, 300.0),
}

# The largest integer a JSON number carries exactly (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_JSON_INT = 2**53 - 1


def _finite(value: Any) -> float | None:
    """`value` as a finite float, or None (also for numbers too large for a float, e.g. 10**400)."""
    if not _is_number(value):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


def number_within(value: Any, low: float, high: float) -> float | None:
    """`value` (a number, or a numeral such as a command-line argument) as a finite float from
    `low` to `high`, or None: for callers that raise their own error (e.g. a ConfigError)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    number = _finite(value)
    return number if number is not None and low <= number <= high else None


def validate_seconds(value: Any, field: str, knob: str | None = None) -> float:
    """A number of seconds for the knob `knob` (default: `field`) within its range, as float;
    `field` is what the message names (an argument, an environment variable, a config option)."""
    low, high = SECONDS_RANGES[knob or field]
    number = _finite(value)
    if number is None or not low <= number <= high:
        raise invalid(
            field, f"expected a number of seconds from {low:g} to {high:,g} (finite, > 0), got {_show(value)}"
        )
    return number


def validate_interval(heartbeat_interval: Any, abandon_after: Any) -> tuple[float, float]:
    """Heartbeat period and abandonment cut-off in seconds; abandon_after ≥ heartbeat_interval."""
    interval = validate_seconds(heartbeat_interval, "heartbeat_interval")
    abandon = validate_seconds(abandon_after, "abandon_after")
    if abandon < interval:
        raise invalid(
            "abandon_after",
            f"must be ≥ heartbeat_interval ({interval:g} s), got {abandon:g} s",
        )
    return interval, abandon


IDLE_AFTER_RANGE = (1.0, 86_400.0)  # seconds; below a second every pause to read would be idle


def validate_idle_after(value: Any, field: str = "idle_after") -> float | None:
    """The idle rule's seconds, or None for off (0 or False); `field` names where it came from."""
    if value is False or (_is_number(value) and value == 0):
        return None
    low, high = IDLE_AFTER_RANGE
    number = _finite(value)
    if number is None or not low <= number <= high:
        raise invalid(field, f"expected 0 (off) or a number of seconds from {low:g} to {high:,g}, got {_show(value)}")
    return float(value)


def _count(metrics: Mapping[str, Any], key: str) -> int | None:
    value = metrics.get(key)
    if value is None:
        return None
    number = _as_int(value)
    if number is None or not 0 <= number <= MAX_JSON_INT:
        raise invalid(f"metrics.{key}", f"expected an integer ≥ 0 and ≤ {MAX_JSON_INT}, got {_show(value)}")
    return number


def _plain_number(value: Any) -> int | float:
    """Python int/float (numpy scalars and friends do not serialize to JSON)."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def validate_metrics(metrics: Any) -> dict[str, Any]:
    """Completion metrics (design §4) → a new dict in canonical key order, None values dropped.

    Refused, not clamped: anything outside its range raises naming ``metrics.<key>``.
    """
    allowed = ", ".join(METRIC_KEYS)
    if not isinstance(metrics, Mapping):
        raise invalid("metrics", f"expected a mapping with keys from: {allowed}; got {_show(metrics)}")
    unknown = sorted(str(k) for k in metrics if k not in METRIC_KEYS)
    if unknown:
        raise invalid("metrics", f"unknown key(s) {', '.join(unknown)}; allowed keys: {allowed}")

    xp = metrics.get("xpEarned")
    if xp is None:
        raise invalid("metrics.xpEarned", "required: a finite number ≥ 0 (the XP this run earned)")
    xp_number = _finite(xp)
    if xp_number is None or not 0 <= xp_number <= MAX_JSON_INT:
        raise invalid("metrics.xpEarned", f"expected a finite number ≥ 0 and ≤ {MAX_JSON_INT}, got {_show(xp)}")

    total = _count(metrics, "totalQuestions")
    correct = _count(metrics, "correctQuestions")
    if (total is None) != (correct is None):
        given, other = ("totalQuestions", "correctQuestions") if correct is None else (
            "correctQuestions",
            "totalQuestions",
        )
        raise invalid(
            "metrics",
            f"totalQuestions and correctQuestions go together: {given} is given, {other} is not",
        )
    if total is not None and correct is not None and correct > total:
        raise invalid(
            "metrics.correctQuestions",
            f"must be ≤ totalQuestions ({total}), got {correct}",
        )
    mastered = _count(metrics, "masteredUnits")

    pct = metrics.get("pctComplete")
    if pct is not None and (_finite(pct) is None or not 0 <= pct <= 100):
        raise invalid("metrics.pctComplete", f"expected a number from 0 to 100, got {_show(pct)}")
    if pct is not None and 0 < pct <= 1:
        _warn_once_about_a_fraction(pct)

    values = {
        "xpEarned": _plain_number(xp),
        "totalQuestions": total,
        "correctQuestions": correct,
        "masteredUnits": mastered,
        "pctComplete": None if pct is None else _plain_number(pct),
    }
    return {key: value for key, value in values.items() if value is not None}


_fraction_warned = False


def _warn_once_about_a_fraction(pct: float) -> None:
    """0.75 is a valid percentage (0.75 %), so it is kept; but it looks like a fraction of 1,
    so say so, once per process (a lesson ending in a loop would repeat it)."""
    global _fraction_warned
    if _fraction_warned:
        return
    _fraction_warned = True
    warnings.warn(
        f"pctComplete is a percentage 0–100; did you mean {round(pct * 100, 6):g}? "
        f"(recorded as given: {pct:g} %)",
        UserWarning,
        stacklevel=4,  # the caller of end() / record()
    )


def iso_to_epoch_ms(value: Any, field: str = "datetime") -> int:
    """Epoch milliseconds of an ISO-8601 string in the protocol's shape (§5.4).

    Fractions below 1 ms are truncated, offsets are honoured (``…Z`` and ``…+00:00`` are the
    same instant): the heartbeat de-duplication key of protocol §5.8.
    """
    match = DATETIME_PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise invalid(
            field,
            "expected an ISO-8601 date-time with seconds and a zone (Z or ±hh:mm), "
            f"e.g. '{_DATETIME_EXAMPLE}', got {_show(value)}",
        )
    try:
        zone = timezone.utc
        if match["sign"]:
            offset = timedelta(hours=int(match["zh"]), minutes=int(match["zm"]))
            zone = timezone(-offset if match["sign"] == "-" else offset)
        moment = datetime(
            int(match["y"]), int(match["mo"]), int(match["d"]),
            int(match["h"]), int(match["mi"]), int(match["s"]), tzinfo=zone,
        )  # fmt: skip
    except ValueError as exc:
        raise invalid(field, f"not a real date-time: {_show(value)} ({exc})") from None
    millis = int(((match["frac"] or "") + "000")[:3])
    return (moment - _EPOCH) // _ONE_MS + millis


def datetime_to_epoch_ms(value: datetime) -> int:
    """Epoch milliseconds of a tz-aware datetime (microseconds truncated, no float rounding)."""
    return (value - _EPOCH) // _ONE_MS


def validate_ended_at(value: Any, field: str = "ended_at") -> str:
    """When a completion happened, as the exact ``eventTime`` string to send.

    A tz-aware ``datetime`` becomes UTC with milliseconds and ``Z``; a string with a zone is
    kept as given (Timeback compares it by exact string for attempt matching, protocol §8.2).
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise invalid(
                field,
                "a naive datetime has no zone; pass a tz-aware one, e.g. "
                "datetime.now(timezone.utc), or an ISO-8601 string with a zone",
            )
        return iso_utc_ms(datetime_to_epoch_ms(value))
    iso_to_epoch_ms(value, field)
    return value


def validate_user(user: Any) -> dict[str, Any] | None:
    """Who the student is: None (ask the environment), an email, or {"email": ..., "id": ...}."""
    if user is None:
        return None
    if isinstance(user, str):
        return {"email": _email(user, "user"), "id": None}
    if not isinstance(user, Mapping):
        raise invalid(
            "user",
            "expected None, an email string, or {\"email\": ..., \"id\": <OneRoster sourcedId>}, "
            f"got {_show(user)}",
        )
    unknown = sorted(str(k) for k in user if k not in ("email", "id"))
    if unknown:
        raise invalid("user", f"unknown key(s) {', '.join(unknown)}; allowed keys: email, id")
    if user.get("email") is None:
        raise invalid("user.email", "required: the student's email address")
    email = _email(user["email"], "user.email")
    user_id = user.get("id")
    if user_id is not None:
        user_id = _text(user_id, "user.id", "the student's OneRoster sourcedId")
        if user_id != user_id.strip():
            raise invalid("user.id", f"must not have surrounding whitespace, got {_show(user_id)}")
    return {"email": email, "id": user_id}


def _email(value: Any, field: str) -> str:
    text = _text(value, field, "an email address such as 'student@example.edu'")
    local, at, domain = text.partition("@")
    if not at or not local or not domain or any(ch.isspace() for ch in text):
        raise invalid(
            field, f"expected an email address such as 'student@example.edu', got {_show(value)}"
        )
    return text


# -- timeouts (flush, record, a transport's requests) ---------------------------------------------


def validate_timeout(value: Any, field: str, *, low: float, high: float) -> float:
    """A timeout in seconds from `low` to `high` (both allowed). Refuses bools, NaN, infinities
    and integers too large for a float (``10**400``) by name, never with an OverflowError."""
    number = _finite(value)
    if number is None or not low <= number <= high:
        raise invalid(field, f"expected a number of seconds from {low:g} to {high:g}, got {_show(value)}")
    return number


MAX_FLUSH_TIMEOUT_S = 86_400.0


def validate_flush_timeout(value: Any, field: str = "timeout") -> float:
    """How long `flush`/`record` wait: 0 (one look, no waiting) up to a day."""
    return validate_timeout(value, field, low=0.0, high=MAX_FLUSH_TIMEOUT_S)
