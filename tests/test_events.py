"""Caliper envelopes: the reference's examples field for field, the schema, object.id, ids."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tests.schema import reference_example, validate, validate_envelope

from timeback_nb.config import Settings, load_config
from timeback_nb.errors import ConfigError, ValidationError
from timeback_nb.events import (
    CALIPER_CONTEXT,
    Target,
    activity_url,
    completion_envelope,
    dumps,
    event_id,
    time_spent_envelope,
)
from timeback_nb.records import ActivityRef, Completion, TimeWindow
from timeback_nb.validation import validate_course_selector, validate_metrics, validate_run_id

RUN_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
SEND_TIME = "2025-01-15T10:00:15.482Z"
EVENT_KEYS = ["@context", "id", "type", "action", "actor", "object", "eventTime", "profile", "generated", "session", "extensions"]


def _write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "timeback.config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _target(tmp_path: Path, *, drop_staging_override: bool, selector: dict[str, Any]) -> Target:
    """The §6.9 config resolved for staging, the reference's student u-123."""
    config = copy.deepcopy(reference_example('"courses"'))
    if drop_staging_override:
        del config["courses"][0]["overrides"]
    resolved = load_config(_write_config(tmp_path, config)).resolve(selector, "staging")
    settings = Settings.from_env({"TIMEBACK_ENV": "staging"})
    return Target.from_course(resolved, settings, "student@example.edu", "u-123")


def _window_from_heartbeat(body: dict[str, Any]) -> TimeWindow:
    """What the Activity would hand on for the reference's heartbeat body."""
    activity = ActivityRef(body["id"], body["name"], validate_course_selector(body["course"]))
    return TimeWindow(
        activity=activity,
        run_id=validate_run_id(body["runId"]),
        started_at=body["startedAt"],
        ended_at=body["endedAt"],
        elapsed_ms=body["elapsedMs"],
        paused_ms=body["pausedMs"],
    )


def _completion_from_submit(body: dict[str, Any]) -> Completion:
    activity = ActivityRef(body["id"], body["name"], validate_course_selector(body["course"]))
    metrics = validate_metrics({**body["metrics"], "pctComplete": body["pctComplete"]})
    return Completion(activity=activity, run_id=body["runId"], ended_at=body["endedAt"], metrics=metrics)


def _without_ids(event: dict[str, Any]) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event.pop("id")
    event["generated"].pop("id")
    return event


def _assert_same_as_reference(built: dict[str, Any], reference: dict[str, Any]) -> None:
    """Equal field for field and key for key in the SDK's order (ids aside)."""
    assert _without_ids(built) == _without_ids(reference)
    assert json.dumps(_without_ids(built)) == json.dumps(_without_ids(reference))  # same key order
    assert built["id"].startswith("urn:uuid:") and built["generated"]["id"].startswith("urn:uuid:")
    assert built["id"] != built["generated"]["id"]


# --- golden: protocol reference §3 and §4 ------------------------------------------------------


def test_time_spent_event_reproduces_reference_example(tmp_path: Path) -> None:
    heartbeat = reference_example('"elapsedMs": 13500')
    target = _target(tmp_path, drop_staging_override=True, selector=heartbeat["course"])
    envelope = time_spent_envelope(_window_from_heartbeat(heartbeat), target, send_time=SEND_TIME)

    assert list(envelope) == ["sensor", "sendTime", "dataVersion", "data"]
    assert envelope["sensor"] == "https://notebooks.example.org"
    assert envelope["sendTime"] == SEND_TIME
    assert envelope["dataVersion"] == CALIPER_CONTEXT
    assert len(envelope["data"]) == 1
    event = envelope["data"][0]
    assert list(event) == EVENT_KEYS
    _assert_same_as_reference(event, reference_example('"TimeSpentEvent", "action"'))
    validate_envelope(envelope)


