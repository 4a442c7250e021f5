"""The production `records.Sink`: records become Caliper events committed to the outbox.

`emit` builds the envelope, commits it to the outbox and wakes the sender; it never touches
the network and never raises into the Activity. The envelope's `sendTime` is the
commit time, so every retry resends the very same bytes. What cannot be turned into an event
is kept as a *rejected* outbox row holding the record itself (shown by `timeback-nb events`);
what cannot be committed because the store is unavailable (locked, read-only, full, deleted)
stays in memory, in order, and a retry timer commits it as soon as the store works again (no
later record is needed). A kernel-side write waits at most `STORE_PATIENCE_S` for a busy store,
and none is attempted while earlier records are still held, so a failing store never blocks the
Activity for long. Checkpoints (what to hand on if the kernel dies now, see `recovery`) go
through the same ordered queue, so a checkpoint is never older than the records before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Union

from . import events
from .adapter import adapter_body
from .clock import Clock, SystemClock, iso_utc_ms
from .errors import StateError, StoreError
from .records import Completion, Record, TimeWindow, record_to_json
from .store import NumberedRow

if TYPE_CHECKING:
    from .events import Target
    from .outbox import Sender
    from .store import Store

log = logging.getLogger(__name__)

# The store could not be written (locked past the busy timeout, disk full, closed): try again later.
_STORE_ERRORS = (sqlite3.Error, OSError, StateError, StoreError)

STORE_PATIENCE_S = 1.0  # the most one kernel-side write waits for a busy store
RETRY_FIRST_S = 0.1  # then the retry timer tries again after this, doubling up to
RETRY_CAP_S = 2.0


@dataclass(frozen=True)
class _Checkpoint:
    """Replace `run_id`'s checkpoint with `records` (None: drop it, all was handed on)."""

    run_id: str
    records: tuple[Record, ...] | None
    interval_s: float


_Item = Union[TimeWindow, Completion, _Checkpoint]


