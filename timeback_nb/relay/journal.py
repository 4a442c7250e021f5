"""The relay's durable side: who owns each run, which windows were accepted, and the group
commit that puts a request's event in the outbox before the request is answered.

Requests arriving together are committed together: the writer thread takes everything queued,
judges each item against what is already accepted (run ownership, duplicate, overlap, the
student's parallel-time cap) in one SQLite transaction, commits it (one fsync for the group)
and only then answers every request of the group. The stateful rules run here, one item after
another, so two concurrent requests can never both pass a check that only one of them may.
Ownership and accepted windows live in the relay's store file next to the outbox, so they
survive a restart.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Union

from .. import events
from ..clock import iso_utc_ms
from ..delivery import numbered_completion
from ..errors import TimebackError
from ..events import Target
from ..store import Store
from .adapter import AdapterError, Heartbeat, Submit, invalid_payload
from .plausibility import MAX_WINDOW_MS, check_parallel, overlapping

log = logging.getLogger(__name__)

__all__ = ["ACCEPTED", "DUPLICATE", "Journal", "TimeItem", "CompletionItem"]

ACCEPTED = "accepted"
DUPLICATE = "duplicate"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS relay_runs (
        run_id  TEXT PRIMARY KEY,
        user    TEXT NOT NULL,
        created REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS relay_windows (
        run_id    TEXT NOT NULL,
        start_ms  INTEGER NOT NULL,
        end_ms    INTEGER NOT NULL,
        user      TEXT NOT NULL,
        active_ms INTEGER NOT NULL,
        PRIMARY KEY (run_id, start_ms)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS relay_windows_user ON relay_windows (user, start_ms)",
)


@dataclass(frozen=True)
class TimeItem:
    """A heartbeat from `user` (the hub name), to be reported as `target`'s student."""

    user: str
    beat: Heartbeat
    target: Target


@dataclass(frozen=True)
class CompletionItem:
    user: str
    submit: Submit
    target: Target


Item = Union[TimeItem, CompletionItem]
Result = Union[str, AdapterError]  # ACCEPTED, DUPLICATE or the refusal


