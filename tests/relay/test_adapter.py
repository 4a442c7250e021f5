"""Every validation error of the SDK's adapter protocol, with its status, code and field
(protocol reference §5.3-§5.7), as the relay answers it; nothing is committed for any of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from timeback_nb.config import CourseConfig, TimebackConfig
from timeback_nb.relay.adapter import AdapterError, CourseResolver

from .harness import NOW, InProcessRelay, heartbeat_body, new_run, submit_body

pytestmark = pytest.mark.bad_input

START = NOW - 60_000


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessRelay]:
    relay = InProcessRelay(tmp_path_factory.mktemp("relay"))
    yield relay
    relay.close()


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def _heartbeat(**changes: Any) -> dict[str, Any]:
    return heartbeat_body(new_run(), START, **changes)


# (case, body, field, details.message)
HEARTBEAT_FIELDS = [
    ("id missing", lambda: _without(_heartbeat(), "id"), "id", "Required"),
    ("id blank", lambda: _heartbeat(id="   "), "id", "Required"),
    ("id not a string", lambda: _heartbeat(id=7), "id", "Expected string"),
    ("name missing", lambda: _without(_heartbeat(), "name"), "name", "Required"),
    ("id checked before name", lambda: _without(_without(_heartbeat(), "name"), "id"), "id", "Required"),
    ("course missing", lambda: _without(_heartbeat(), "course"), "course", "Required"),
    ("course empty", lambda: _heartbeat(course={}), "course", "Required"),
    ("course not an object", lambda: _heartbeat(course="Math"), "course", "Expected object"),
    ("code blank", lambda: _heartbeat(course={"code": "  "}), "course.code", "Expected non-empty string"),
    ("code not a string", lambda: _heartbeat(course={"code": 101}), "course.code", "Expected non-empty string"),
    ("subject missing", lambda: _heartbeat(course={"grade": 8}), "course.subject", "Required"),
    ("grade missing", lambda: _heartbeat(course={"subject": "Math"}), "course", "Either code, or subject and grade, is required"),
    ("grade null", lambda: _heartbeat(course={"subject": "Math", "grade": None}), "course", "Either code, or subject and grade, is required"),
    ("grade a float", lambda: _heartbeat(course={"subject": "Math", "grade": 8.0}), "course.grade", "Expected integer"),
    ("grade a boolean", lambda: _heartbeat(course={"subject": "Math", "grade": True}), "course.grade", "Expected integer"),
    ("subject not allowed", lambda: _heartbeat(course={"subject": "Art", "grade": 8}), "course.subject",
     "Expected one of: Math, Reading, Science, Social Studies, Writing, Other"),
    ("grade out of range", lambda: _heartbeat(course={"subject": "Math", "grade": 13}), "course.grade", "Number must be between 0 and 12"),
    ("runId missing", lambda: _without(_heartbeat(), "runId"), "runId", "Required"),
    ("runId not a UUID", lambda: _heartbeat(runId="run-1"), "runId", "Expected UUID"),
    ("startedAt missing", lambda: _without(_heartbeat(), "startedAt"), "startedAt", "Required"),
    ("startedAt with a space", lambda: _heartbeat(startedAt="2025-01-15 09:59:00Z"), "startedAt", "Invalid datetime"),
    ("startedAt without a zone", lambda: _heartbeat(startedAt="2025-01-15T09:59:00"), "startedAt", "Invalid datetime"),
    ("startedAt not a date", lambda: _heartbeat(startedAt="2025-13-15T09:59:00Z"), "startedAt", "Invalid datetime"),
    ("endedAt missing", lambda: _without(_heartbeat(), "endedAt"), "endedAt", "Required"),
    ("endedAt without seconds", lambda: _heartbeat(endedAt="2025-01-15T09:59Z"), "endedAt", "Invalid datetime"),
    ("elapsedMs missing", lambda: _without(_heartbeat(), "elapsedMs"), "elapsedMs", "Required"),
    ("elapsedMs a float", lambda: _heartbeat(elapsedMs=13500.0), "elapsedMs", "Expected nonnegative integer"),
    ("elapsedMs negative", lambda: _heartbeat(elapsedMs=-1), "elapsedMs", "Expected nonnegative integer"),
    ("elapsedMs a boolean", lambda: _heartbeat(elapsedMs=True), "elapsedMs", "Expected nonnegative integer"),
    ("pausedMs missing", lambda: _without(_heartbeat(), "pausedMs"), "pausedMs", "Required"),
    ("pausedMs fractional", lambda: _heartbeat(pausedMs=1.5), "pausedMs", "Expected nonnegative integer"),
]


@pytest.mark.parametrize(("case", "make", "field", "message"), HEARTBEAT_FIELDS, ids=[c[0] for c in HEARTBEAT_FIELDS])
def test_heartbeat_field_errors(relay: InProcessRelay, case: str, make: Any, field: str, message: str) -> None:
    before = len(relay.outbox())
    status, reply = relay.post("heartbeat", make())
    assert (status, reply) == (
        400, {"error": {"code": "INVALID_PAYLOAD", "message": "Invalid payload", "details": {"field": field, "message": message}}}
    )
    assert len(relay.outbox()) == before


def _submit(**changes: Any) -> dict[str, Any]:
    return submit_body(new_run(), START, **changes)


def _metrics(**changes: Any) -> dict[str, Any]:
    metrics = {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8}
    metrics.update(changes)
    return _submit(metrics={k: v for k, v in metrics.items() if v is not ...})


SUBMIT_FIELDS = [
    ("common fields first", lambda: _without(_submit(), "runId"), "runId", "Required"),
    ("endedAt missing", lambda: _without(_submit(), "endedAt"), "endedAt", "Required"),
    ("endedAt invalid", lambda: _submit(endedAt="yesterday"), "endedAt", "Invalid datetime"),
    ("process not a boolean", lambda: _submit(process="yes"), "process", "Expected boolean"),
    ("pctComplete a boolean", lambda: _submit(pctComplete=True), "pctComplete", "Expected number"),
    ("pctComplete a string", lambda: _submit(pctComplete="40"), "pctComplete", "Expected number"),
    ("metrics missing", lambda: _without(_submit(), "metrics"), "metrics", "Required"),
    ("metrics not an object", lambda: _submit(metrics=[12]), "metrics", "Expected object"),
    ("xpEarned missing", lambda: _metrics(xpEarned=...), "metrics.xpEarned", "Required"),
    ("xpEarned a string", lambda: _metrics(xpEarned="12"), "metrics.xpEarned", "Expected number"),
    ("xpEarned a boolean", lambda: _metrics(xpEarned=False), "metrics.xpEarned", "Expected number"),
    ("totalQuestions negative", lambda: _metrics(totalQuestions=-1), "metrics.totalQuestions", "Expected nonnegative integer"),
    ("correctQuestions fractional", lambda: _metrics(correctQuestions=7.5), "metrics.correctQuestions", "Expected nonnegative integer"),
    ("masteredUnits a float", lambda: _metrics(masteredUnits=1.0), "metrics.masteredUnits", "Expected nonnegative integer"),
    ("questions not paired", lambda: _metrics(correctQuestions=...), "metrics",
     "totalQuestions and correctQuestions must be provided together"),
    ("more correct than total", lambda: _metrics(correctQuestions=11), "metrics.correctQuestions",
     "correctQuestions cannot exceed totalQuestions"),
]


@pytest.mark.parametrize(("case", "make", "field", "message"), SUBMIT_FIELDS, ids=[c[0] for c in SUBMIT_FIELDS])
def test_submit_field_errors(relay: InProcessRelay, case: str, make: Any, field: str, message: str) -> None:
    before = len(relay.outbox())
    status, reply = relay.post("submit", make())
    assert status == 400
    assert reply["error"]["code"] == "INVALID_PAYLOAD"
    assert reply["error"]["details"] == {"field": field, "message": message}
    assert len(relay.outbox()) == before


def test_malformed_json_and_non_object_bodies(relay: InProcessRelay) -> None:
    status, reply = relay.post("heartbeat", None, raw=b'{"id": ')
    assert status == 400 and reply["error"]["code"] == "INVALID_PAYLOAD"
    assert reply["error"]["message"].startswith("Malformed JSON") and "details" not in reply["error"]
    status, reply = relay.post("submit", None, raw=b'{"metrics": {"xpEarned": NaN}}')
    assert status == 400 and reply["error"]["message"].startswith("Malformed JSON")
    status, reply = relay.post("heartbeat", [1, 2])
    assert status == 400 and reply["error"]["code"] == "INVALID_PAYLOAD"


@pytest.mark.parametrize("authorization", [None, "", "tok-alice", "Basic dG9rLWFsaWNl", "token tok-nobody", "Bearer "])
def test_without_a_valid_token_401_before_the_body_is_read(relay: InProcessRelay, authorization: str | None) -> None:
    status, reply = relay.call(relay.relay.heartbeat(authorization, b"not even json"))
    assert (status, reply) == (401, {"error": {"code": "UNAUTHORIZED", "message": "Unauthorized"}})


def test_both_token_schemes_are_accepted(relay: InProcessRelay) -> None:
    for i, header in enumerate(("token tok-alice", "Bearer tok-alice", "bearer tok-alice")):
        body = heartbeat_body(new_run(), START - 3_600_000 + i * 15_000)
        status, _ = relay.call(relay.relay.heartbeat(header, json.dumps(body).encode()))
        assert status == 204, header


def test_unknown_course_and_unsynced_course(relay: InProcessRelay) -> None:
    status, reply = relay.post("heartbeat", _heartbeat(course={"subject": "Science", "grade": 8}))
    assert status == 400 and reply["error"]["code"] == "UNKNOWN_COURSE" and "Science" in reply["error"]["message"]
    # DS-101 has only a production id; the relay runs on staging.
    status, reply = relay.post("heartbeat", _heartbeat(course={"code": "DS-101"}))
    assert status == 503 and reply["error"]["code"] == "MISSING_SYNCED_COURSE_ID"
    status, reply = relay.post("submit", _submit(course={"code": " DS-101 "}))
    assert status == 503 and reply["error"]["code"] == "MISSING_SYNCED_COURSE_ID"


def _course(index: int, **fields: Any) -> CourseConfig:
    base = dict(subject="Math", grade=8, course_code=None, level=None, ids={"staging": "c"}, sensor=None,
                launch_url=None, metadata={}, overrides={})
    base.update(fields)
    return CourseConfig(index=index, **base)


def test_ambiguous_selector_and_missing_sensor_codes() -> None:
    """A config the loader would refuse at start, resolved anyway: the SDK's 500 codes."""
    twice = TimebackConfig(Path("x.json"), "App", "https://s.example", None, (_course(0), _course(1)))
    with pytest.raises(AdapterError) as caught:
        CourseResolver(twice, "staging").resolve({"subject": "Math", "grade": 8})
    assert (caught.value.status, caught.value.code) == (500, "AMBIGUOUS_COURSE_SELECTOR")
    no_sensor = TimebackConfig(Path("x.json"), "App", None, None, (_course(0),))
    with pytest.raises(AdapterError) as caught:
        CourseResolver(no_sensor, "staging").resolve({"subject": "Math", "grade": 8})
    assert (caught.value.status, caught.value.code) == (500, "MISSING_SENSOR")
    # The SDK answers a config subject that is not a Caliper subject with 502 on heartbeat.
    art = TimebackConfig(Path("x.json"), "App", "https://s.example", None, (_course(0, subject="Art", grade=None, course_code="ART"),))
    with pytest.raises(AdapterError) as caught:
        CourseResolver(art, "staging").resolve({"code": "ART"})
    assert (caught.value.status, caught.value.code) == (502, "INTERNAL_ERROR")