def test_completion_event_reproduces_reference_example(tmp_path: Path) -> None:
    submit = reference_example('"pctComplete": 40, "process"')
    target = _target(tmp_path, drop_staging_override=True, selector=submit["course"])
    envelope = completion_envelope(_completion_from_submit(submit), target, attempt=2, send_time=SEND_TIME)

    event = envelope["data"][0]
    assert list(event) == EVENT_KEYS
    assert list(event["generated"]) == ["id", "type", "items", "attempt", "extensions"]
    _assert_same_as_reference(event, reference_example('"ActivityEvent"'))
    validate_envelope(envelope)


def test_with_the_staging_override_the_staging_sensor_wins(tmp_path: Path) -> None:
    # The §6.9 config as printed overrides the staging sensor; §6.6 says that override wins, so
    # on staging object.id and the envelope sensor use it while every other field is unchanged.
    heartbeat = reference_example('"elapsedMs": 13500')
    target = _target(tmp_path, drop_staging_override=False, selector=heartbeat["course"])
    envelope = time_spent_envelope(_window_from_heartbeat(heartbeat), target, send_time=SEND_TIME)
    expected = copy.deepcopy(reference_example('"TimeSpentEvent", "action"'))
    expected["object"]["id"] = "https://staging.notebooks.example.org/activities/Math/g8/week-3"
    assert envelope["sensor"] == "https://staging.notebooks.example.org"
    _assert_same_as_reference(envelope["data"][0], expected)


# --- the schema validator and the reference's own examples -----------------------------------


def _wrap(event: dict[str, Any]) -> dict[str, Any]:
    return {"sensor": "https://notebooks.example.org", "sendTime": SEND_TIME, "dataVersion": CALIPER_CONTEXT, "data": [event]}


@pytest.mark.parametrize("needle", ['"TimeSpentEvent", "action"', '"ActivityEvent"'])
def test_reference_examples_pass_the_openapi_schema(needle: str) -> None:
    validate_envelope(_wrap(reference_example(needle)))


@pytest.mark.parametrize(
    "path, value",
    [
        (("type",), "TimeSpent"),
        (("profile",), "GeneralProfile"),
        (("actor", "type"), "Person"),
        (("object", "subject"), "Maths"),
        (("generated", "items", 0, "type"), "idle"),
        (("generated", "items", 0, "value"), "13.5"),
        (("eventTime",), "2025-01-15 10:00:15"),
        (("id",), "9d7fcacb-4bc3-4ac6-8928-71807c7e2ca7"),
        (("object", "id"), "not a url"),
    ],
)
def test_the_schema_check_can_fail(path: tuple[Any, ...], value: Any) -> None:
    event = copy.deepcopy(reference_example('"TimeSpentEvent", "action"'))
    holder = event
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_envelope(_wrap(event))


def test_the_schema_rejects_envelope_faults() -> None:
    good = _wrap(reference_example('"ActivityEvent"'))
    for key, value in (("dataVersion", "caliper"), ("data", []), ("sendTime", "yesterday")):
        with pytest.raises(jsonschema.ValidationError):
            validate({**good, key: value}, "Envelope")
    with pytest.raises(jsonschema.ValidationError):
        validate({k: v for k, v in good.items() if k != "sensor"}, "Envelope")


def test_all_ten_caliper_subjects_pass_the_widened_schema(tmp_path: Path) -> None:
    from timeback_nb.validation import CALIPER_SUBJECTS

    event = reference_example('"TimeSpentEvent", "action"')
    for subject in CALIPER_SUBJECTS:
        validate_envelope(_wrap({**event, "object": {**event["object"], "subject": subject}}))


# --- object.id (protocol §2.3) ------------------------------------------------------------------

MATH8 = {"subject": "Math", "grade": 8}