class Journal:
    """Group commit into `store` on one writer thread; `await journal.commit(item)`.

    `on_commit` is called (on the writer thread) after each group with the number of events
    it enqueued: the sender's `wake`.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_parallel: int = 2,
        on_commit: Callable[[int], None] | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.max_parallel = max_parallel
        self.on_commit = on_commit
        self._wall_ms = wall_ms
        self._queue: queue.SimpleQueue[tuple[Item, asyncio.Future[Result]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._owners: dict[str, str] = {}  # run → user, as committed (this is the store's only writer)
        self.groups = 0  # commits made
        self.accepted = 0  # events committed since this start (for /health)
        with store.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def start(self) -> Journal:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="timeback-relay-journal", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def commit(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item`; the future (of the running loop) resolves once its group is committed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put((item, future))
        return future

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
            self._commit_group(group)

    def _commit_group(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        send_time = iso_utc_ms(self._wall_ms())
        results: list[Result] = []
        claimed: dict[str, str] = {}  # runs first claimed in this group: known once it commits
        try:
            with self.store.transaction() as conn:
                for item, _ in group:
                    try:
                        result = self._judge(conn, item, send_time, claimed)
                    except AdapterError as exc:
                        result = exc
                    except TimebackError as exc:  # e.g. the sensor URL is unusable
                        result = AdapterError(502, "INTERNAL_ERROR", str(exc))
                    results.append(result)
        except Exception as exc:  # nothing of the group is committed: every request is told so
            log.warning("timeback relay: commit failed: %s: %s", type(exc).__name__, exc)
            failure = AdapterError(503, "INTERNAL_ERROR", f"The relay could not store the event: {type(exc).__name__}")
            results = [failure] * len(group)
            claimed = {}
        self._owners.update(claimed)
        if len(self._owners) > 200_000:  # a cache, not the record: the store has them all
            self._owners.clear()
        enqueued = sum(result == ACCEPTED for result in results)
        self.groups += 1
        self.accepted += enqueued
        futures = [future for _, future in group]
        loop = futures[0].get_loop()
        try:
            loop.call_soon_threadsafe(_settle, futures, results)
        except RuntimeError:  # the loop is closed: the service is stopping
            return
        if enqueued and self.on_commit is not None:
            try:
                self.on_commit(enqueued)
            except Exception:  # the writer thread must outlive its observers
                log.exception("timeback relay: on_commit failed")

    def _owner(self, conn: Any, run_id: str, claimed: dict[str, str]) -> str | None:
        owner = self._owners.get(run_id) or claimed.get(run_id)
        if owner is None:
            row = conn.execute("SELECT user FROM relay_runs WHERE run_id = ?", (run_id,)).fetchone()
            owner = None if row is None else str(row[0])
            if owner is not None:
                self._owners[run_id] = owner
        return owner

    def _claim(self, conn: Any, run_id: str, user: str, claimed: dict[str, str]) -> bool:
        """Check that `run_id` is `user`'s (403 if another user's); True if nobody had it yet.
        Nothing is written here: the caller claims it only if the request is accepted."""
        owner = self._owner(conn, run_id, claimed)
        if owner is not None and owner != user:
            raise AdapterError(403, "FORBIDDEN", "This runId belongs to another user")
        return owner is None

    def _record_owner(self, conn: Any, run_id: str, user: str, claimed: dict[str, str]) -> None:
        conn.execute("INSERT INTO relay_runs (run_id, user, created) VALUES (?, ?, ?)", (run_id, user, time.time()))
        claimed[run_id] = user

    def _judge(self, conn: Any, item: Item, send_time: str, claimed: dict[str, str]) -> Result:
        """Every check first, then the writes: a refused item writes nothing."""
        if isinstance(item, CompletionItem):
            return self._complete(conn, item, send_time, claimed)
        beat = item.beat
        run_id = beat.window.run_id
        new_run = self._claim(conn, run_id, item.user, claimed)
        # Windows last at most MAX_WINDOW_MS, so only those starting that much earlier can
        # overlap; the same start is the same window (the SDK's de-duplication key).
        earliest = beat.started_ms - MAX_WINDOW_MS
        same_run = conn.execute(
            "SELECT start_ms, end_ms FROM relay_windows WHERE run_id = ? AND start_ms > ? AND start_ms < ?",
            (run_id, earliest, beat.ended_ms),
        ).fetchall()
        if any(start == beat.started_ms for start, _ in same_run):
            return DUPLICATE
        clash = overlapping(beat, same_run)
        if clash is not None:
            raise _overlap(clash)
        if beat.window.elapsed_ms > 0:
            others = conn.execute(
                "SELECT start_ms, end_ms, active_ms FROM relay_windows WHERE user = ? AND start_ms > ? AND start_ms < ?",
                (item.user, earliest, beat.ended_ms),
            ).fetchall()
            check_parallel(beat, others, self.max_parallel)
        envelope = events.time_spent_envelope(beat.window, item.target, send_time=send_time)
        if new_run:
            self._record_owner(conn, run_id, item.user, claimed)
        conn.execute(
            "INSERT INTO relay_windows (run_id, start_ms, end_ms, user, active_ms) VALUES (?, ?, ?, ?, ?)",
            (run_id, beat.started_ms, beat.ended_ms, item.user, beat.window.elapsed_ms),
        )
        if not self.store.enqueue(events.event_id(envelope), "time", run_id, events.dumps(envelope)):
            return DUPLICATE
        return ACCEPTED

    def _complete(self, conn: Any, item: CompletionItem, send_time: str, claimed: dict[str, str]) -> Result:
        completion = item.submit.completion
        assert completion.run_id is not None
        if self._claim(conn, completion.run_id, item.user, claimed):
            self._record_owner(conn, completion.run_id, item.user, claimed)
        envelope = numbered_completion(completion, item.target, self.store, send_time=send_time)
        if not item.submit.process:
            envelope["data"][0]["object"]["process"] = False  # the id does not depend on it
        if not self.store.enqueue(events.event_id(envelope), "completion", completion.run_id, events.dumps(envelope)):
            return DUPLICATE
        return ACCEPTED


def _overlap(clash: tuple[int, int]) -> AdapterError:
    start, end = (iso_utc_ms(ms) for ms in clash)
    return invalid_payload("startedAt", f"The window overlaps an accepted window of this run ({start} to {end})")


def _settle(futures: list[asyncio.Future[Result]], results: list[Result | BaseException]) -> None:
    for future, result in zip(futures, results):
        if not future.done():  # the client may have gone away
            future.set_result(result)  # type: ignore[arg-type]
