"""Argument and metric rules: good values normalized, bad ones refused naming the field."""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any, Callable

import pytest

from timeback_nb import validation
from timeback_nb.errors import TimebackError, ValidationError
from timeback_nb.validation import (
    CALIPER_SUBJECTS,
    REQUEST_SUBJECTS,
    iso_to_epoch_ms,
    validate_activity_id,
    validate_course_selector,
    validate_ended_at,
    validate_interval,
    validate_metrics,
    validate_name,
    validate_run_id,
    validate_user,
)

GOOD_METRICS = {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8}

# (call, field that must lead the message, a word of the allowed values/shape that must appear)
BAD_INPUTS: list[tuple[str, Callable[[], Any], str, str]] = [
    ("id not a string", lambda: validate_activity_id(3), "id", "slug"),
    ("id blank", lambda: validate_activity_id("   "), "id", "non-empty"),
    ("id lone surrogate", lambda: validate_activity_id("a\udc80"), "id", "UTF-8"),
    ("name None", lambda: validate_name(None), "name", "non-empty"),
    ("name empty", lambda: validate_name(""), "name", "non-empty"),
    ("course not a mapping", lambda: validate_course_selector("Math"), "course", '"code"'),
    ("course empty", lambda: validate_course_selector({}), "course", "subject and grade"),
    ("course unknown key", lambda: validate_course_selector({"subject": "Math", "grade": 3, "level": 1}), "course", "allowed keys"),
    ("course code and grade", lambda: validate_course_selector({"code": "X", "grade": 3}), "course", "not both"),
    ("course code blank", lambda: validate_course_selector({"code": "  "}), "course.code", "non-empty"),
    ("course code number", lambda: validate_course_selector({"code": 101}), "course.code", "non-empty"),
    ("course subject unknown", lambda: validate_course_selector({"subject": "Maths", "grade": 3}), "course.subject", "Social Studies"),
    ("course subject lower case", lambda: validate_course_selector({"subject": "math", "grade": 3}), "course.subject", "Math"),
    ("course subject Caliper-only", lambda: validate_course_selector({"subject": "Language", "grade": 3}), "course.subject", "Writing"),
    ("course grade missing", lambda: validate_course_selector({"subject": "Math"}), "course", "grade"),
    ("course grade 13", lambda: validate_course_selector({"subject": "Math", "grade": 13}), "course.grade", "0 to 12"),
    ("course grade -1", lambda: validate_course_selector({"subject": "Math", "grade": -1}), "course.grade", "0 to 12"),
    ("course grade bool", lambda: validate_course_selector({"subject": "Math", "grade": True}), "course.grade", "integer"),
    ("course grade float", lambda: validate_course_selector({"subject": "Math", "grade": 3.0}), "course.grade", "integer"),
    ("course grade string", lambda: validate_course_selector({"subject": "Math", "grade": "3"}), "course.grade", "integer"),
    ("run id not uuid", lambda: validate_run_id("run-1"), "run_id", "8-4-4-4-12"),
    ("run id no dashes", lambda: validate_run_id("3f2504e04f8941d39a0c0305e82c3301"), "run_id", "UUID"),
    ("run id braces", lambda: validate_run_id("{3f2504e0-4f89-41d3-9a0c-0305e82c3301}"), "run_id", "UUID"),
    ("run id trailing newline", lambda: validate_run_id("3f2504e0-4f89-41d3-9a0c-0305e82c3301\n"), "run_id", "UUID"),
    ("interval zero", lambda: validate_interval(0, 600), "heartbeat_interval", "> 0"),
    ("interval negative", lambda: validate_interval(-1, 600), "heartbeat_interval", "> 0"),
    ("interval inf", lambda: validate_interval(math.inf, math.inf), "heartbeat_interval", "finite"),
    ("interval nan", lambda: validate_interval(math.nan, 600), "heartbeat_interval", "finite"),
    ("interval bool", lambda: validate_interval(True, 600), "heartbeat_interval", "number"),
    ("interval string", lambda: validate_interval("15", 600), "heartbeat_interval", "number"),
    ("abandon below interval", lambda: validate_interval(15, 10), "abandon_after", "heartbeat_interval"),
    ("abandon None", lambda: validate_interval(15, None), "abandon_after", "number"),
    ("metrics not a mapping", lambda: validate_metrics([("xpEarned", 1)]), "metrics", "xpEarned"),
    ("metrics unknown key", lambda: validate_metrics({"xpEarned": 1, "score": 3}), "metrics", "pctComplete"),
    ("metrics snake_case key", lambda: validate_metrics({"xp_earned": 1}), "metrics", "xpEarned"),
    ("xp missing", lambda: validate_metrics({"totalQuestions": 1, "correctQuestions": 1}), "metrics.xpEarned", "required"),
    ("xp None", lambda: validate_metrics({"xpEarned": None}), "metrics.xpEarned", "required"),
    ("xp negative", lambda: validate_metrics({"xpEarned": -1}), "metrics.xpEarned", "≥ 0"),
    ("xp nan", lambda: validate_metrics({"xpEarned": math.nan}), "metrics.xpEarned", "finite"),
    ("xp inf", lambda: validate_metrics({"xpEarned": math.inf}), "metrics.xpEarned", "finite"),
    ("xp bool", lambda: validate_metrics({"xpEarned": True}), "metrics.xpEarned", "number"),
    ("xp string", lambda: validate_metrics({"xpEarned": "12"}), "metrics.xpEarned", "number"),
    ("total without correct", lambda: validate_metrics({"xpEarned": 1, "totalQuestions": 3}), "metrics", "correctQuestions"),
    ("correct without total", lambda: validate_metrics({"xpEarned": 1, "correctQuestions": 3}), "metrics", "totalQuestions"),
    ("correct above total", lambda: validate_metrics({"xpEarned": 1, "totalQuestions": 3, "correctQuestions": 4}), "metrics.correctQuestions", "≤ totalQuestions"),
    ("total float", lambda: validate_metrics({"xpEarned": 1, "totalQuestions": 3.0, "correctQuestions": 1}), "metrics.totalQuestions", "integer"),
    ("correct negative", lambda: validate_metrics({"xpEarned": 1, "totalQuestions": 3, "correctQuestions": -1}), "metrics.correctQuestions", "≥ 0"),
    ("mastered bool", lambda: validate_metrics({"xpEarned": 1, "masteredUnits": True}), "metrics.masteredUnits", "integer"),
    ("mastered 1.5", lambda: validate_metrics({"xpEarned": 1, "masteredUnits": 1.5}), "metrics.masteredUnits", "integer"),
    ("pct above 100", lambda: validate_metrics({"xpEarned": 1, "pctComplete": 140}), "metrics.pctComplete", "0 to 100"),
    ("pct below 0", lambda: validate_metrics({"xpEarned": 1, "pctComplete": -0.5}), "metrics.pctComplete", "0 to 100"),
    ("pct nan", lambda: validate_metrics({"xpEarned": 1, "pctComplete": math.nan}), "metrics.pctComplete", "0 to 100"),
    ("pct string", lambda: validate_metrics({"xpEarned": 1, "pctComplete": "40"}), "metrics.pctComplete", "0 to 100"),
    ("ended_at naive datetime", lambda: validate_ended_at(datetime(2025, 1, 15, 10, 20)), "ended_at", "tz-aware"),
    ("ended_at no zone", lambda: validate_ended_at("2025-01-15T10:20:00.000"), "ended_at", "zone"),
    ("ended_at space separator", lambda: validate_ended_at("2025-01-15 10:20:00Z"), "ended_at", "ISO-8601"),
    ("ended_at no seconds", lambda: validate_ended_at("2025-01-15T10:20Z"), "ended_at", "seconds"),
    ("ended_at month 13", lambda: validate_ended_at("2025-13-15T10:20:00Z"), "ended_at", "real date"),
    ("ended_at offset 24h", lambda: validate_ended_at("2025-01-15T10:20:00+24:00"), "ended_at", "real date"),
    ("ended_at epoch number", lambda: validate_ended_at(1736936400), "ended_at", "ISO-8601"),
    ("ended_at unicode digits", lambda: validate_ended_at("２025-01-15T10:20:00Z"), "ended_at", "ISO-8601"),
    ("user number", lambda: validate_user(42), "user", "email"),
    ("user no at", lambda: validate_user("student.example.edu"), "user", "email address"),
    ("user at only", lambda: validate_user("@"), "user", "email address"),
    ("user email with space", lambda: validate_user({"email": "a b@example.edu"}), "user.email", "email address"),
    ("user missing email", lambda: validate_user({"id": "u-1"}), "user.email", "required"),
    ("user unknown key", lambda: validate_user({"email": "a@b.c", "timeback_id": "u"}), "user", "allowed keys: email, id"),
    ("user id blank", lambda: validate_user({"email": "a@b.c", "id": " "}), "user.id", "non-empty"),
    ("user id padded", lambda: validate_user({"email": "a@b.c", "id": " u-1"}), "user.id", "whitespace"),
]


