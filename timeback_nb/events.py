"""Caliper envelopes built from records, field for field as Timeback's SDK builds them.

Protocol reference §1.5 (envelope), §2 (actor, context, object.id), §3 (TimeSpentEvent) and
§4 (ActivityEvent/Completed). Pure and deterministic: the send time is an argument and the
ids are UUIDv5 over what the event describes (design §6), so rebuilding or replaying an
event yields the same id and the receiver can drop the duplicate.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import quote, urlsplit

from .errors import ConfigError, invalid
from .records import Completion, TimeWindow
from .validation import iso_to_epoch_ms

if TYPE_CHECKING:
    from .config import ResolvedCourse, Settings

__all__ = [
    "CALIPER_CONTEXT",
    "EVENT_NAMESPACE",
    "Target",
    "activity_url",
    "completion_envelope",
    "dumps",
    "batch_key",
    "completion_id",
    "event_id",
    "join_envelopes",
    "time_spent_envelope",
    "time_spent_id",
]

CALIPER_CONTEXT = "http://purl.imsglobal.org/ctx/caliper/v1p2"
ROSTERING_PATH = "/ims/oneroster/rostering/v1p2"

# Fixed forever: changing it changes every event id and defeats de-duplication of replays.
EVENT_NAMESPACE = uuid.UUID("459dfd4b-94c4-43bd-906a-f5cd39583961")

# Completion metric items go out in this order, each only when present (protocol §4).
_METRIC_ITEM_ORDER = ("totalQuestions", "correctQuestions", "xpEarned", "masteredUnits")


@dataclass(frozen=True)
class Target:
    """Where and as whom events for one activity are reported (course, app, student)."""

    app_name: str
    sensor: str
    subject: str  # Caliper subject of the config course
    course_id: str  # ids[env], the bare sourcedId
    course_name: str
    oneroster_base: str  # no trailing slash
    user_email: str
    user_id: str  # OneRoster sourcedId of the student

    @classmethod
    def from_course(
        cls, resolved: ResolvedCourse, settings: Settings, user_email: str, user_id: str
    ) -> Target:
        return cls(
            app_name=resolved.app_name,
            sensor=resolved.sensor,
            subject=resolved.subject,
            course_id=resolved.course_id,
            course_name=resolved.course_name,
            oneroster_base=settings.oneroster_url.rstrip("/"),
            user_email=user_email,
            user_id=user_id,
        )


def activity_url(sensor: str, selector: Mapping[str, Any], slug: str) -> str:
    """The canonical activity URL, ``object.id`` (protocol §2.3).

    ``<sensor path without trailing />/activities/<Subject>/g<grade>|<code>/<slug>`` with the
    slug fully percent-encoded (``/`` included), the subject and code left as they are, and
    the sensor's query and fragment moved after the new path.
    """
    if "code" in selector:
        segment = str(selector["code"])
    else:
        segment = f"{selector['subject']}/g{selector['grade']}"
    return _activity_url(sensor, segment, slug)


@functools.lru_cache(maxsize=1024)  # a relay builds thousands a second for a few activities
def _activity_url(sensor: str, segment: str, slug: str) -> str:
    try:
        parts = urlsplit(sensor)
    except ValueError:
        parts = None
    if parts is None or not parts.scheme or not parts.netloc:
        raise ConfigError(
            f"sensor: {sensor!r} is not an absolute URL; expected scheme and host, "
            "e.g. https://notebooks.example.org",
            field="sensor",
        )
    url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/activities/{segment}/"
    url += quote(slug, safe="")
    if parts.query:
        url += "?" + parts.query
    if parts.fragment:
        url += "#" + parts.fragment
    return url


def _urn(name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(EVENT_NAMESPACE, name)}"


def _time_spent_key(run_id: str, started_at: str) -> str:
    return f"{run_id}:{iso_to_epoch_ms(started_at, 'started_at')}"


def time_spent_id(run_id: str, started_at: str) -> str:
    """The id of the TimeSpentEvent of the window of `run_id` that starts at `started_at`: it
    depends only on the SDK's heartbeat de-duplication key (§5.8), whoever builds the event."""
    return _urn(_time_spent_key(run_id, started_at))


def _completion_key(run: str, ended_at: str) -> str:
    return f"{run}:completed:{ended_at}"


def completion_id(run: str, ended_at: str) -> str:
    """The id of the completion event of `run` at the exact `ended_at` string."""
    return _urn(_completion_key(run, ended_at))


def _actor(target: Target) -> dict[str, Any]:
    return {
        "id": f"{target.oneroster_base}{ROSTERING_PATH}/users/{target.user_id}",
        "type": "TimebackUser",
        "email": target.user_email,
    }


def _context(target: Target, object_id: str, activity_name: str) -> dict[str, Any]:
    return {
        "id": object_id,
        "type": "TimebackActivityContext",
        "subject": target.subject,
        "app": {"name": target.app_name},
        "course": {
            "id": f"{target.oneroster_base}{ROSTERING_PATH}/courses/{target.course_id}",
            "name": target.course_name,
        },
        "activity": {"name": activity_name},
        "process": True,
    }


def _event(
    *,
    event_id: str,
    kind: tuple[str, str],
    target: Target,
    object_id: str,
    activity_name: str,
    event_time: str,
    generated: dict[str, Any],
    run_id: str | None,
) -> dict[str, Any]:
    """One event in the SDK's key order (protocol §3): session absent without a runId."""
    event: dict[str, Any] = {
        "@context": CALIPER_CONTEXT,
        "id": event_id,
        "type": kind[0],
        "action": kind[1],
        "actor": _actor(target),
        "object": _context(target, object_id, activity_name),
        "eventTime": event_time,
        "profile": "TimebackProfile",
        "generated": generated,
    }
    if run_id is not None:
        event["session"] = f"urn:uuid:{run_id}"
    event["extensions"] = {"courseId": target.course_id}
    return event