def test_submit_accepts_what_the_sdk_accepts(relay: InProcessRelay) -> None:
    """Negative XP (a deduction), null counts, unknown keys; pctComplete is clamped on the wire."""
    run = new_run()
    body = submit_body(run, START - 7_200_000, metrics={"xpEarned": -2, "totalQuestions": None, "correctQuestions": None, "extra": 1},
                       pctComplete=140, process=False, elapsedMs=99)
    status, reply = relay.post("submit", body)
    assert (status, reply) == (204, None)
    event = relay.outbox()[-1]["data"][0]
    assert event["type"] == "ActivityEvent" and event["session"] == f"urn:uuid:{run}"
    assert event["generated"]["items"] == [{"type": "xpEarned", "value": -2}]
    assert event["generated"]["extensions"] == {"pctCompleteApp": 100}
    assert event["object"]["process"] is False


def test_user_resolution_failures(tmp_path: Path) -> None:
    """No email for the hub name: 404; several OneRoster users with the email: 409; one: the
    event's actor, looked up once and remembered in the relay's store."""
    from ..loopback import LoopbackServer
    from .harness import caliper_env

    users = [{"email": "carol@school.edu", "sourcedId": "u-c1"}, {"email": "carol@school.edu", "sourcedId": "u-c2"},
             {"email": "dave@school.edu", "sourcedId": "u-dave"}]
    with LoopbackServer(users=users) as caliper:
        tokens = tmp_path / "more-tokens.json"
        tokens.write_text(json.dumps({"tok-carol": {"name": "carol"}, "tok-dave": {"name": "dave"}, "tok-erin": {"name": "erin smith"}}))
        relay = InProcessRelay(tmp_path, environ={**caliper_env(caliper), "TIMEBACK_NB_TRANSPORT": "caliper"},
                               email_template="{name}@school.edu", tokens=tokens)
        try:
            status, reply = relay.post("heartbeat", _heartbeat(), token="tok-erin")  # "erin smith@school.edu"
            assert status == 404 and reply["error"]["code"] == "USER_RESOLUTION_FAILED"
            status, reply = relay.post("heartbeat", _heartbeat(), token="tok-carol")
            assert status == 409 and reply["error"]["code"] == "USER_RESOLUTION_FAILED"
            assert relay.post("heartbeat", heartbeat_body(new_run(), START), token="tok-dave")[0] == 204
            assert relay.post("heartbeat", heartbeat_body(new_run(), START + 60_000), token="tok-dave")[0] == 204
            assert relay.outbox()[0]["data"][0]["actor"]["id"].endswith("/users/u-dave")
            assert len([r for r in caliper.user_requests if "dave" in str(r["query"])]) == 1
        finally:
            relay.close()


def test_a_hub_that_does_not_answer_is_a_502_the_kernel_retries(relay: InProcessRelay) -> None:
    """Not a 401: a kernel gives up on nothing because the hub was restarting."""
    from timeback_nb.relay.identity import HubTokens

    from ..browser.harness import free_port

    hub = HubTokens(f"http://127.0.0.1:{free_port()}/hub/api", "service-token")
    with pytest.raises(AdapterError) as caught:
        relay.call(hub.name("a-student-token"))
    assert (caught.value.status, caught.value.code) == (502, "INTERNAL_ERROR")