@pytest.mark.parametrize("call, field, allowed", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.bad_input
def test_bad_input_is_refused_naming_the_field(call: Callable[[], Any], field: str, allowed: str) -> None:
    with pytest.raises(ValidationError) as caught:
        call()
    assert isinstance(caught.value, TimebackError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert message.startswith(f"{field}: "), message
    assert caught.value.field == field
    assert allowed in message, message


def test_enough_bad_input_cases() -> None:
    assert len(BAD_INPUTS) >= 20


def test_activity_id_and_name_are_kept_as_given() -> None:
    assert validate_activity_id("week 3/notebook") == "week 3/notebook"
    assert validate_activity_id(" padded ") == " padded "
    assert validate_name("Wöche 3: Funktionen ✓") == "Wöche 3: Funktionen ✓"
    assert validate_activity_id("x", field="activity.id") == "x"
    with pytest.raises(ValidationError, match=r"^activity\.id: "):
        validate_activity_id("", field="activity.id")


@pytest.mark.parametrize("subject", REQUEST_SUBJECTS)
def test_grade_selector_for_every_request_subject(subject: str) -> None:
    assert validate_course_selector({"subject": subject, "grade": 0}) == {"subject": subject, "grade": 0}
    assert validate_course_selector({"grade": 12, "subject": subject}) == {"subject": subject, "grade": 12}


def test_code_selector_is_trimmed_and_the_input_left_alone() -> None:
    given = {"code": "  DS-101 "}
    assert validate_course_selector(given) == {"code": "DS-101"}
    assert given == {"code": "  DS-101 "}


def test_subject_lists() -> None:
    assert len(REQUEST_SUBJECTS) == 6 and len(CALIPER_SUBJECTS) == 10
    assert set(REQUEST_SUBJECTS) <= set(CALIPER_SUBJECTS)


def test_numpy_like_integers_are_accepted_as_plain_ints() -> None:
    class NumpyLikeInt:  # registers as numbers.Integral, like numpy.int64
        def __init__(self, v: int) -> None:
            self.v = v

        def __int__(self) -> int:
            return self.v

        def __index__(self) -> int:
            return self.v

    import numbers

    numbers.Integral.register(NumpyLikeInt)
    assert validate_course_selector({"subject": "Math", "grade": NumpyLikeInt(3)}) == {"subject": "Math", "grade": 3}


def test_run_id_is_lower_cased_and_version_digit_not_checked() -> None:
    assert validate_run_id("3F2504E0-4F89-41D3-9A0C-0305E82C3301") == "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    assert validate_run_id("00000000-0000-0000-0000-000000000000") == "00000000-0000-0000-0000-000000000000"


def test_interval_returns_floats() -> None:
    assert validate_interval(15, 600) == (15.0, 600.0)
    assert validate_interval(0.25, 0.25) == (0.25, 0.25)
    assert all(type(x) is float for x in validate_interval(15, 600))


def test_metrics_canonical_order_and_none_as_absent() -> None:
    given = {"pctComplete": 40, "masteredUnits": 1, "correctQuestions": 8, "totalQuestions": 10, "xpEarned": 12}
    result = validate_metrics(given)
    assert list(result) == ["xpEarned", "totalQuestions", "correctQuestions", "masteredUnits", "pctComplete"]
    assert result is not given
    assert validate_metrics({"xpEarned": 0, "totalQuestions": None, "correctQuestions": None, "pctComplete": None}) == {
        "xpEarned": 0
    }


def test_metrics_keep_ints_and_floats_and_accept_bounds() -> None:
    result = validate_metrics({"xpEarned": 12.5, "totalQuestions": 0, "correctQuestions": 0, "pctComplete": 100})
    assert result == {"xpEarned": 12.5, "totalQuestions": 0, "correctQuestions": 0, "pctComplete": 100}
    assert type(result["pctComplete"]) is int and type(validate_metrics({"xpEarned": 3})["xpEarned"]) is int
    assert validate_metrics({"xpEarned": 0.0, "pctComplete": 0.0}) == {"xpEarned": 0.0, "pctComplete": 0.0}
    # Exotic reals come out as JSON-safe floats.
    assert validate_metrics({"xpEarned": Fraction(1, 2)}) == {"xpEarned": 0.5}
    assert type(validate_metrics({"xpEarned": Fraction(1, 2)})["xpEarned"]) is float
    assert validate_metrics(GOOD_METRICS) == GOOD_METRICS


def test_ended_at_strings_are_kept_exactly() -> None:
    for text in (
        "2025-01-15T10:20:00Z",
        "2025-01-15T10:20:00.000Z",
        "2025-01-15T10:20:00.123456789Z",
        "2025-01-15T12:20:00+02:00",
        "2025-01-15T05:20:00.5-05:00",
    ):
        assert validate_ended_at(text) == text


def test_ended_at_datetimes_become_utc_with_milliseconds() -> None:
    berlin = timezone(timedelta(hours=2))
    assert validate_ended_at(datetime(2025, 1, 15, 12, 20, 0, 123999, tzinfo=berlin)) == "2025-01-15T10:20:00.123Z"
    assert validate_ended_at(datetime(2025, 1, 15, 10, 20, tzinfo=timezone.utc)) == "2025-01-15T10:20:00.000Z"


def test_iso_to_epoch_ms_matches_the_dedup_key_rule() -> None:
    base = iso_to_epoch_ms("2025-01-15T10:00:00Z")
    assert base == 1736935200000
    assert iso_to_epoch_ms("2025-01-15T10:00:00.000+00:00") == base
    assert iso_to_epoch_ms("2025-01-15T12:00:00+02:00") == base
    assert iso_to_epoch_ms("2025-01-15T10:00:00.9999Z") == base + 999  # truncated, not rounded
    assert iso_to_epoch_ms("1969-12-31T23:59:59.5Z") == -500


def test_user_forms() -> None:
    assert validate_user(None) is None
    assert validate_user("student@example.edu") == {"email": "student@example.edu", "id": None}
    assert validate_user({"email": "s@example.edu"}) == {"email": "s@example.edu", "id": None}
    assert validate_user({"email": "s@example.edu", "id": "u-123", }) == {"email": "s@example.edu", "id": "u-123"}


def test_a_pct_complete_that_looks_like_a_fraction_is_kept_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "_fraction_warned", False)
    with pytest.warns(UserWarning, match=r"pctComplete is a percentage 0–100; did you mean 75\?"):
        assert validate_metrics({"xpEarned": 1, "pctComplete": 0.75})["pctComplete"] == 0.75
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        assert validate_metrics({"xpEarned": 1, "pctComplete": 1})["pctComplete"] == 1
        # Not fractions: 0, and anything above 1.
        assert validate_metrics({"xpEarned": 1, "pctComplete": 0})["pctComplete"] == 0
    monkeypatch.setattr(validation, "_fraction_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pct in (0, 1.5, 40, 100):
            validate_metrics({"xpEarned": 1, "pctComplete": pct})
    with pytest.warns(UserWarning, match=r"did you mean 100\?"):
        validate_metrics({"xpEarned": 1, "pctComplete": 1})


@pytest.mark.bad_input
@pytest.mark.parametrize("key", ["xpEarned", "totalQuestions", "correctQuestions", "masteredUnits", "pctComplete"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 2**53, math.nan, math.inf, -1e-300, 1e300], ids=repr)
def test_a_huge_or_non_finite_metric_is_refused_naming_it(key: str, value) -> None:
    metrics = {"xpEarned": 1, "totalQuestions": 10**9, "correctQuestions": 0}
    metrics[key] = value
    with pytest.raises(ValidationError, match=rf"^metrics\.{key}: ") as caught:
        validate_metrics(metrics)
    assert caught.value.field == f"metrics.{key}"


def test_metrics_up_to_the_largest_exact_json_integer_are_kept() -> None:
    top = 2**53 - 1
    assert validate_metrics({"xpEarned": top, "totalQuestions": top, "correctQuestions": top, "masteredUnits": top}) == {
        "xpEarned": top, "totalQuestions": top, "correctQuestions": top, "masteredUnits": top,
    }
    assert validate_metrics({"xpEarned": 5e-324})["xpEarned"] == 5e-324  # tiny but a real amount