def _envelope(target: Target, send_time: str, event: dict[str, Any]) -> dict[str, Any]:
    """Protocol §1.5: one event per envelope, no envelope-level @context."""
    return {
        "sensor": target.sensor.strip(),
        "sendTime": send_time,
        "dataVersion": CALIPER_CONTEXT,
        "data": [event],
    }


def time_spent_envelope(window: TimeWindow, target: Target, *, send_time: str) -> dict[str, Any]:
    """One closed window → a TimeSpentEvent envelope (protocol §3).

    The id depends only on ``runId`` and the window start in epoch ms (the SDK's heartbeat
    de-duplication key, §5.8), so the same window always has the same id.
    """
    key = _time_spent_key(window.run_id, window.started_at)
    items: list[dict[str, Any]] = [{"type": "active", "value": window.elapsed_ms / 1000}]
    if window.paused_ms > 0:
        items.append({"type": "inactive", "value": window.paused_ms / 1000})
    event = _event(
        event_id=_urn(key),
        kind=("TimeSpentEvent", "SpentTime"),
        target=target,
        object_id=activity_url(target.sensor, window.activity.course, window.activity.id),
        activity_name=window.activity.name,
        event_time=window.ended_at,
        generated={
            "id": _urn(f"{key}:generated"),
            "type": "TimebackTimeSpentMetricsCollection",
            "items": items,
        },
        run_id=window.run_id,
    )
    return _envelope(target, send_time, event)


def completion_envelope(
    completion: Completion, target: Target, *, attempt: int, send_time: str
) -> dict[str, Any]:
    """A completion → an ActivityEvent/Completed envelope (protocol §4).

    The id depends on the run and the exact ``endedAt`` string, which is also what Timeback
    matches a retried attempt by (§8.2). Without a run, the activity URL and the student
    stand in for it: a batch of `record()` calls sharing one ``ended_at`` stays distinct.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise invalid("attempt", f"expected an integer ≥ 1, got {attempt!r}")
    object_id = activity_url(target.sensor, completion.activity.course, completion.activity.id)
    run = completion.run_id or f"{object_id}:{_actor(target)['id']}"
    key = _completion_key(run, completion.ended_at)
    metrics = completion.metrics
    generated: dict[str, Any] = {
        "id": _urn(f"{key}:generated"),
        "type": "TimebackActivityMetricsCollection",
        "items": [
            {"type": name, "value": metrics[name]}
            for name in _METRIC_ITEM_ORDER
            if metrics.get(name) is not None
        ],
        "attempt": attempt,
    }
    if metrics.get("pctComplete") is not None:
        generated["extensions"] = {"pctCompleteApp": metrics["pctComplete"]}
    event = _event(
        event_id=completion_id(run, completion.ended_at),
        kind=("ActivityEvent", "Completed"),
        target=target,
        object_id=object_id,
        activity_name=completion.activity.name,
        event_time=completion.ended_at,
        generated=generated,
        run_id=completion.run_id,
    )
    return _envelope(target, send_time, event)


def dumps(envelope: Mapping[str, Any]) -> str:
    """The exact text stored and sent: compact JSON, non-ASCII kept as UTF-8, no NaN."""
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def event_id(envelope: Mapping[str, Any]) -> str:
    """The ``urn:uuid:`` id of the envelope's one event."""
    return envelope["data"][0]["id"]


# The head of an envelope as `dumps` writes it (keys in `_envelope`'s order, compact): the
# sensor, sendTime and dataVersion as JSON strings, then the data array, which ends the body.
_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_ENVELOPE_HEAD = re.compile(
    rf'\{{"sensor":({_JSON_STRING}),"sendTime":({_JSON_STRING}),"dataVersion":({_JSON_STRING}),"data":\['
)


def _head(body: str) -> re.Match[str] | None:
    match = _ENVELOPE_HEAD.match(body)
    return match if match is not None and body.endswith("]}") else None


def batch_key(body: str) -> str | None:
    """What envelopes must share to travel as one (sensor and dataVersion), or None when
    `body` is not an envelope as `dumps` writes it (it is then sent alone)."""
    match = _head(body)
    return None if match is None else f"{match.group(1)} {match.group(3)}"


def join_envelopes(bodies: list[str]) -> str:
    """One envelope carrying the events of `bodies`, in order (`Envelope.data` is an array).

    The bodies must share a `batch_key`. The envelope's sendTime is the latest of theirs, so
    the same rows always make the same bytes. Pure text splicing of what `dumps` wrote: each
    event's bytes go out exactly as they were committed."""
    heads: list[re.Match[str]] = []
    for body in bodies:
        head = _head(body)
        if head is None:
            raise ValueError("join_envelopes: every body must be an envelope as events.dumps writes it")
        heads.append(head)
    if not heads:
        raise ValueError("join_envelopes: no envelope to join")
    if len({(h.group(1), h.group(3)) for h in heads}) != 1:
        raise ValueError("join_envelopes: the envelopes differ in sensor or dataVersion")
    send_time = max({h.group(2) for h in heads}, key=json.loads)  # a commit's rows share theirs: read each once
    events_text = ",".join(body[h.end() : -2] for body, h in zip(bodies, heads))
    sensor, version = heads[0].group(1), heads[0].group(3)
    return f'{{"sensor":{sensor},"sendTime":{send_time},"dataVersion":{version},"data":[{events_text}]}}'
