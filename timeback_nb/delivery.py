"""The production `records.Sink`: records become Caliper events committed to the outbox.

`emit` builds the envelope, commits it to the outbox and wakes the sender; it never touches
the network and never raises into the Activity. The envelope's `sendTime` is the
commit time, so every retry resends the very same bytes. What cannot be turned into an event
is kept as a *rejected* outbox row holding the record itself (shown by `timeback-nb events`);
what cannot be committed because the store is unavailable stays in memory, in order, and is
committed with the next record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from . import events
from .adapter import adapter_body
from .clock import Clock, SystemClock, iso_utc_ms
from .errors import StateError
from .records import Completion, Record, TimeWindow

if TYPE_CHECKING:
    from .events import Target
    from .outbox import Sender
    from .store import Store

log = logging.getLogger(__name__)

# The store could not be written (locked past the busy timeout, disk full, closed): try again later.
_STORE_ERRORS = (sqlite3.Error, OSError, StateError)


class Delivery:
    """Turns an Activity's records into outbox rows for `target` (implements `records.Sink`).

    `wire="adapter"` (relay mode) commits the SDK's heartbeat and submit bodies instead of
    Caliper envelopes: the relay builds the events, with the same ids (`adapter`)."""

    def __init__(
        self, target: Target, store: Store, sender: Sender, *, clock: Clock | None = None, wire: str = "caliper"
    ) -> None:
        if wire not in ("caliper", "adapter"):
            raise ValueError(f"wire: expected 'caliper' or 'adapter', got {wire!r}")
        self.wire = wire
        self.target = target
        self.store = store
        self.sender = sender
        self.clock: Clock = clock or SystemClock()
        self.last_error: str | None = None
        self._pending: list[Record] = []  # not yet committed, oldest first
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Delivery({self.store!r}, pending={len(self._pending)})"

    @property
    def pending(self) -> int:
        """Records kept in memory because the store could not take them yet."""
        with self._lock:
            return len(self._pending)

    def emit(self, record: Record) -> None:
        if not isinstance(record, (TimeWindow, Completion)):  # a caller's bug: nothing to keep
            self._report(f"record: expected a TimeWindow or a Completion, got {type(record).__name__}")
            return
        with self._lock:
            self._pending.append(record)
            problems = self._commit_pending()
        for message, passes in problems:  # outside the lock: observers may do anything
            self._report(message, passes=passes)
        self.sender.wake()

    def retry_pending(self) -> int:
        """Commit what the store could not take earlier; returns how many are still pending."""
        with self._lock:
            problems = self._commit_pending()
            left = len(self._pending)
        for message, passes in problems:
            self._report(message, passes=passes)
        return left

    def _commit_pending(self) -> list[tuple[str, bool]]:
        """Commit held records oldest first; the problems met, as (message, passes)."""
        problems: list[tuple[str, bool]] = []
        while self._pending:
            record = self._pending[0]
            try:
                problem = self._commit(record)
            except _STORE_ERRORS as exc:
                problems.append((f"outbox unavailable, {len(self._pending)} record(s) held in memory: {exc}", True))
                break
            except Exception as exc:  # never into the Activity; the record stays held
                log.exception("timeback: committing a record failed")
                problems.append((f"{len(self._pending)} record(s) held in memory: {type(exc).__name__}: {exc}", True))
                break
            if problem is not None:
                problems.append((problem, False))
            self._pending.pop(0)
        return problems

    def _commit(self, record: Record) -> str | None:
        """Enqueue the event built from `record`, or park the record if none can be built (and
        say why)."""
        try:
            kind, event_id, body = self._build(record)
        except _STORE_ERRORS:
            raise
        except Exception as exc:  # a bug or a config problem: keep the record, visibly
            log.exception("timeback: no event could be built from a %s record", type(record).__name__)
            reason = f"not sent: no event could be built ({type(exc).__name__}: {exc})"
            body = json.dumps(record.as_body(), ensure_ascii=False, separators=(",", ":"), default=str)
            digest = hashlib.sha256(f"{type(record).__name__}:{body}".encode()).hexdigest()[:32]
            self.store.park(f"unsent:{digest}", _kind(record), record.run_id, body, reason)
            return reason
        self.store.enqueue(event_id, kind, record.run_id, body)
        return None

    def _build(self, record: Record) -> tuple[str, str, str]:
        if self.wire == "adapter":
            return adapter_body(record, self.target.user_id)
        send_time = iso_utc_ms(self.clock.wall_ms())
        if isinstance(record, TimeWindow):
            envelope = events.time_spent_envelope(record, self.target, send_time=send_time)
        else:
            envelope = numbered_completion(record, self.target, self.store, send_time=send_time)
        return _kind(record), events.event_id(envelope), events.dumps(envelope)

    def _report(self, message: str, *, passes: bool = False) -> None:
        self.last_error = message
        try:
            self.sender.note_error(message, passes=passes)
        except Exception:
            log.exception("timeback: reporting a delivery problem failed")


def numbered_completion(record: Completion, target: Target, store: Store, *, send_time: str) -> dict[str, Any]:
    """The completion's envelope with the student's next attempt number for the activity.

    The id does not depend on the attempt: it is built once to learn it, so a replayed
    completion (already in the outbox) does not use up an attempt number."""
    envelope = events.completion_envelope(record, target, attempt=1, send_time=send_time)
    if store.known(events.event_id(envelope)):
        return envelope
    object_id = envelope["data"][0]["object"]["id"]
    attempt = store.next_attempt(target.user_id, object_id)
    if attempt == 1:
        return envelope
    return events.completion_envelope(record, target, attempt=attempt, send_time=send_time)


def _kind(record: Record) -> str:
    return "completion" if isinstance(record, Completion) else "time"