class Delivery:
    """Turns an Activity's records into outbox rows for `target` (implements `records.Sink`).

    `wire="adapter"` (relay mode) commits the SDK's heartbeat and submit bodies instead of
    Caliper envelopes: the relay builds the events, with the same ids (`adapter`)."""

    def __init__(
        self, target: Target, store: Store, sender: Sender, *, clock: Clock | None = None,
        patience: float = STORE_PATIENCE_S, wire: str = "caliper",
    ) -> None:
        if wire not in ("caliper", "adapter"):
            raise ValueError(f"wire: expected 'caliper' or 'adapter', got {wire!r}")
        self.wire = wire
        self.target = target
        self.store = store
        self.sender = sender
        self.clock: Clock = clock or SystemClock()
        self.patience = patience
        self.last_error: str | None = None
        self._pending: list[_Item] = []  # not yet committed, oldest first
        self._lock = threading.Lock()
        self._retrying: threading.Thread | None = None  # the retry timer, while items are held

    def __repr__(self) -> str:
        return f"Delivery({self.store!r}, pending={self.pending})"

    @property
    def pending(self) -> int:
        """Records kept in memory because the store could not take them yet."""
        with self._lock:
            return self._held()

    def _held(self) -> int:
        return sum(not isinstance(item, _Checkpoint) for item in self._pending)

    def emit(self, record: Record) -> None:
        if not isinstance(record, (TimeWindow, Completion)):  # a caller's bug: nothing to keep
            self._report(f"record: expected a TimeWindow or a Completion, got {type(record).__name__}")
            return
        self._enqueue(record)

    def checkpoint(self, run_id: str, records: list[Record] | None, *, interval_s: float = 15.0) -> None:
        """Keep in the store what to hand on for `run_id` if this process dies now (None: nothing
        any more). Committed in order with the records emitted before it."""
        self._enqueue(_Checkpoint(run_id, None if records is None else tuple(records), interval_s))

    def _enqueue(self, item: _Item) -> None:
        with self._lock:
            last = self._pending[-1] if self._pending else None
            if isinstance(item, _Checkpoint) and isinstance(last, _Checkpoint) and last.run_id == item.run_id:
                self._pending[-1] = item  # only the newest checkpoint of a run matters
            else:
                self._pending.append(item)
            # While earlier items wait for the store, the retry timer commits this one after
            # them; trying here would only make the caller wait for a store known to fail.
            problems = [] if self._retrying is not None else self._commit_pending()
        for message, passes in problems:  # outside the lock: observers may do anything
            self._report(message, passes=passes)
        self.sender.wake()

    def commit_now(self, record: Record) -> None:
        """Commit `record` before returning (for `record()`), or raise StoreError naming the store
        and the cause; nothing is kept in memory then."""
        with self._lock, self.store.patience(self.patience):
            try:
                problem = self._commit(record)
            except _STORE_ERRORS as exc:
                raise exc if isinstance(exc, StoreError) else StoreError(
                    f"store '{self.store.path}': {exc}", field="TIMEBACK_NB_STORE"
                ) from exc
        if problem is not None:
            self._report(problem)
        self.sender.wake()

    def retry_pending(self) -> int:
        """Commit what the store could not take earlier; returns how many are still pending."""
        with self._lock:
            problems = self._commit_pending()
            left = self._held()
        for message, passes in problems:
            self._report(message, passes=passes)
        return left

    def _commit_pending(self) -> list[tuple[str, bool]]:
        """Commit held items oldest first; the problems met, as (message, passes). Lock held.
        When the store fails, the retry timer is started."""
        problems: list[tuple[str, bool]] = []
        with self.store.patience(self.patience):
            while self._pending:
                item = self._pending[0]
                try:
                    problem = self._commit(item)
                except _STORE_ERRORS as exc:
                    problems.append((f"{exc}; {self._held()} record(s) held in memory, retrying", True))
                    self._start_retrying()
                    break
                except Exception as exc:  # never into the Activity; the record stays held
                    log.exception("timeback: committing a record failed")
                    problems.append((f"{self._held()} record(s) held in memory: {type(exc).__name__}: {exc}", True))
                    self._start_retrying()
                    break
                if problem is not None:
                    problems.append((problem, False))
                self._pending.pop(0)
        return problems

    def _start_retrying(self) -> None:
        if self._retrying is None:
            self._retrying = threading.Thread(target=self._retry, name="timeback-store-retry", daemon=True)
            self._retrying.start()

    def _retry(self) -> None:
        """The retry timer: commit what is held as soon as the store takes it again."""
        delay = RETRY_FIRST_S
        while True:
            time.sleep(delay)
            delay = min(delay * 2, RETRY_CAP_S)
            with self._lock:
                problems = self._commit_pending()
                done = not self._pending
                if done:
                    self._retrying = None
            for message, passes in problems:
                self._report(message, passes=passes)
            if done:
                self._recovered()
                self.sender.wake()
                return

    def _recovered(self) -> None:
        """The store takes writes again: clear the problem this delivery reported."""
        if self.last_error is not None and getattr(self.sender, "last_error", None) == self.last_error:
            self._report(None)  # type: ignore[arg-type]

    def _commit(self, item: _Item) -> str | None:
        """Enqueue the event built from `item`, or park the record if none can be built (and
        say why); write or drop a checkpoint."""
        if isinstance(item, _Checkpoint):
            if item.records is None:
                self.store.drop_checkpoint(item.run_id)
            else:
                self.store.write_checkpoint(item.run_id, self._checkpoint_body(item))
            return None
        record = item
        try:
            row = self._row(record)
        except _STORE_ERRORS:
            raise
        except Exception as exc:  # a bug or a config problem: keep the record, visibly
            log.exception("timeback: no event could be built from a %s record", type(record).__name__)
            reason = f"not sent: no event could be built ({type(exc).__name__}: {exc})"
            body = json.dumps(record.as_body(), ensure_ascii=False, separators=(",", ":"), default=str)
            digest = hashlib.sha256(f"{type(record).__name__}:{body}".encode()).hexdigest()[:32]
            self.store.park(f"unsent:{digest}", _kind(record), record.run_id, body, reason)
            return reason
        self.store.enqueue_rows([row])
        return None

    def _row(self, record: Record) -> tuple[str, str, str | None, str] | NumberedRow:
        """The outbox row for `record` (raises when no event can be built from it)."""
        return build_row(record, self.target, iso_utc_ms(self.clock.wall_ms()), wire=self.wire)

    def _checkpoint_body(self, item: _Checkpoint) -> str:
        return json.dumps(
            {
                "target": asdict(self.target),
                "wire": self.wire,
                "interval_s": item.interval_s,
                "records": [record_to_json(r) for r in item.records or ()],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    def _report(self, message: str | None, *, passes: bool = False) -> None:
        self.last_error = message
        try:
            with self.store.patience(self.patience):  # its status read must not wait long either
                self.sender.note_error(message, passes=passes)  # type: ignore[arg-type]
        except Exception:
            log.exception("timeback: reporting a delivery problem failed")


def _kind(record: Record) -> str:
    return "completion" if isinstance(record, Completion) else "time"


def build_row(
    record: Record, target: Target, send_time: str, *, wire: str = "caliper"
) -> tuple[str, str, str | None, str] | NumberedRow:
    """The outbox row of a record: a TimeSpentEvent row, or a completion that takes its attempt
    number when it is committed (its id does not depend on the number, so a replayed completion
    is recognized and takes none); in relay mode (`wire="adapter"`) the SDK body the relay
    numbers itself. Raises when no event can be built."""
    if wire == "adapter":
        kind, event_id, body = adapter_body(record, target.user_id)
        return event_id, kind, record.run_id, body
    if isinstance(record, TimeWindow):
        envelope = events.time_spent_envelope(record, target, send_time=send_time)
        return events.event_id(envelope), "time", record.run_id, events.dumps(envelope)

    def build(attempt: int) -> tuple[str, str]:
        envelope = events.completion_envelope(record, target, attempt=attempt, send_time=send_time)
        return events.event_id(envelope), events.dumps(envelope)

    first = events.completion_envelope(record, target, attempt=1, send_time=send_time)
    object_id = first["data"][0]["object"]["id"]
    return NumberedRow("completion", record.run_id, target.user_id, object_id, build)


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