@pytest.mark.parametrize(
    "sensor, selector, slug, expected",
    [
        ("https://notebooks.example.org", MATH8, "week-3", "https://notebooks.example.org/activities/Math/g8/week-3"),
        ("https://ds.example.org/sensor/", {"code": "DS-101"}, "intro", "https://ds.example.org/sensor/activities/DS-101/intro"),
        ("https://n.example.org", MATH8, "week 3/notebook", "https://n.example.org/activities/Math/g8/week%203%2Fnotebook"),
        ("https://s.example", {"subject": "Social Studies", "grade": 5}, "x", "https://s.example/activities/Social Studies/g5/x"),
        ("https://n.example.org", MATH8, "Übung ä", "https://n.example.org/activities/Math/g8/%C3%9Cbung%20%C3%A4"),
        ("https://n.example.org", MATH8, "a_b.c-d~e", "https://n.example.org/activities/Math/g8/a_b.c-d~e"),
        ("https://n.example.org", MATH8, "a?b#c&d=e+f%g:h@i", "https://n.example.org/activities/Math/g8/a%3Fb%23c%26d%3De%2Bf%25g%3Ah%40i"),
        ("https://n.example.org/base///", MATH8, "x", "https://n.example.org/base/activities/Math/g8/x"),
        ("https://n.example.org/s?tenant=a&b=1", MATH8, "x", "https://n.example.org/s/activities/Math/g8/x?tenant=a&b=1"),
        ("https://n.example.org/?q=1#frag", MATH8, "x", "https://n.example.org/activities/Math/g8/x?q=1#frag"),
        ("https://n.example.org:8443", {"code": "CS 101/A"}, "x", "https://n.example.org:8443/activities/CS 101/A/x"),
        ("ftp://x", {"subject": "Other", "grade": 0}, "x", "ftp://x/activities/Other/g0/x"),
    ],
)
def test_activity_url(sensor: str, selector: dict[str, Any], slug: str, expected: str) -> None:
    assert activity_url(sensor, selector, slug) == expected


@pytest.mark.parametrize("sensor", ["not a url", "notebooks.example.org", "/relative/path", "https://"])
@pytest.mark.bad_input
def test_activity_url_refuses_a_sensor_without_scheme_and_host(sensor: str) -> None:
    with pytest.raises(ConfigError, match=r"^sensor: .*absolute URL"):
        activity_url(sensor, MATH8, "x")


# --- building rules ------------------------------------------------------------------------------

TARGET = Target(
    app_name="Course Notebooks",
    sensor="https://notebooks.example.org",
    subject="Math",
    course_id="c-stg-1",
    course_name="Math G8",
    oneroster_base="https://api.staging.alpha-1edtech.ai",
    user_email="student@example.edu",
    user_id="u-123",
)
ACTIVITY = ActivityRef("week-3", "Week 3", MATH8)


def _window(started: str = "2025-01-15T10:00:00.000Z", elapsed: int = 15000, paused: int = 0, run_id: str = RUN_ID) -> TimeWindow:
    return TimeWindow(ACTIVITY, run_id, started, "2025-01-15T10:00:15.000Z", elapsed, paused)


def _built(window: TimeWindow) -> dict[str, Any]:
    envelope = time_spent_envelope(window, TARGET, send_time=SEND_TIME)
    validate_envelope(envelope)
    return envelope["data"][0]


def test_active_first_inactive_only_when_paused_seconds_unrounded() -> None:
    assert _built(_window(elapsed=15000, paused=0))["generated"]["items"] == [{"type": "active", "value": 15.0}]
    assert _built(_window(elapsed=0, paused=15000))["generated"]["items"] == [
        {"type": "active", "value": 0.0},
        {"type": "inactive", "value": 15.0},
    ]
    items = _built(_window(elapsed=1234, paused=1))["generated"]["items"]
    assert items == [{"type": "active", "value": 1.234}, {"type": "inactive", "value": 0.001}]
    assert all(type(item["value"]) is float for item in items)


def test_session_and_course_extension() -> None:
    event = _built(_window())
    assert event["session"] == f"urn:uuid:{RUN_ID}"
    assert event["extensions"] == {"courseId": "c-stg-1"}
    assert event["object"]["process"] is True
    assert event["actor"]["id"] == "https://api.staging.alpha-1edtech.ai/ims/oneroster/rostering/v1p2/users/u-123"


