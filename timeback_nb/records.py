"""What the kernel-side Activity hands to delivery: closed time windows and completions.

These are plain, immutable values in the shape of the Timeback SDK's heartbeat and submit
bodies (camelCase names live only in `as_body`). Delivery turns them into Caliper events.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Union


@dataclass(frozen=True)
class ActivityRef:
    """Which activity a record belongs to: the slug, display name and course selector."""

    id: str
    name: str
    course: Mapping[str, Any]  # {"subject": "Math", "grade": 3} or {"code": "CS-101"}


@dataclass(frozen=True)
class TimeWindow:
    """One closed heartbeat window: ``elapsed_ms + paused_ms == ended - started`` (ms)."""

    activity: ActivityRef
    run_id: str
    started_at: str  # ISO-8601 UTC with milliseconds and "Z"
    ended_at: str
    elapsed_ms: int  # active milliseconds
    paused_ms: int  # inactive (hidden, paused or no page) milliseconds

    def as_body(self) -> dict[str, Any]:
        """The SDK's heartbeat request body for this window."""
        return {
            "id": self.activity.id,
            "name": self.activity.name,
            "course": dict(self.activity.course),
            "runId": self.run_id,
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "elapsedMs": self.elapsed_ms,
            "pausedMs": self.paused_ms,
        }


@dataclass(frozen=True)
class Completion:
    """The end of a run with results (`end(metrics)` or `record()`)."""

    activity: ActivityRef
    run_id: str | None
    ended_at: str  # ISO-8601 with a zone, sent unchanged as eventTime
    metrics: Mapping[str, Any]  # validated, camelCase; pctComplete included when known

    def as_body(self) -> dict[str, Any]:
        metrics = {k: v for k, v in self.metrics.items() if k != "pctComplete"}
        body: dict[str, Any] = {
            "id": self.activity.id,
            "name": self.activity.name,
            "course": dict(self.activity.course),
            "runId": self.run_id,
            "endedAt": self.ended_at,
            "metrics": metrics,
        }
        if "pctComplete" in self.metrics:
            body["pctComplete"] = self.metrics["pctComplete"]
        return body


Record = Union[TimeWindow, Completion]


def results_text(metrics: Mapping[str, Any]) -> str:
    """A completion's metrics as a person reads them: "12 XP, 8/10 correct, 40% complete"."""
    parts = []
    if "xpEarned" in metrics:
        parts.append(f"{metrics['xpEarned']} XP")
    if "totalQuestions" in metrics:
        parts.append(f"{metrics.get('correctQuestions')}/{metrics['totalQuestions']} correct")
    if "masteredUnits" in metrics:
        units = metrics["masteredUnits"]
        parts.append(f"{units} unit{'' if units == 1 else 's'} mastered")
    if "pctComplete" in metrics:
        parts.append(f"{metrics['pctComplete']}% complete")
    return ", ".join(parts)


def record_to_json(record: Record) -> dict[str, Any]:
    """A record as plain JSON values (a checkpoint keeps records this way)."""
    ref = record.activity
    common = {"activity": {"id": ref.id, "name": ref.name, "course": dict(ref.course)}, "run_id": record.run_id}
    if isinstance(record, TimeWindow):
        return {"kind": "time", **common, "started_at": record.started_at, "ended_at": record.ended_at,
                "elapsed_ms": record.elapsed_ms, "paused_ms": record.paused_ms}
    return {"kind": "completion", **common, "ended_at": record.ended_at, "metrics": dict(record.metrics)}


def record_from_json(data: Mapping[str, Any]) -> Record:
    """The inverse of `record_to_json`."""
    ref = ActivityRef(data["activity"]["id"], data["activity"]["name"], data["activity"]["course"])
    if data["kind"] == "time":
        return TimeWindow(ref, data["run_id"], data["started_at"], data["ended_at"], int(data["elapsed_ms"]), int(data["paused_ms"]))
    return Completion(ref, data["run_id"], data["ended_at"], data["metrics"])


class Sink(Protocol):
    """Where an Activity hands its records, in order. Must be quick and must not raise."""

    def emit(self, record: Record) -> None: ...

    # Optional: `checkpoint(run_id, records | None, *, interval_s)` keeps what to hand on if the
    # process dies now (the Activity calls it when the sink has it; see `Delivery.checkpoint`).


@dataclass
class MemorySink:
    """Keeps records in a list; the sink of tests and of runs with no delivery configured."""

    records: list[Record] = field(default_factory=list)
    checkpoints: dict[str, tuple[Record, ...] | None] = field(default_factory=dict)  # the latest per run
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def emit(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)

    def checkpoint(self, run_id: str, records: list[Record] | None, *, interval_s: float = 15.0) -> None:
        with self._lock:
            self.checkpoints[run_id] = None if records is None else tuple(records)

    @property
    def windows(self) -> list[TimeWindow]:
        with self._lock:
            return [r for r in self.records if isinstance(r, TimeWindow)]

    @property
    def completions(self) -> list[Completion]:
        with self._lock:
            return [r for r in self.records if isinstance(r, Completion)]
