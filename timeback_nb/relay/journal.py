"""The relay's durable side: who owns each run, which windows were accepted, and the group
commit that puts a request's event in the outbox before the request is answered.

`Journal.commit_group` judges a group of requests (each with its event already built, see
`prepare`) against what is already accepted (run ownership, duplicate, overlap, the student's
parallel-time cap) in one SQLite transaction and commits it: one fsync for the group. The
stateful rules run one item after another, so two concurrent requests can never both pass a
check that only one of them may. Ownership and accepted windows live in the relay's store file
next to the outbox, so they survive a restart. Who calls it: `StoreSide.commit_built` (`writer.py`),
in the relay's writer process, or fed by a `GroupThread` when the whole relay runs in one process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Union

from .. import events
from ..clock import iso_utc_ms
from ..delivery import build_row
from ..errors import TimebackError
from ..events import Target
from ..store import NewRow, NumberedRow, Store, insert_rows
from .adapter import AdapterError, Heartbeat, Submit, invalid_payload
from .plausibility import MAX_WINDOW_MS, check_parallel

log = logging.getLogger(__name__)

__all__ = ["ACCEPTED", "DUPLICATE", "CompletionItem", "GroupThread", "Journal", "TimeItem", "not_stored", "prepare", "settle"]

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
    # Covering: a request's one query (a student's windows that meet its own) reads the index only.
    "DROP INDEX IF EXISTS relay_windows_user",
    "CREATE INDEX IF NOT EXISTS relay_windows_by_user ON relay_windows (user, start_ms, end_ms, active_ms)",
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
Prepared = tuple[Item, NewRow]  # a request and its outbox row


class Journal:
    """The group commit into `store`; `on_commit` is called after each group with the number
    of events it enqueued (the sender's `wake`)."""

    def __init__(self, store: Store, *, max_parallel: int = 2, on_commit: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.max_parallel = max_parallel
        self.on_commit = on_commit
        self._owners: dict[str, str] = {}  # run → user, as committed (this is the store's only writer)
        self.accepted = 0  # events committed since this start (for /health)
        with store.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def has_window(self, user: str, run_id: str, start_ms: int) -> bool:
        """Whether `user`'s window of `run_id` starting at `start_ms` was accepted."""
        with self.store.transaction() as conn:
            found = conn.execute(
                "SELECT 1 FROM relay_windows WHERE run_id = ? AND start_ms = ? AND user = ?", (run_id, start_ms, user)
            ).fetchone()
        return found is not None

    def commit_group(self, group: list[Prepared]) -> list[Result]:
        """Judge and commit `group`, in order; a result per item. When the commit fails, nothing
        of the group is stored and every item gets the same 503."""
        try:
            with self.store.transaction(durable=True) as conn:
                judge = _GroupJudge(conn, self._owners, self.max_parallel, [item for item, _ in group])
                results = [judge.judge(item, row) for item, row in group]
                judge.write()
        except Exception as exc:
            log.warning("timeback relay: commit failed: %s: %s", type(exc).__name__, exc)
            return [not_stored(type(exc).__name__)] * len(group)
        if len(self._owners) > 200_000:  # a cache, not the record: the store has them all
            self._owners.clear()
        self._owners.update(judge.owners())
        enqueued = sum(result == ACCEPTED for result in results)
        self.accepted += enqueued
        if enqueued and self.on_commit is not None:
            try:
                self.on_commit(enqueued)
            except Exception:  # the group is committed: its answers must still go out
                log.exception("timeback relay: on_commit failed")
        return results


def not_stored(why: str) -> AdapterError:
    """The answer to a request whose group could not be committed (503: the kernel retries)."""
    return AdapterError(503, "INTERNAL_ERROR", f"The relay could not store the event: {why}")


def prepare(item: Item, send_time: str) -> Prepared:
    """`item` with its outbox row: its TimeSpentEvent, or its completion to number on commit.
    Built before the group commit, so the writer holds the store only for SQLite."""
    try:
        if isinstance(item, TimeItem):
            return item, build_row(item.beat.window, item.target, send_time)
        row = build_row(item.submit.completion, item.target, send_time)
    except TimebackError as exc:  # e.g. the sensor URL is unusable
        raise AdapterError(502, "INTERNAL_ERROR", str(exc)) from exc
    assert isinstance(row, NumberedRow)
    return item, (row if item.submit.process else _unprocessed(row))


class GroupThread:
    """Group commit from the event loop when the relay runs in one process (`link.WriterLink`
    is the writer process's counterpart): `await group_thread.commit(x)` queues `x`; a thread of
    its own passes every `x` queued while the last group was committing to `commit_group`
    (`StoreSide.commit`) at once and answers each request. The loop never waits for it, and it
    takes the next group the moment the last one is done."""

    def __init__(self, commit_group: Callable[[list[Any]], list[Result]]) -> None:
        self._commit_group = commit_group
        self._queue: queue.SimpleQueue[tuple[Any, asyncio.Future[Result]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.groups = 0  # groups committed (tests count them)

    def start(self) -> GroupThread:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="timeback-relay-journal", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def queued(self) -> int:
        """Requests waiting for the thread."""
        return self._queue.qsize()

    async def commit(self, x: Any) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put((x, future))
        return await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while True:  # everything that queued while the last group committed
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
            results = self._commit_group([x for x, _ in group])
            self.groups += 1
            futures = [future for _, future in group]
            try:
                futures[0].get_loop().call_soon_threadsafe(settle, futures, results)
            except RuntimeError:  # the loop is closed: the service is stopping
                return


class _GroupJudge:
    """One group's judging, inside its transaction: what the store knows is read for the whole
    group up front (two statements, not a few per request), each item is judged in order
    against that and the group's earlier items, and the writes go in together at the end
    (`write`; a completion's outbox row in its place, after the rows before it). Every check of
    an item comes before its writes: a refused item writes nothing."""

    def __init__(self, conn: Any, owners: dict[str, str], max_parallel: int, items: list[Item]) -> None:
        self.conn = conn
        self.max_parallel = max_parallel
        self.claimed: dict[str, str] = {}  # runs first claimed in this group (cached once committed)
        self._cached = owners
        self._stored = _stored_owners(conn, [_run_of(i) for i in items if _run_of(i) not in owners])
        self._met = _stored_windows(conn, [i for i in items if isinstance(i, TimeItem)])
        self._runs: list[tuple[str, str, float]] = []
        self._windows: list[tuple[str, int, int, str, int]] = []
        self._rows: list[NewRow] = []

    def owners(self) -> dict[str, str]:
        """The runs this group read or claimed, for the cache once it is committed."""
        return {**self._stored, **self.claimed}

    def judge(self, item: Item, row: NewRow) -> Result:
        try:
            if isinstance(item, CompletionItem):
                return self._complete(item, row)
            return self._time(item, row)
        except AdapterError as exc:
            return exc

    def write(self) -> None:
        self.conn.executemany("INSERT INTO relay_runs (run_id, user, created) VALUES (?, ?, ?)", self._runs)
        self.conn.executemany(
            "INSERT INTO relay_windows (run_id, start_ms, end_ms, user, active_ms) VALUES (?, ?, ?, ?, ?)", self._windows
        )
        insert_rows(self.conn, self._rows)
        self._rows = []

    def _claim(self, run_id: str, user: str) -> None:
        """403 if `run_id` is another user's; the run becomes `user`'s if it was nobody's (the
        caller claims only for a request it accepts)."""
        owner = self._owner(run_id)
        if owner is not None and owner != user:
            raise AdapterError(403, "FORBIDDEN", "This runId belongs to another user")

    def _owner(self, run_id: str) -> str | None:
        return self._cached.get(run_id) or self._stored.get(run_id) or self.claimed.get(run_id)

    def _own(self, run_id: str, user: str) -> None:
        if self._owner(run_id) is None:
            self.claimed[run_id] = user
            self._runs.append((run_id, user, time.time()))

    def _time(self, item: TimeItem, row: NewRow) -> Result:
        beat = item.beat
        run_id = beat.window.run_id
        self._claim(run_id, item.user)
        start, end = beat.started_ms, beat.ended_ms
        others = []
        # The student's accepted windows that meet this one, from every run (a run is one
        # student's, so its own windows are among them).
        for other_run, other_start, other_end, active in self._met.get(item.user, ()):
            if other_start >= end or other_end <= start or other_start <= start - MAX_WINDOW_MS:
                continue
            if other_run != run_id:
                others.append((other_start, other_end, active))
            elif other_start == start:  # the SDK's de-duplication key: the same window
                return DUPLICATE
            else:
                raise _overlap((other_start, other_end))
        if others and beat.window.elapsed_ms > 0:
            check_parallel(beat, others, self.max_parallel)
        self._own(run_id, item.user)
        self._met.setdefault(item.user, []).append((run_id, start, end, beat.window.elapsed_ms))
        self._windows.append((run_id, start, end, item.user, beat.window.elapsed_ms))
        self._rows.append(row)
        return ACCEPTED

    def _complete(self, item: CompletionItem, row: NewRow) -> Result:
        run_id = item.submit.completion.run_id
        assert run_id is not None
        self._claim(run_id, item.user)
        self._own(run_id, item.user)
        # The rows before it go first (outbox order is send order); the attempt number is taken
        # in this transaction, with the row (none for a replay, which is then a duplicate).
        insert_rows(self.conn, self._rows)
        self._rows = []
        return ACCEPTED if insert_rows(self.conn, [row]) else DUPLICATE


_CHUNK = 200  # items per statement (four parameters each; SQLite allows 32,766)


def _run_of(item: Item) -> str:
    run_id = item.beat.window.run_id if isinstance(item, TimeItem) else item.submit.completion.run_id
    assert run_id is not None
    return run_id


def _stored_owners(conn: Any, run_ids: list[str]) -> dict[str, str]:
    unique = list(dict.fromkeys(run_ids))
    owners: dict[str, str] = {}
    for at in range(0, len(unique), _CHUNK):
        part = unique[at : at + _CHUNK]
        marks = ",".join("?" * len(part))
        owners.update(conn.execute(f"SELECT run_id, user FROM relay_runs WHERE run_id IN ({marks})", part).fetchall())
    return owners


def _stored_windows(conn: Any, items: list[TimeItem]) -> dict[str, list[tuple[str, int, int, int]]]:
    """user → that user's accepted windows meeting any of the items' windows. Windows last at
    most MAX_WINDOW_MS, so only those starting that much earlier can reach one."""
    met: dict[str, set[tuple[str, int, int, int]]] = {}
    for at in range(0, len(items), _CHUNK):
        part = items[at : at + _CHUNK]
        params = [v for i in part for v in (i.user, i.beat.started_ms - MAX_WINDOW_MS, i.beat.ended_ms, i.beat.started_ms)]
        rows = conn.execute(
            f"WITH q (user, lo, hi, s) AS (VALUES {','.join(['(?, ?, ?, ?)'] * len(part))})"
            " SELECT w.user, w.run_id, w.start_ms, w.end_ms, w.active_ms FROM q JOIN relay_windows w"
            " ON w.user = q.user AND w.start_ms > q.lo AND w.start_ms < q.hi AND w.end_ms > q.s",
            params,
        ).fetchall()
        for user, *window in rows:
            met.setdefault(user, set()).add(tuple(window))  # type: ignore[arg-type]
    return {user: sorted(windows) for user, windows in met.items()}


def _unprocessed(row: NumberedRow) -> NumberedRow:
    """The completion with `process: false` (the SDK's submit option); its id does not depend on it."""

    def build(attempt: int) -> tuple[str, str]:
        event_id, body = row.build(attempt)
        envelope = json.loads(body)
        envelope["data"][0]["object"]["process"] = False
        return event_id, events.dumps(envelope)

    return NumberedRow(row.kind, row.run_id, row.user_key, row.object_id, build)


def _overlap(clash: tuple[int, int]) -> AdapterError:
    start, end = (iso_utc_ms(ms) for ms in clash)
    return invalid_payload("startedAt", f"The window overlaps an accepted window of this run ({start} to {end})")


def settle(futures: list[asyncio.Future[Result]], results: list[Result]) -> None:
    """Answer each waiting request with its result, on the loop's thread."""
    for future, result in zip(futures, results):
        if not future.done():  # the client may have gone away
            future.set_result(result)