def test_window_ids_are_deterministic_per_run_and_start() -> None:
    first = _built(_window())
    assert first == _built(_window())  # rebuilt: identical, ids included
    # The same instant spelled differently is the same window (the SDK's de-dup key).
    assert _built(_window(started="2025-01-15T11:00:00+01:00"))["id"] == first["id"]
    # Window contents do not enter the id: a replayed window keeps it.
    assert _built(_window(elapsed=14000, paused=1000))["id"] == first["id"]
    later = _built(_window(started="2025-01-15T10:00:00.001Z"))
    other_run = _built(_window(run_id="3f2504e0-4f89-41d3-9a0c-0305e82c3302"))
    ids = {first["id"], later["id"], other_run["id"], first["generated"]["id"], later["generated"]["id"]}
    assert len(ids) == 5
    for urn in ids:
        assert uuid.UUID(urn.removeprefix("urn:uuid:")).version == 5


def _completion(metrics: dict[str, Any], run_id: str | None = RUN_ID, ended_at: str = "2025-01-15T10:20:00.000Z") -> Completion:
    return Completion(ACTIVITY, run_id, ended_at, validate_metrics(metrics))


def _completed(completion: Completion, attempt: int = 1, target: Target = TARGET) -> dict[str, Any]:
    envelope = completion_envelope(completion, target, attempt=attempt, send_time=SEND_TIME)
    validate_envelope(envelope)
    return envelope["data"][0]


def test_completion_metric_order_and_presence() -> None:
    event = _completed(_completion({"masteredUnits": 2, "xpEarned": 7.5}))
    assert event["generated"]["items"] == [{"type": "xpEarned", "value": 7.5}, {"type": "masteredUnits", "value": 2}]
    assert "extensions" not in event["generated"]
    assert event["generated"]["attempt"] == 1
    event = _completed(_completion({"xpEarned": 0, "pctComplete": 0}), attempt=3)
    assert event["generated"]["items"] == [{"type": "xpEarned", "value": 0}]
    assert event["generated"]["extensions"] == {"pctCompleteApp": 0}
    assert event["generated"]["attempt"] == 3
    assert (event["type"], event["action"]) == ("ActivityEvent", "Completed")


def test_completion_without_run_has_no_session_and_a_per_student_id() -> None:
    event = _completed(_completion({"xpEarned": 1}, run_id=None))
    assert "session" not in event
    assert list(event) == [k for k in EVENT_KEYS if k != "session"]
    again = _completed(_completion({"xpEarned": 1}, run_id=None))
    assert again["id"] == event["id"]
    # A batch of record() calls for several students sharing one ended_at stays distinct.
    other_student = Target(**{**TARGET.__dict__, "user_id": "u-456", "user_email": "b@example.edu"})
    assert _completed(_completion({"xpEarned": 1}, run_id=None), target=other_student)["id"] != event["id"]


def test_completion_id_follows_run_and_exact_ended_at() -> None:
    base = _completed(_completion({"xpEarned": 1}))
    assert _completed(_completion({"xpEarned": 5}), attempt=2)["id"] == base["id"]  # a resend of the same end
    assert _completed(_completion({"xpEarned": 1}, ended_at="2025-01-15T10:20:00Z"))["id"] != base["id"]
    assert base["id"] != base["generated"]["id"]
    window = _built(_window())
    assert base["id"] != window["id"]


@pytest.mark.parametrize("attempt", [0, -1, True, 1.0, "1", None])
@pytest.mark.bad_input
def test_attempt_must_be_a_positive_integer(attempt: Any) -> None:
    with pytest.raises(ValidationError, match=r"^attempt: .*≥ 1"):
        completion_envelope(_completion({"xpEarned": 1}), TARGET, attempt=attempt, send_time=SEND_TIME)


def test_envelope_sensor_is_trimmed_but_object_id_uses_the_configured_value() -> None:
    padded = Target(**{**TARGET.__dict__, "sensor": "https://notebooks.example.org "})
    envelope = time_spent_envelope(_window(), padded, send_time=SEND_TIME)
    assert envelope["sensor"] == "https://notebooks.example.org"


