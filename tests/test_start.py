"""`timeback_nb.start` / `current` / `record` in-process, on the local embedded store."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest

import timeback_nb
from timeback_nb.errors import ConfigError, StateError, TimebackError, ValidationError

from tests.fakes import Page, PingingPage, visit_and_end

MATH8 = {"subject": "Math", "grade": 8}


@pytest.fixture
def local(local_env: Path) -> Path:
    return local_env


def delivered(tmp_path: Path) -> list[dict]:
    from timeback_nb.store import Store

    with Store(tmp_path / "store.sqlite3") as store:
        return [json.loads(row["body"]) for row in store.local_events()]


def test_start_tracks_ends_and_delivers_into_the_local_store(local: Path) -> None:
    activity = timeback_nb.start("week-3", "Week 3: Linear functions", MATH8, heartbeat_interval=0.2, display=False)
    assert timeback_nb.current() is activity and activity.mode == "local"
    visit_and_end(activity, {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8, "pctComplete": 40})
    assert activity.finished and timeback_nb.current() is None
    counts = timeback_nb.flush(timeout=5)
    assert counts["queued"] == 0 and counts["rejected"] == 0
    events = [e["data"][0] for e in delivered(local)]
    assert events[-1]["type"] == "ActivityEvent" and events[-1]["action"] == "Completed"
    spent = [e for e in events if e["type"] == "TimeSpentEvent"]
    assert len(spent) >= 2
    assert {e["session"] for e in events} == {f"urn:uuid:{activity.run_id}"}
    active = sum(item["value"] for e in spent for item in e["generated"]["items"] if item["type"] == "active")
    assert math.isclose(active * 1000, activity.elapsed_ms, abs_tol=1)


@pytest.mark.bad_input
def test_one_running_activity_per_kernel(local: Path) -> None:
    first = timeback_nb.start("week-3", "Week 3", MATH8, display=False)
    with pytest.raises(StateError, match="'week-3'.*already running"):
        timeback_nb.start("week-4", "Week 4", MATH8, display=False)
    first.end()
    second = timeback_nb.start("week-4", "Week 4", MATH8, display=False)
    assert timeback_nb.current() is second


def test_stateful_runs_reuse_the_run_id_until_a_completion_closes_it(local: Path) -> None:
    first = timeback_nb.start("week-3", "Week 3", MATH8, stateful=True, display=False)
    first.end()
    first.shutdown()
    again = timeback_nb.start("week-3", "Week 3", MATH8, stateful=True, display=False)
    assert again.run_id == first.run_id
    again.end({"xpEarned": 1})
    again.shutdown()
    fresh = timeback_nb.start("week-3", "Week 3", MATH8, stateful=True, display=False)
    assert fresh.run_id != first.run_id


def test_the_idle_rule_reaches_the_page_from_the_argument_or_the_environment(
    local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from timeback_nb.widget import TimebackWidget

    activity = timeback_nb.start("week-3", "Week 3", MATH8, idle_after=90, display=False)
    assert activity.idle_after_ms == 90_000 and TimebackWidget(activity).idle_after_ms == 90_000
    activity.end()
    monkeypatch.setenv("TIMEBACK_NB_IDLE_AFTER", "45")
    activity = timeback_nb.start("week-3", "Week 3", MATH8, display=False)
    assert TimebackWidget(activity).idle_after_ms == 45_000
    activity.end()
    activity = timeback_nb.start("week-3", "Week 3", MATH8, idle_after=0, display=False)  # 0: off
    assert TimebackWidget(activity).idle_after_ms == 0
    activity.end()


def test_an_explicit_run_id_is_used_lower_cased(local: Path) -> None:
    run_id = str(uuid.uuid4()).upper()
    activity = timeback_nb.start("week-3", "Week 3", MATH8, run_id=run_id, display=False)
    assert activity.run_id == run_id.lower()


BAD_START = [
    ({"id": ""}, "id"),
    ({"id": "   "}, "id"),
    ({"id": 3}, "id"),
    ({"name": ""}, "name"),
    ({"name": None}, "name"),
    ({"course": {"subject": "Math"}}, "course"),
    ({"course": {"subject": "Math", "grade": 13}}, "course.grade"),
    ({"course": {"subject": "Math", "grade": -1}}, "course.grade"),
    ({"course": {"subject": "Math", "grade": "8"}}, "course.grade"),
    ({"course": {"subject": "Math", "grade": True}}, "course.grade"),
    ({"course": {"subject": "Art", "grade": 8}}, "course.subject"),
    ({"course": {"code": ""}}, "course.code"),
    ({"course": {"code": "DS-101", "colour": "red"}}, "course"),
    ({"course": "Math 8"}, "course"),
    ({"course": {"subject": "Math", "grade": 5}}, "course"),
    ({"heartbeat_interval": 0}, "heartbeat_interval"),
    ({"heartbeat_interval": -5}, "heartbeat_interval"),
    ({"heartbeat_interval": float("nan")}, "heartbeat_interval"),
    ({"abandon_after": 5, "heartbeat_interval": 15}, "abandon_after"),
    ({"idle_after": -1}, "idle_after"),
    ({"idle_after": "2 minutes"}, "idle_after"),
    ({"idle_after": 700, "abandon_after": 600}, "idle_after"),
    ({"run_id": "not-a-uuid"}, "run_id"),
    ({"run_id": "3f2504e04f8941d39a0c0305e82c3301x"}, "run_id"),
    ({"stateful": "yes"}, "stateful"),
    ({"user": "not an email"}, "user"),
    ({"user": {"id": "u-1"}}, "user.email"),
    ({"config": "/nonexistent/timeback.config.json"}, "config"),
]


@pytest.mark.parametrize(("change", "field"), BAD_START, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_START)])
@pytest.mark.bad_input
def test_bad_start_arguments_are_refused_naming_the_field(local: Path, change: dict, field: str) -> None:
    arguments = {"id": "week-3", "name": "Week 3", "course": MATH8, "display": False, **change}
    with pytest.raises(TimebackError) as error:
        timeback_nb.start(arguments.pop("id"), arguments.pop("name"), arguments.pop("course"), **arguments)
    assert field in str(error.value)
    assert timeback_nb.current() is None
    assert delivered(local) == [] if (local / "store.sqlite3").exists() else True


BAD_METRICS = [
    ({}, "xpEarned"),
    ({"xpEarned": -1}, "xpEarned"),
    ({"xpEarned": float("inf")}, "xpEarned"),
    ({"xpEarned": True}, "xpEarned"),
    ({"xpEarned": "12"}, "xpEarned"),
    ({"xpEarned": 1, "totalQuestions": 3}, "metrics"),
    ({"xpEarned": 1, "correctQuestions": 3}, "metrics"),
    ({"xpEarned": 1, "totalQuestions": 3, "correctQuestions": 4}, "correctQuestions"),
    ({"xpEarned": 1, "totalQuestions": 2.5, "correctQuestions": 1}, "totalQuestions"),
    ({"xpEarned": 1, "masteredUnits": -1}, "masteredUnits"),
    ({"xpEarned": 1, "pctComplete": 100.5}, "pctComplete"),
    ({"xpEarned": 1, "pctComplete": -0.1}, "pctComplete"),
    ({"xpEarned": 1, "score": 3}, "score"),
    ([("xpEarned", 1)], "metrics"),
]


@pytest.mark.parametrize(("metrics", "field"), BAD_METRICS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_METRICS)])
@pytest.mark.bad_input
def test_bad_metrics_are_refused_and_the_activity_keeps_running(local: Path, metrics, field: str) -> None:
    activity = timeback_nb.start("week-3", "Week 3", MATH8, display=False)
    with pytest.raises(ValidationError) as error:
        activity.end(metrics)
    assert field in str(error.value)
    assert timeback_nb.current() is activity and not activity.ended
    activity.end({"xpEarned": 2})


@pytest.mark.bad_input
def test_a_course_not_synced_for_the_env_is_refused_with_the_fix(local: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMEBACK_ENV", "production")
    with pytest.raises(ConfigError, match=r'"ids": \{"production"'):
        timeback_nb.start("intro", "Intro", {"code": "DS-101"}, display=False)


def test_record_sends_a_completion_with_no_kernel_and_closes_the_stateful_run(local: Path) -> None:
    activity = timeback_nb.start("week-3", "Week 3", MATH8, stateful=True, display=False)
    activity.end()
    activity.shutdown()
    counts = timeback_nb.record(
        id="week-3", name="Week 3", course=MATH8, metrics={"xpEarned": 5, "pctComplete": 100},
        ended_at="2025-01-15T10:20:00.000Z",
    )
    assert counts["queued"] == 0
    completion = delivered(local)[-1]["data"][0]
    assert completion["session"] == f"urn:uuid:{activity.run_id}"
    assert completion["eventTime"] == "2025-01-15T10:20:00.000Z"
    assert completion["generated"]["extensions"] == {"pctCompleteApp": 100}
    fresh = timeback_nb.start("week-3", "Week 3", MATH8, stateful=True, display=False)
    assert fresh.run_id != activity.run_id


@pytest.mark.parametrize(
    ("change", "field"),
    [({"ended_at": "2025-01-15 10:20"}, "ended_at"), ({"ended_at": "2025-01-15T10:20:00"}, "ended_at"),
     ({"metrics": {"xpEarned": -3}}, "xpEarned"), ({"course": {"grade": 8}}, "course"), ({"run_id": "x"}, "run_id"),
     ({"timeout": float("nan")}, "timeout"), pytest.param({"timeout": 10**400}, "timeout", id="timeout-10**400"), ({"timeout": -1}, "timeout")],
)
@pytest.mark.bad_input
def test_bad_record_arguments_send_nothing(local: Path, change: dict, field: str) -> None:
    arguments = {"id": "week-3", "name": "Week 3", "course": MATH8, "metrics": {"xpEarned": 1}, **change}
    with pytest.raises(ValidationError) as error:
        timeback_nb.record(**arguments)
    assert field in str(error.value)
    assert not (local / "store.sqlite3").exists() or delivered(local) == []


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -0.5, pytest.param(10**400, id="10**400"), "5", True])
@pytest.mark.bad_input
def test_flush_refuses_a_timeout_that_is_no_duration(local: Path, timeout: object) -> None:
    with pytest.raises(ValidationError, match=r"^timeout: expected a number of seconds from 0 to 86400") as error:
        timeback_nb.flush(timeout=timeout)  # type: ignore[arg-type]
    assert error.value.field == "timeout"


def test_every_run_is_listed_and_only_stateful_ones_stay_open(local: Path) -> None:
    from timeback_nb.store import Store

    plain = timeback_nb.start("week-3", "Week 3", MATH8, display=False)
    plain.end()
    plain.shutdown()
    kept = timeback_nb.start("week-3", "Week 3", MATH8, stateful=True, display=False)
    kept.end()
    kept.shutdown()
    with Store(local / "store.sqlite3") as store:
        runs = {run["run_id"]: run for run in store.runs()}
    assert runs[plain.run_id]["ended_at"] == plain.ended_at and not runs[plain.run_id]["stateful"]
    assert runs[kept.run_id]["ended_at"] is None and runs[kept.run_id]["stateful"]


def test_outbox_mode_keeps_events_queued_for_a_trusted_process_to_deliver(local: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMEBACK_NB_TRANSPORT", "outbox")
    monkeypatch.setenv("TIMEBACK_USER_ID", "u-123")
    activity = timeback_nb.start("week-3", "Week 3", MATH8, heartbeat_interval=0.2, display=False)
    assert activity.mode == "outbox"
    import time

    time.sleep(0.05)  # a non-empty window
    activity.end({"xpEarned": 3})  # no page ever reported: settles at once
    assert activity.finished
    assert timeback_nb.flush(timeout=1) == {"delivered": 0, "queued": 2, "rejected": 0, "held": 0}
    assert activity.pending_events == 2
    # The operator's process, with the transport (and in production the credentials):
    monkeypatch.setenv("TIMEBACK_NB_TRANSPORT", "local")
    assert timeback_nb.flush(timeout=5) == {"delivered": 2, "queued": 0, "rejected": 0, "held": 0}
    sent = [e["data"][0] for e in delivered(local)]
    assert [e["type"] for e in sent] == ["TimeSpentEvent", "ActivityEvent"]
    assert sent[0]["actor"]["id"].endswith("/users/u-123")


@pytest.mark.bad_input
def test_outbox_mode_needs_the_student_id_from_the_environment(local: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMEBACK_NB_TRANSPORT", "outbox")
    with pytest.raises(ConfigError, match="TIMEBACK_USER_ID"):
        timeback_nb.start("week-3", "Week 3", MATH8, display=False)


def test_end_then_flush_in_one_cell_with_live_reports_delivers_the_final_window_and_the_completion(local: Path) -> None:
    # Issue 12 §14, comms on a subshell: the page's reports are handled on another thread while
    # the cell runs, so end() waits (bounded) for the one that closes the final window.
    activity = timeback_nb.start("week-3", "Week 3", MATH8, heartbeat_interval=0.5, display=False)
    page = PingingPage(activity).start()  # reports from its own thread, as a subshell delivers them
    try:
        import time

        time.sleep(0.7)
        activity._cell_started()  # the end cell starts (IPython's pre_run_cell)
        activity.end({"xpEarned": 2})
        counts = timeback_nb.flush(timeout=5)
    finally:
        page.stop()
    assert activity.finished
    assert counts["queued"] == 0 and counts["held"] == 0
    sent = [e["data"][0] for e in delivered(local)]
    assert sent[-1]["type"] == "ActivityEvent" and sent[-2]["eventTime"] == sent[-1]["eventTime"]


def test_end_then_flush_in_one_cell_with_queued_reports_says_what_is_still_held(local: Path) -> None:
    # Subshells off: nothing the page sends can arrive before the cell ends, so flush() in the
    # end cell cannot deliver the final window and the completion, and says so.
    activity = timeback_nb.start("week-3", "Week 3", MATH8, heartbeat_interval=0.5, display=False)
    page = Page(activity, activity._clock, clock_offset=0)  # reports handled on the main shell
    import time

    page.send("transition", True)
    time.sleep(0.2)
    page.send("ping", True)
    activity._cell_started()
    time.sleep(0.2)  # the page's pings of this cell wait behind it
    started = time.monotonic()
    activity.end({"xpEarned": 2})
    assert time.monotonic() - started < 0.5, "end() does not wait for reports that cannot come"
    counts = timeback_nb.flush(timeout=1)
    assert counts["held"] == 2 and counts["queued"] >= 2  # the final window and the completion
    activity._cell_finished()  # the cell ends; the page's queued report comes in
    page.send("ping", True)
    deadline = time.monotonic() + 3
    while not activity.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    counts = timeback_nb.flush(timeout=5)
    assert counts["held"] == 0 and counts["queued"] == 0
    assert [e["data"][0]["type"] for e in delivered(local)][-1] == "ActivityEvent"
