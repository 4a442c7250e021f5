"""The relay's own rules for a window (beyond the SDK's field checks), run ownership and
duplicates, and that they hold across a restart of the relay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .harness import refused, NOW, InProcessRelay, heartbeat_body, new_run, submit_body

pytestmark = pytest.mark.bad_input
T = NOW - 3_600_000  # an hour ago: well in the past


@pytest.mark.parametrize(
    ("case", "changes", "field", "says"),
    [
        ("ends when it starts", {"endedAt": "2025-01-15T09:00:00.000Z", "elapsedMs": 0, "pausedMs": 0}, "endedAt", "after startedAt"),
        ("ends before it starts", {"endedAt": "2025-01-15T08:59:59.000Z", "elapsedMs": 0, "pausedMs": 0}, "endedAt", "after startedAt"),
        ("longer than 10 minutes", {"endedAt": "2025-01-15T09:10:00.001Z", "elapsedMs": 600_001, "pausedMs": 0}, "endedAt", "10 minutes"),
        ("active + inactive short of the window", {"elapsedMs": 12_000, "pausedMs": 1_500}, "elapsedMs", "15000 ms"),
        ("active + inactive beyond the window", {"elapsedMs": 15_000, "pausedMs": 1_500}, "elapsedMs", "15000 ms"),
    ],
)
def test_a_window_judged_alone(relay: InProcessRelay, case: str, changes: dict[str, Any], field: str, says: str) -> None:
    status, reply = relay.post("heartbeat", heartbeat_body(new_run(), T, **changes))
    assert status == 400
    assert says in refused(reply, field)
    assert relay.outbox() == []


def test_exactly_ten_minutes_and_one_second_of_rounding_pass(relay: InProcessRelay) -> None:
    assert relay.post("heartbeat", heartbeat_body(new_run(), T, length_ms=600_000, paused_ms=0))[0] == 204
    body = heartbeat_body(new_run(), T + 600_000, elapsedMs=14_000, pausedMs=1_999)  # 999 ms short
    assert relay.post("heartbeat", body)[0] == 204


def test_not_in_the_future_beyond_a_minute_of_skew(relay: InProcessRelay) -> None:
    assert relay.post("heartbeat", heartbeat_body(new_run(), NOW + 60_000 - 15_000))[0] == 204  # ends at now + 60 s
    status, reply = relay.post("heartbeat", heartbeat_body(new_run(), NOW + 60_001 - 15_000, paused_ms=15_000))
    assert status == 400 and "future" in refused(reply, "endedAt")


def test_the_same_window_again_is_a_duplicate_and_an_overlap_isrefused(relay: InProcessRelay) -> None:
    run = new_run()
    assert relay.post("heartbeat", heartbeat_body(run, T)) == (204, None)
    assert relay.post("heartbeat", heartbeat_body(run, T)) == (200, {"duplicate": True})
    # The same start spelled another way, and the runId in capitals: still the same window.
    same = heartbeat_body(run.upper(), T, startedAt="2025-01-15T10:00:00.000+01:00")
    assert relay.post("heartbeat", same) == (200, {"duplicate": True})
    status, reply = relay.post("heartbeat", heartbeat_body(run, T + 5_000))
    assert status == 400 and "overlaps" in refused(reply, "startedAt")
    status, reply = relay.post("heartbeat", heartbeat_body(run, T - 10_000))
    assert status == 400 and "overlaps" in refused(reply, "startedAt")
    assert relay.post("heartbeat", heartbeat_body(run, T + 15_000)) == (204, None)  # the next window
    assert len(relay.outbox()) == 2


def test_the_rules_hold_between_requests_committed_together(relay: InProcessRelay) -> None:
    """Requests that arrive together are judged in one transaction: each against the store and
    the group's earlier requests, so a duplicate, an overlap, a run claimed twice or a third
    parallel run is caught inside the group as it is across groups, and a refusal writes nothing."""
    run, other, third, contested = new_run(), new_run(), new_run(), new_run()
    replies = relay.post_as_one_group([
        ("heartbeat", heartbeat_body(run, T, paused_ms=0), "tok-alice"),
        ("heartbeat", heartbeat_body(run, T, paused_ms=0), "tok-alice"),  # the same window
        ("heartbeat", heartbeat_body(run, T + 5_000), "tok-alice"),  # overlaps it
        ("heartbeat", heartbeat_body(other, T, paused_ms=0), "tok-alice"),  # a split view: allowed
        ("heartbeat", heartbeat_body(third, T, paused_ms=0), "tok-alice"),  # a third at once: not
        ("heartbeat", heartbeat_body(contested, T), "tok-bob"),
        ("heartbeat", heartbeat_body(contested, T + 15_000), "tok-alice"),  # bob's since a moment ago
        ("heartbeat", heartbeat_body(run, T + 15_000), "tok-alice"),  # the next window
        ("submit", submit_body(run, T + 30_000), "tok-alice"),
        ("submit", submit_body(run, T + 30_000), "tok-alice"),  # the same completion
    ])
    assert [status for status, _ in replies] == [204, 200, 400, 204, 400, 204, 403, 204, 204, 200]
    assert replies[1][1] == replies[9][1] == {"duplicate": True}
    assert "overlaps" in refused(replies[2][1], "startedAt")
    assert "2 activities at once" in refused(replies[4][1], "elapsedMs")
    assert replies[6][1]["error"]["code"] == "FORBIDDEN"
    events = [envelope["data"][0] for envelope in relay.outbox()]
    assert [(e["action"], e["session"].removeprefix("urn:uuid:")) for e in events] == [
        ("SpentTime", run), ("SpentTime", other), ("SpentTime", contested), ("SpentTime", run), ("Completed", run),
    ]
    assert events[2]["actor"]["email"] == "bob@school.edu"
    # What the group committed is what later requests are judged against.
    assert relay.post("heartbeat", heartbeat_body(contested, T + 15_000), token="tok-alice")[0] == 403
    assert relay.post("heartbeat", heartbeat_body(third, T, paused_ms=0))[0] == 400
    assert relay.post("heartbeat", heartbeat_body(run, T + 15_000)) == (200, {"duplicate": True})


def test_a_run_belongs_to_its_first_user_whatever_the_body_says(relay: InProcessRelay) -> None:
    run = new_run()
    assert relay.post("heartbeat", heartbeat_body(run, T), token="tok-alice")[0] == 204
    for route, body in (("heartbeat", heartbeat_body(run, T + 15_000)), ("submit", submit_body(run, T + 30_000))):
        status, reply = relay.post(route, body, token="tok-bob")
        assert status == 403 and reply["error"]["code"] == "FORBIDDEN"
    # Even a replay of alice's own window is refused to bob: he learns nothing, posts nothing.
    assert relay.post("heartbeat", heartbeat_body(run, T), token="tok-bob")[0] == 403
    events = [e["data"][0] for e in relay.outbox()]
    assert [e["actor"]["email"] for e in events] == ["alice@school.edu"]


def test_active_time_is_capped_at_max_parallel_times_wall_time(relay: InProcessRelay) -> None:
    """Two runs fully active at once (a split view) pass; a third is refused; inactive time
    never counts; another student is not affected."""
    runs = [new_run() for _ in range(3)]
    for run in runs[:2]:
        assert relay.post("heartbeat", heartbeat_body(run, T, paused_ms=0))[0] == 204
    status, reply = relay.post("heartbeat", heartbeat_body(runs[2], T + 5_000, paused_ms=0))
    assert status == 400 and "2 activities at once" in refused(reply, "elapsedMs")
    assert relay.post("heartbeat", heartbeat_body(runs[2], T + 5_000, paused_ms=15_000))[0] == 204
    assert relay.post("heartbeat", heartbeat_body(new_run(), T, paused_ms=0), token="tok-bob")[0] == 204
    # Partly active in a window that half overlaps: 15 + 15 × (10/15) × 2 = 35 s > 30 s.
    status, _ = relay.post("heartbeat", heartbeat_body(new_run(), T + 5_000, paused_ms=0))
    assert status == 400


def test_max_parallel_option(tmp_path: Path) -> None:
    relay = InProcessRelay(tmp_path, max_parallel=3)
    try:
        for _ in range(3):
            assert relay.post("heartbeat", heartbeat_body(new_run(), T, paused_ms=0))[0] == 204
        assert relay.post("heartbeat", heartbeat_body(new_run(), T, paused_ms=0))[0] == 400
    finally:
        relay.close()


def test_ownership_windows_and_attempts_survive_a_restart(relay: InProcessRelay) -> None:
    run = new_run()
    assert relay.post("heartbeat", heartbeat_body(run, T)) == (204, None)
    assert relay.post("submit", submit_body(run, T + 15_000)) == (204, None)
    relay.restart()
    assert relay.post("heartbeat", heartbeat_body(run, T)) == (200, {"duplicate": True})
    assert relay.post("submit", submit_body(run, T + 15_000)) == (200, {"duplicate": True})
    assert relay.post("heartbeat", heartbeat_body(run, T + 5_000))[0] == 400
    assert relay.post("heartbeat", heartbeat_body(run, T + 15_000), token="tok-bob")[0] == 403
    assert relay.post("submit", submit_body(run, T + 60_000)) == (204, None)  # a second attempt
    attempts = [e["data"][0]["generated"]["attempt"] for e in relay.outbox() if e["data"][0]["type"] == "ActivityEvent"]
    assert attempts == [1, 2]


def _without_alice(home: Path) -> None:
    users = json.loads((home / "users.json").read_text())
    del users["alice"]
    (home / "users.json").write_text(json.dumps(users))


def _course_not_synced(home: Path) -> None:
    config = json.loads((home / "timeback.config.json").read_text())
    config["courses"][0]["ids"] = {"production": "c-prd-1"}  # the relay runs on staging
    (home / "timeback.config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("break_it", "status", "code"),
    [(_without_alice, 404, "USER_RESOLUTION_FAILED"), (_course_not_synced, 503, "MISSING_SYNCED_COURSE_ID")],
)
def test_a_window_already_accepted_is_a_duplicate_before_the_course_id_and_the_student_are_resolved(
    relay: InProcessRelay, break_it: Any, status: int, code: str
) -> None:
    """SDK order (protocol §5.5): de-duplication comes after validation and before the synced
    course id (step 5) and the user (step 6). A kernel resending a window the relay accepted
    hears "duplicate", not an error it would keep the event queued or rejected for."""
    run = new_run()
    assert relay.post("heartbeat", heartbeat_body(run, T)) == (204, None)
    break_it(relay.home)
    relay.restart()
    assert relay.post("heartbeat", heartbeat_body(run, T)) == (200, {"duplicate": True})
    refused_status, reply = relay.post("heartbeat", heartbeat_body(run, T + 15_000))
    assert (refused_status, reply["error"]["code"]) == (status, code)
    assert len(relay.outbox()) == 1


def test_the_event_is_the_kernels_event_for_that_student(relay: InProcessRelay) -> None:
    """Same deterministic id as the kernel's own builder would give; actor from the users file."""
    from timeback_nb import events
    from timeback_nb.config import Settings, load_config
    from timeback_nb.events import Target
    from timeback_nb.records import ActivityRef, TimeWindow

    run = new_run()
    body = heartbeat_body(run, T)
    assert relay.post("heartbeat", body)[0] == 204
    sent = relay.outbox()[0]
    settings = Settings.from_env({"TIMEBACK_NB_TRANSPORT": "local"})
    resolved = load_config(relay.home / "timeback.config.json").resolve({"subject": "Math", "grade": 8}, "staging")
    window = TimeWindow(ActivityRef("week-3", "Week 3: Linear functions", {"subject": "Math", "grade": 8}), run,
                        body["startedAt"], body["endedAt"], body["elapsedMs"], body["pausedMs"])
    expected = events.time_spent_envelope(window, Target.from_course(resolved, settings, "alice@school.edu", "u-alice"),
                                          send_time=sent["sendTime"])
    assert sent == expected