def test_dumps_is_compact_utf8_and_round_trips() -> None:
    activity = ActivityRef("übung-1", "Übung 1 — Brüche ✓", MATH8)
    window = TimeWindow(activity, RUN_ID, "2025-01-15T10:00:00.000Z", "2025-01-15T10:00:15.000Z", 15000, 0)
    envelope = time_spent_envelope(window, TARGET, send_time=SEND_TIME)
    text = dumps(envelope)
    assert json.loads(text) == envelope
    assert "Übung 1 — Brüche ✓" in text and ": " not in text and ", " not in text.replace("Übung 1 — Brüche ✓", "")
    assert "%C3%BCbung-1" in envelope["data"][0]["object"]["id"]
    text.encode("utf-8")
    assert dumps(envelope) == text  # deterministic
    assert event_id(envelope) == envelope["data"][0]["id"]


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps({"value": float("nan")})


def test_target_from_course_uses_the_settings_oneroster_base(tmp_path: Path) -> None:
    config = reference_example('"courses"')
    resolved = load_config(_write_config(tmp_path, config)).resolve({"code": "DS-101"}, "staging")
    settings = Settings.from_env({"TIMEBACK_ONEROSTER_URL": "https://roster.example.org/"})
    target = Target.from_course(resolved, settings, "s@example.edu", "u-9")
    assert target == Target(
        app_name="Course Notebooks",
        sensor="https://notebooks.example.org",
        subject="Other",
        course_id="c-stg-2",
        course_name="DS-101",
        oneroster_base="https://roster.example.org",
        user_email="s@example.edu",
        user_id="u-9",
    )
    completion = Completion(ActivityRef("intro", "Intro", resolved.selector), None, "2025-01-15T10:20:00Z", {"xpEarned": 3})
    event = _completed(completion, target=target)
    assert event["object"]["id"] == "https://notebooks.example.org/activities/DS-101/intro"
    assert event["object"]["course"]["id"] == "https://roster.example.org/ims/oneroster/rostering/v1p2/courses/c-stg-2"


# --- properties ------------------------------------------------------------------------------------

_SLUGS = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)


@given(slug=_SLUGS, query=st.sampled_from(["", "?a=1", "?a=1#f", "#f"]), trailing=st.sampled_from(["", "/", "//"]))
def test_slug_round_trips_as_one_path_segment(slug: str, query: str, trailing: str) -> None:
    url = activity_url(f"https://n.example.org/base{trailing}{query}", MATH8, slug)
    parts = urlsplit(url)
    head, _, last = parts.path.rpartition("/")
    assert head == "/base/activities/Math/g8"
    assert unquote(last) == slug
    assert all(ch.isascii() and (ch.isalnum() or ch in "_.-~%") for ch in last)
    assert (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "") == query


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    elapsed=st.integers(0, 86_400_000),
    paused=st.integers(0, 86_400_000),
    started_ms=st.integers(0, 4_000_000_000_000),
    slug=_SLUGS,
    name=_SLUGS,
)
def test_every_window_envelope_is_valid_and_stable(elapsed: int, paused: int, started_ms: int, slug: str, name: str) -> None:
    from timeback_nb.clock import iso_utc_ms

    activity = ActivityRef(slug, name, MATH8)
    window = TimeWindow(activity, RUN_ID, iso_utc_ms(started_ms), iso_utc_ms(started_ms + elapsed + paused), elapsed, paused)
    envelope = time_spent_envelope(window, TARGET, send_time=SEND_TIME)
    validate_envelope(envelope)
    items = envelope["data"][0]["generated"]["items"]
    assert items[0] == {"type": "active", "value": elapsed / 1000}
    assert len(items) == (2 if paused else 1)
    assert json.loads(dumps(envelope)) == envelope
    assert dumps(time_spent_envelope(window, TARGET, send_time=SEND_TIME)) == dumps(envelope)
