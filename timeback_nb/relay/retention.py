"""How long the relay keeps what it has delivered, and the pruning that enforces it.

At thousands of heartbeats a second the relay's store grows by gigabytes a day: every
delivered event keeps its body, every accepted window its row. A `Pruner` thread removes,
every few minutes and a thousand rows per transaction, resting between transactions as long
as each took (so the journal's group commits never wait long for the write lock):

- outbox rows delivered before the horizon (queued and rejected rows are never removed);
- accepted windows (`relay_windows`) that ended before it, once their run is that old too;
- run owners (`relay_runs`) older than it with no window left.

What is pruned can no longer tell a resent event from a new one, so the relay refuses what
is that old instead (`plausibility.check_age`, 400 INVALID_PAYLOAD): a window that started,
or a completion that ended, more than the retention ago. Pruning lags that refusal horizon
by `MARGIN_MS`, which covers a kernel clock ahead of the relay's (`SKEW_MS`) and a request
that passed the check but waits for its group commit; so whatever a resent event could be
a duplicate of is still in the store when it is judged, and a window that may still be
accepted can never overlap a pruned one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..clock import iso_utc_ms
from ..errors import ConfigError
from ..store import Store
from ..validation import number_within
from .plausibility import DAY_MS, SKEW_MS

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_RETENTION_DAYS", "Pruned", "Pruner", "retention_ms", "validate_retention_days"]

DEFAULT_RETENTION_DAYS = 7.0
RETENTION_DAYS_RANGE = (1.0, 3650.0)  # at least a day: kernels may hold windows over a relay outage
MARGIN_MS = 3_600_000
assert MARGIN_MS > SKEW_MS
CHUNK_ROWS = 1000  # rows per transaction: ~25 ms of write lock for 1.5 KB events with fsync
INTERVAL_S = 300.0

_SCHEMA = ("CREATE INDEX IF NOT EXISTS relay_runs_created ON relay_runs (created)",)  # one entry per run, not per window


def retention_ms(days: float) -> int:
    """The retention in milliseconds: how far back a window's start or a completion's end may be."""
    return round(days * DAY_MS)


def validate_retention_days(value: Any) -> float:
    """`--retention-days`: a number of days (decimals allowed) within `RETENTION_DAYS_RANGE`."""
    low, high = RETENTION_DAYS_RANGE
    days = number_within(value, low, high)
    if days is None:
        raise ConfigError(
            f"--retention-days: expected a number of days from {low:g} to {high:g}, got {value!r:.40}",
            field="--retention-days",
        )
    return days


@dataclass(frozen=True)
class Pruned:
    """What one pass removed, and in how many transactions."""

    at_ms: int
    outbox: int = 0
    windows: int = 0
    runs: int = 0
    transactions: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"at": iso_utc_ms(self.at_ms), "outbox": self.outbox, "windows": self.windows, "runs": self.runs}


class Pruner:
    """Prunes `store` to `retention_days` every `interval` s on a daemon thread (`start`, an
    idempotent `stop`); `prune()` is one pass, for tests and the thread alike.

    `wall_ms` is the relay's clock (the one its refusal horizon reads); resting at least
    `pause` s between transactions lets the journal's writer take the store first.
    """

    def __init__(
        self, store: Store, retention_days: float, *, wall_ms: Callable[[], int], chunk: int = CHUNK_ROWS,
        interval: float = INTERVAL_S, pause: float = 0.01,
    ) -> None:
        self.store = store
        self.retention_days = retention_days
        self.max_age_ms = retention_ms(retention_days)
        self.chunk = chunk
        self.interval = interval
        self.pause = pause
        self.last: Pruned | None = None
        self._wall_ms = wall_ms
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        with store.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def start(self) -> Pruner:
        if self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="timeback-relay-pruner", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        self._stopped.set()
        if thread is not None:
            thread.join(timeout)

    def prune(self) -> Pruned:
        """One pass: everything past the pruning horizon, a chunk per transaction."""
        now_ms = self._wall_ms()
        before_ms = now_ms - self.max_age_ms - MARGIN_MS
        outbox = windows = runs = transactions = 0
        while not self._stopped.is_set():
            started = time.monotonic()
            removed = self.store.prune_delivered(before_ms / 1000, self.chunk)
            outbox, transactions = outbox + removed, transactions + 1
            if removed < self.chunk:
                break
            self._rest(started)
        cursor: tuple[float, str] = (-1.0, "")  # before any `created`
        while not self._stopped.is_set():
            started = time.monotonic()
            with self.store.transaction() as conn:
                cursor, gone_windows, gone_runs, more = _prune_runs(conn, before_ms, cursor, self.chunk)
            windows, runs, transactions = windows + gone_windows, runs + gone_runs, transactions + 1
            if not more:
                break
            self._rest(started)
        self.last = Pruned(now_ms, outbox, windows, runs, transactions)
        return self.last

    def _rest(self, started: float) -> None:
        """Leave the store to the journal at least as long as the last transaction held it: a
        backlog is pruned with at most half of the write lock's time."""
        self._stopped.wait(max(self.pause, time.monotonic() - started))

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                pruned = self.prune()
            except Exception as exc:  # the next pass tries again; the thread must outlive errors
                log.warning("timeback relay: pruning failed: %s: %s", type(exc).__name__, exc)
                continue
            if pruned.outbox or pruned.windows or pruned.runs:
                log.info(
                    "timeback relay: pruned %d delivered events, %d windows, %d runs older than %g days",
                    pruned.outbox, pruned.windows, pruned.runs, self.retention_days,
                )


def _prune_runs(conn: Any, before_ms: int, cursor: tuple[float, str], budget: int) -> tuple[tuple[float, str], int, int, bool]:
    """Up to `budget` deletions among the runs created before `before_ms`, oldest first from
    `cursor` (created, run_id): each run's windows that ended before it, then the run if none
    is left. Windows are reached through their run (the primary key), so the hot path keeps
    one index per window. Returns the new cursor, windows and runs removed, and whether
    runs are left to look at."""
    before_s = before_ms / 1000
    spent = windows = runs = 0
    rows = conn.execute(
        "SELECT created, run_id FROM relay_runs INDEXED BY relay_runs_created"
        " WHERE created < ? AND (created, run_id) > (?, ?) ORDER BY created, run_id LIMIT ?",
        (before_s, *cursor, budget),
    ).fetchall()
    for created, run_id in rows:
        left = budget - spent
        gone = conn.execute(
            "DELETE FROM relay_windows WHERE run_id = ? AND start_ms IN (SELECT start_ms FROM relay_windows"
            " WHERE run_id = ? AND start_ms < ? AND end_ms < ? ORDER BY start_ms LIMIT ?)",
            (run_id, run_id, before_ms, before_ms, left),
        ).rowcount
        windows, spent = windows + gone, spent + gone
        if gone == left:  # out of budget: this run again next time
            return cursor, windows, runs, True
        if conn.execute("SELECT 1 FROM relay_windows WHERE run_id = ? LIMIT 1", (run_id,)).fetchone() is None:
            runs += conn.execute("DELETE FROM relay_runs WHERE run_id = ?", (run_id,)).rowcount
            spent += 1
        cursor = (float(created), str(run_id))
        if spent >= budget:
            return cursor, windows, runs, True
    return cursor, windows, runs, len(rows) == budget
