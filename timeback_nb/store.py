"""The one SQLite file every kernel of a user shares: runs, attempts, user ids, the outbox.

WAL mode lets readers and one writer work at once across processes; `busy_timeout` makes a
writer wait for another process's write instead of failing. Every write is one short
transaction, committed before the method returns, so a killed kernel loses nothing it had
handed over. `synchronous=NORMAL` keeps commits durable across process crashes (the case that
matters in a notebook) without an fsync per event; only an OS crash or power cut can lose
the last commits.

Outbox rows are *leased*: a sender claims rows for `lease_seconds` (renewing while it works),
so two kernels never send the same row at once, and a killed kernel's rows are taken over
once its lease runs out. Rows of one run are handed out in `seq` order only: a row is never
claimed while an older queued row of the same run is held by someone else or waiting out a
retry delay. A row may also carry a *hold* (`hold_until`): the endpoint's Retry-After, which
every process honours and no flush cuts short.

Lease ends, retry delays and holds are readings of the host's monotonic clock
(`clock.host_now`), passed in by the caller as `now`, so a wall-clock step changes none of
them. The store remembers which boot of the host wrote them (`clock.host_boot_id`); opened
after a reboot, it frees every lease and hold of the earlier boot, whose clock meant nothing.

A store that fails (locked for long, read-only, full, deleted under the kernel) raises
`StoreError` naming the file and the cause, never a raw `sqlite3` error. The kernel's own writes
run under `patience(seconds)`, so a locked file costs them a bounded wait, not the busy timeout.
A file deleted while open is noticed before the next write: the store reopens at its path and
carries over what was not delivered yet, instead of writing into a file nobody can see. The
carried rows get new seqs, so leased rows are renewed, released and marked by event id.

*Checkpoints* (one row per run) hold what a kernel would hand on if it died now: the windows it
holds open and a due completion. A later process adopts the checkpoint of a dead one
(`timeback_nb.recovery`).

No secret or token is ever written here; bodies are the events exactly as sent.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .clock import host_boot_id
from .errors import ConfigError, StateError, StoreError, invalid

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 10_000
STATES = ("queued", "delivered", "rejected")

# Each entry upgrades the schema from version i to i + 1; append, never edit.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY,
        user_key    TEXT NOT NULL,
        activity_id TEXT NOT NULL,
        course_key  TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        ended_at    TEXT,
        created     REAL NOT NULL
    );
    CREATE INDEX runs_open ON runs (user_key, activity_id, course_key, created);
    CREATE TABLE attempts (
        user_key  TEXT NOT NULL,
        object_id TEXT NOT NULL,
        attempt   INTEGER NOT NULL,
        PRIMARY KEY (user_key, object_id)
    );
    CREATE TABLE users (
        email   TEXT NOT NULL,
        env     TEXT NOT NULL,
        user_id TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (email, env)
    );
    CREATE TABLE outbox (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id    TEXT NOT NULL UNIQUE,
        kind        TEXT NOT NULL,
        run_id      TEXT,
        body        TEXT NOT NULL,
        state       TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'delivered', 'rejected')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        reason      TEXT,
        lease_owner TEXT,
        lease_until REAL,
        created     REAL NOT NULL,
        updated     REAL NOT NULL
    );
    CREATE INDEX outbox_queued ON outbox (seq) WHERE state = 'queued';
    CREATE INDEX outbox_queued_run ON outbox (run_id, seq) WHERE state = 'queued';
    CREATE INDEX outbox_state ON outbox (state, lease_until);
    CREATE TABLE events (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        body     TEXT NOT NULL,
        received REAL NOT NULL
    );
    """,
    # Every run is listed (`timeback-nb runs`); only stateful ones are resumed by a later start.
    """
    ALTER TABLE runs ADD COLUMN stateful INTEGER NOT NULL DEFAULT 1;
    """,
    # Lease ends and delays move from the wall clock to the host's monotonic clock (the old
    # values mean nothing there: free them); a row keeps the endpoint's Retry-After as a hold.
    """
    ALTER TABLE outbox ADD COLUMN hold_until REAL;
    UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE state = 'queued';
    CREATE TABLE host (boot_id TEXT NOT NULL);
    """,
    # What a running kernel would hand on if it died now (see timeback_nb.recovery).
    """
    CREATE TABLE checkpoints (
        run_id     TEXT PRIMARY KEY,
        owner_host TEXT NOT NULL,
        owner_pid  INTEGER NOT NULL,
        body       TEXT NOT NULL,
        updated    REAL NOT NULL
    );
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


Connect = Callable[[Path, float], sqlite3.Connection]


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)


@dataclass(frozen=True)
class Checkpoint:
    """One run's checkpoint row as `Store.checkpoints` lists it."""

    run_id: str
    owner_host: str
    owner_pid: int
    body: str
    updated: float


# Builds a completion's (event_id, body) for an attempt number; the id must not depend on it.
NumberedBuild = Callable[[int], tuple[str, str]]


@dataclass(frozen=True)
class NumberedRow:
    """A completion to insert with the next attempt number of (user_key, object_id)."""

    kind: str
    run_id: str | None
    user_key: str
    object_id: str
    build: NumberedBuild


# A row to insert with `Store.enqueue_rows`: (event_id, kind, run_id, body), or a completion.
NewRow = Union[tuple[str, str, Optional[str], str], NumberedRow]


@dataclass(frozen=True)
class Row:
    """One outbox row as handed to a sender by `Store.lease`."""

    seq: int
    event_id: str
    kind: str
    run_id: str | None
    body: str
    attempts: int


def _free(alias: str) -> str:
    """SQL: the row is free for :owner: nobody holds it (or the lease or retry delay ran out),
    or :owner itself holds it; and the endpoint's hold on it, if any, is over. `IS` because
    lease_owner is NULL for rows nobody holds."""
    return (
        f"(({alias}.lease_until IS NULL OR {alias}.lease_until <= :now OR {alias}.lease_owner IS :owner)"
        f" AND ({alias}.hold_until IS NULL OR {alias}.hold_until <= :now))"
    )


_BLOCKED_BY_OLDER = f"""EXISTS (
    SELECT 1 FROM outbox p
    WHERE p.state = 'queued' AND p.run_id = o.run_id AND p.seq < o.seq AND NOT {_free("p")})"""

# In seq order through the queued-rows index, so that LIMIT ends the scan early (a plan that
# sorts all queued rows makes draining a large backlog quadratic).
_LEASE_SQL = (
    "SELECT o.seq, o.event_id, o.kind, o.run_id, o.body, o.attempts FROM outbox o INDEXED BY outbox_queued"
    f" WHERE o.state = 'queued' AND {_free('o')} AND (o.run_id IS NULL OR NOT {_BLOCKED_BY_OLDER})"
    " ORDER BY o.seq LIMIT :limit"
)


class Store:
    """The SQLite file at `path` (parent directories are created).

    Safe to share between threads (one connection, guarded by a lock) and between processes
    (WAL + busy timeout). `close()` is idempotent; the store is also a context manager.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, connect: Connect = _connect,
    ) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._connect = connect  # the seam tests use to inject faults (tests/store_faults.py)
        self._local = threading.local()  # this thread's patience, if any
        self._holder: tuple[str, float] = ("", 0.0)  # the call holding the lock, since when
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._timeout_ms = self._busy_timeout_ms  # what the connection's busy_timeout is now
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        """A connection to a migrated store at `self.path` (ConfigError when impossible)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect(self.path, self._busy_timeout_ms / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"TIMEBACK_NB_STORE: cannot open the store at '{self.path}': {exc}", field="TIMEBACK_NB_STORE"
            ) from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("store %s: journal_mode is %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
            self._inode = self._file_id()
            self._timeout_ms = self._busy_timeout_ms
        except ConfigError:
            conn.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            conn.close()
            raise ConfigError(
                f"TIMEBACK_NB_STORE: '{self.path}' is not a usable timeback_nb store: {exc}",
                field="TIMEBACK_NB_STORE",
            ) from exc
        return conn

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"store: '{self.path}' is closed")
        return self._conn

    @contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Within this block, this thread's store calls wait at most about `seconds` for the
        store (another thread's call, another process's write lock), then raise StoreError."""
        outer = getattr(self._local, "patience", None)
        self._local.patience = seconds if outer is None else min(outer, seconds)
        try:
            yield
        finally:
            self._local.patience = outer

    @contextmanager
    def _using(self, what: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for one call; sqlite and OS errors become StoreError."""
        patience = getattr(self._local, "patience", None)
        if not self._lock.acquire(timeout=-1 if patience is None else patience):
            holder, since = self._holder
            raise StoreError(
                f"store '{self.path}': {what} failed: busy for {patience:g} s: another call ({holder}) has"
                f" waited {time.monotonic() - since:.1f} s for the file; is another process holding its write lock?",
                field="TIMEBACK_NB_STORE",
            )
        self._holder = (what, time.monotonic())
        try:
            if write:
                self._follow_the_file()
            conn = self._open_conn()
            # Set only when it changes: a kernel's writes in a row share one patience, and a
            # pragma is a statement of its own on the heartbeat's path.
            timeout_ms = self._busy_timeout_ms if patience is None else int(patience * 1000)
            if timeout_ms != self._timeout_ms:
                conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
                self._timeout_ms = timeout_ms
            yield conn
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"store '{self.path}': {what} failed: {exc}", field="TIMEBACK_NB_STORE") from exc
        finally:
            self._lock.release()

    @contextmanager
    def _tx(self, what: str = "write", *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction of several statements; it takes the database write lock up front
        (BEGIN IMMEDIATE), so it never fails half-way on another process's lock. Inside an
        open transaction it is a savepoint: it joins the outer commit (see `transaction`).
        `durable`: the commit is fsynced (synchronous=FULL for this one transaction; SQLite
        takes the level only outside a transaction)."""
        with self._using(what, write=True) as conn:
            if conn.in_transaction:
                conn.execute("SAVEPOINT nested")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK TO nested")
                    conn.execute("RELEASE nested")
                    raise
                conn.execute("RELEASE nested")
                return
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if durable and self._conn is conn:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def transaction(self, *, durable: bool = False) -> Any:
        """One commit around many calls (`with store.transaction() as conn:`): every method
        called inside, on this thread, joins it, and nothing is durable before it ends. The
        relay commits a group of requests' events this way, `durable` (fsynced: it survives a
        power cut, not only a killed process), before answering any of them; rows go in with
        `insert_rows(conn, rows)`."""
        return self._tx(durable=durable)

    def _query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """One read. A single statement is atomic on its own: no BEGIN/COMMIT round trips."""
        with self._using("read", write=False) as conn:
            return conn.execute(sql, params).fetchall()

    def _write(self, sql: str, params: Any = ()) -> int:
        """One write statement, committed (autocommit) before this returns; the rows changed."""
        with self._using("write", write=True) as conn:
            return conn.execute(sql, params).rowcount

    def _follow_the_file(self) -> None:
        """The file was deleted (or replaced) while open: writing on would go to a file no other
        process can see. Reopen at the path and carry over what matters (lock held)."""
        if self._conn is None or self._file_id() == self._inode:
            return
        old = self._conn
        try:
            new = self._open()
        except ConfigError as exc:
            raise OSError(f"the file was deleted and cannot be made again: {exc}") from exc
        log.warning("store %s: the file was deleted or replaced while open; reopened it", self.path)
        try:
            _carry_over(old, new)
        finally:
            old.close()
            self._conn = new

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"TIMEBACK_NB_STORE: '{self.path}' has schema version {version}, newer than this "
                    f"timeback_nb understands ({SCHEMA_VERSION}); upgrade timeback_nb",
                    field="TIMEBACK_NB_STORE",
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._check_boot(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _check_boot(conn: sqlite3.Connection) -> None:
        """Free the leases and holds an earlier boot of the host left: they are readings of a
        monotonic clock that started again from zero (inside the migration's transaction)."""
        boot = host_boot_id()
        row = conn.execute("SELECT boot_id FROM host").fetchone()
        if row is not None and row[0] == boot:
            return
        if row is not None:
            log.info("store: written before the host restarted; freeing its leases and holds")
            conn.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, hold_until = NULL WHERE state = 'queued'"
            )
        conn.execute("DELETE FROM host")
        conn.execute("INSERT INTO host (boot_id) VALUES (?)", (boot,))

    # -- runs (stateful runIds) ----------------------------------------------------------------

    def open_run(self, user_key: str, activity_id: str, course_key: str) -> str | None:
        """The newest stateful run of this user, activity and course that no completion has closed."""
        rows = self._query(
            "SELECT run_id FROM runs WHERE user_key = ? AND activity_id = ? AND course_key = ?"
            " AND ended_at IS NULL AND stateful = 1 ORDER BY created DESC, rowid DESC LIMIT 1",
            (user_key, activity_id, course_key),
        )
        return str(rows[0][0]) if rows else None

    def remember_run(
        self, user_key: str, activity_id: str, course_key: str, run_id: str, started_at: str,
        *, stateful: bool = True,
    ) -> None:
        self._write(
            "INSERT OR IGNORE INTO runs (run_id, user_key, activity_id, course_key, started_at, created, stateful)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, user_key, activity_id, course_key, started_at, time.time(), int(stateful)),
        )

    def close_run(self, run_id: str, ended_at: str) -> None:
        self._write("UPDATE runs SET ended_at = ? WHERE run_id = ? AND ended_at IS NULL", (ended_at, run_id))

    def runs(self) -> list[dict[str, Any]]:
        """Every remembered run, newest first (for `timeback-nb runs`)."""
        rows = self._query(
            "SELECT run_id, user_key, activity_id, course_key, started_at, ended_at, stateful FROM runs"
            " ORDER BY created DESC, rowid DESC"
        )
        return [dict(r) for r in rows]

    # -- attempts and users --------------------------------------------------------------------

    def next_attempt(self, user_key: str, object_id: str) -> int:
        """1, 2, ... per user and activity; two kernels never get the same number."""
        with self._tx("taking an attempt number") as conn:
            return _take_attempt(conn, user_key, object_id)

    def cached_user_id(self, email: str, env: str) -> str | None:
        rows = self._query("SELECT user_id FROM users WHERE email = ? AND env = ?", (email, env))
        return str(rows[0][0]) if rows else None

    def remember_user_id(self, email: str, env: str, user_id: str) -> None:
        self._write(
            "INSERT INTO users (email, env, user_id, updated) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (email, env) DO UPDATE SET user_id = excluded.user_id, updated = excluded.updated",
            (email, env, user_id, time.time()),
        )

    # -- outbox --------------------------------------------------------------------------------

    def enqueue(self, event_id: str, kind: str, run_id: str | None, body: str) -> bool:
        """Commit one event to the outbox; False when `event_id` is already there (a replay)."""
        return self._insert(event_id, kind, run_id, body, "queued", None)

    def known(self, event_id: str) -> bool:
        """Whether the outbox already has a row with this event id."""
        return bool(self._query("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)))

    def park(self, event_id: str, kind: str, run_id: str | None, body: str, reason: str) -> bool:
        """Keep something that cannot be sent (e.g. a record no event could be built from) as
        a *rejected* row, so it is shown and never silently dropped."""
        return self._insert(event_id, kind, run_id, body, "rejected", reason)

    def _insert(
        self, event_id: str, kind: str, run_id: str | None, body: str, state: str, reason: str | None
    ) -> bool:
        if not isinstance(body, str):
            raise invalid("body", f"must be the event JSON as str, got {type(body).__name__}")
        now = time.time()
        changed = self._write(
            "INSERT OR IGNORE INTO outbox (event_id, kind, run_id, body, state, reason, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, kind, run_id, body, state, reason, now, now),
        )
        return changed == 1

    def enqueue_rows(self, rows: list[NewRow], *, drop_checkpoint: str | None = None) -> int:
        """Commit several events in one transaction, in order: plain rows (event_id, kind,
        run_id, body) and completions that take their attempt number in the same transaction
        (a failed write uses up no number; a replayed completion takes none). With
        `drop_checkpoint`, that run's checkpoint goes in the same transaction. Returns how many
        rows were new."""
        if drop_checkpoint is None and len(rows) == 1 and not isinstance(rows[0], NumberedRow):
            return int(self._insert(*rows[0], "queued", None))  # one statement: no transaction needed
        with self._tx("committing events") as conn:
            added = insert_rows(conn, rows)
            if drop_checkpoint is not None:
                conn.execute("DELETE FROM checkpoints WHERE run_id = ?", (drop_checkpoint,))
        return added

    # -- checkpoints ---------------------------------------------------------------------------

    def write_checkpoint(self, run_id: str, body: str) -> None:
        """Replace this process's checkpoint of `run_id`."""
        self._write(
            "INSERT INTO checkpoints (run_id, owner_host, owner_pid, body, updated) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET owner_host = excluded.owner_host,"
            " owner_pid = excluded.owner_pid, body = excluded.body, updated = excluded.updated",
            (run_id, socket.gethostname(), os.getpid(), body, time.time()),
        )

    def drop_checkpoint(self, run_id: str) -> None:
        self._write("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._query("SELECT run_id, owner_host, owner_pid, body, updated FROM checkpoints ORDER BY updated")
        return [Checkpoint(r[0], r[1], int(r[2]), r[3], float(r[4])) for r in rows]

    def adopt_checkpoint(self, checkpoint: Checkpoint, rows: list[NewRow], ended_at: str | None) -> int | None:
        """Commit a dead process's checkpointed events and drop its checkpoint in one
        transaction, unless someone adopted it (or its owner rewrote it) meanwhile (None then);
        with `ended_at` (its completion), the run is closed too. Returns the rows added."""
        with self._tx("adopting a checkpoint") as conn:
            dropped = conn.execute(
                "DELETE FROM checkpoints WHERE run_id = ? AND updated = ? AND owner_pid = ? AND owner_host = ?",
                (checkpoint.run_id, checkpoint.updated, checkpoint.owner_pid, checkpoint.owner_host),
            ).rowcount
            if not dropped:
                return None
            added = insert_rows(conn, rows)
            if ended_at is not None:
                conn.execute(
                    "UPDATE runs SET ended_at = ? WHERE run_id = ? AND ended_at IS NULL", (ended_at, checkpoint.run_id)
                )
        return added

    def lease(self, owner: str, now: float, lease_seconds: float, limit: int) -> list[Row]:
        """Claim up to `limit` of the oldest free queued rows for `owner` until
        `now + lease_seconds`, in seq order and never past an older row of the same run that
        someone else holds or that is waiting out a retry delay."""
        params = {"owner": owner, "now": now, "until": now + lease_seconds, "limit": limit}
        with self._tx() as conn:
            rows = conn.execute(_LEASE_SQL, params).fetchall()
            conn.executemany(
                "UPDATE outbox SET lease_owner = :owner, lease_until = :until WHERE seq = :seq",
                [dict(params, seq=r["seq"]) for r in rows],
            )
        return [Row(r["seq"], r["event_id"], r["kind"], r["run_id"], r["body"], r["attempts"]) for r in rows]

    # renew, release and the marks name leased rows by event id, never by seq: a file replaced
    # under the store is reopened and its queued rows carried over under new seqs
    # (`_follow_the_file`), so an old seq may by then be another process's event, which a mark
    # would wrongly finish.

    def renew(self, owner: str, event_ids: list[str], now: float, lease_seconds: float) -> int:
        """Extend `owner`'s leases on the rows of `event_ids`; returns how many it still held."""
        with self._tx() as conn:
            cur = conn.executemany(
                "UPDATE outbox SET lease_until = ? WHERE event_id = ? AND lease_owner = ? AND state = 'queued'",
                [(now + lease_seconds, event_id, owner) for event_id in _event_ids(event_ids)],
            )
        return cur.rowcount

    def release(self, owner: str, event_ids: list[str]) -> None:
        """Give back leased rows that were not attempted, so anyone may take them now."""
        with self._tx() as conn:
            conn.executemany(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL"
                " WHERE event_id = ? AND lease_owner = ? AND state = 'queued'",
                [(event_id, owner) for event_id in _event_ids(event_ids)],
            )

    def mark_delivered(self, event_id: str) -> None:
        self.mark_delivered_many([event_id])

    def mark_delivered_many(self, event_ids: list[str]) -> None:
        """`mark_delivered` for the rows of one batch: one statement per 500 of them."""
        event_ids = _event_ids(event_ids)
        for start in range(0, len(event_ids), 500):  # SQLite's host parameters are limited
            part = event_ids[start : start + 500]
            # `+state`: without it SQLite walks the state index through every queued row for a
            # list of ids, and draining a backlog turns quadratic; this way, one probe per id.
            self._write(
                "UPDATE outbox SET state = 'delivered', reason = NULL, attempts = attempts + 1, lease_owner = NULL,"
                f" lease_until = NULL, updated = ? WHERE event_id IN ({','.join('?' * len(part))}) AND +state = 'queued'",
                (time.time(), *part),
            )

    def mark_rejected(self, event_id: str, reason: str) -> None:
        (event_id,) = _event_ids([event_id])
        self._write(
            "UPDATE outbox SET state = 'rejected', reason = ?, attempts = attempts + 1, lease_owner = NULL,"
            " lease_until = NULL, updated = ? WHERE event_id = ? AND state = 'queued'",
            (reason, time.time(), event_id),
        )

    def mark_retry(
        self, event_id: str, reason: str, not_before: float, *, owner: str | None = None, hold: bool = False
    ) -> None:
        """Count a failed attempt; the row is free again (for anyone) from `not_before` on. With
        `hold` (the endpoint asked for the wait), no `expedite` cuts that short.

        With `owner`, nothing changes if another sender has taken the row over meanwhile."""
        (event_id,) = _event_ids([event_id])
        guard = "" if owner is None else " AND (lease_owner IS NULL OR lease_owner = ?)"
        self._write(
            "UPDATE outbox SET attempts = attempts + 1, reason = ?, lease_owner = NULL,"
            f" lease_until = ?, hold_until = ?, updated = ? WHERE event_id = ? AND state = 'queued'{guard}",
            (reason, not_before, not_before if hold else None, time.time(), event_id) + (() if owner is None else (owner,)),
        )

    def prune_delivered(self, before: float, limit: int) -> int:
        """Delete up to `limit` of the oldest rows delivered before `before` (wall-clock
        seconds), in one short transaction; returns how many. Queued and rejected rows are
        never deleted. Call again until it returns less than `limit`.

        Rows are numbered as they are created and a row is delivered after it is created, so
        every candidate lies below the first seq created at or after `before`: found by a
        binary search over the primary key, it bounds the scan however large the store is (a
        wall-clock step only moves that bound; the `updated` test decides)."""
        with self._tx("pruning delivered rows") as conn:
            bound = _first_seq_created_at(conn, before)
            # NOT INDEXED: walk the primary key from the oldest row up to `bound`, not the
            # state index (which would visit every delivered row to find none once pruned).
            return conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox NOT INDEXED WHERE seq < ?"
                " AND state = 'delivered' AND updated < ? ORDER BY seq LIMIT ?)",
                (bound, before, limit),
            ).rowcount

    def expedite(self, now: float) -> int:
        """Cut short the retry delays of queued rows nobody holds (for an explicit flush); an
        endpoint's hold stays."""
        return self._write(
            "UPDATE outbox SET lease_until = NULL WHERE state = 'queued' AND lease_owner IS NULL AND lease_until > ?",
            (now,),
        )

    def next_due(self, now: float) -> float | None:
        """None when nothing is queued; else the earliest moment after `now` at which a lease,
        retry delay or hold of a queued row ends (`now` itself when none is running)."""
        [(count, until)] = self._query(
            "SELECT COUNT(*), MIN(CASE WHEN MAX(COALESCE(lease_until, 0), COALESCE(hold_until, 0)) > :now"
            " THEN MAX(COALESCE(lease_until, 0), COALESCE(hold_until, 0)) END) FROM outbox WHERE state = 'queued'",
            {"now": now},
        )
        if count == 0:
            return None
        return now if until is None else float(until)

    def last_seq(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM outbox")[0][0])

    def any_queued(self, *, max_seq: int) -> bool:
        """Whether a row with `seq <= max_seq` is still queued: one index probe, however many
        are (a flush asks after every request the sender makes)."""
        return bool(
            self._query("SELECT 1 FROM outbox INDEXED BY outbox_queued WHERE state = 'queued' AND seq <= ? LIMIT 1", (max_seq,))
        )

    def queued_count(self, *, max_seq: int) -> int:
        """Queued rows with `seq <= max_seq` (cheap: read from an index)."""
        return int(self._query("SELECT COUNT(*) FROM outbox WHERE state = 'queued' AND seq <= ?", (max_seq,))[0][0])

    def counts(self, *, max_seq: int | None = None) -> dict[str, int]:
        """Rows per state (all of them, or those with `seq <= max_seq`)."""
        where, params = ("WHERE seq <= ?", (max_seq,)) if max_seq is not None else ("", ())
        rows = self._query(f"SELECT state, COUNT(*) FROM outbox {where} GROUP BY state", params)
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    def events(self, limit: int | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows in seq order, the newest `limit` of them when given (for `timeback-nb events`)."""
        if state is not None and state not in STATES:
            raise invalid("state", f"must be one of {', '.join(STATES)}, got {state!r}")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise invalid("limit", f"must be an integer >= 0 or None, got {limit!r}")
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        sql = (
            "SELECT seq, event_id, kind, run_id, state, attempts, reason, created, updated, body"
            f" FROM outbox {where} ORDER BY seq DESC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [dict(r) for r in reversed(self._query(sql, params))]

    # -- local delivery ------------------------------------------------------------------------

    def store_local_event(self, event_id: str, body: str) -> bool:
        """The local transport's delivery: keep the body exactly; a replay is ignored."""
        changed = self._write(
            "INSERT OR IGNORE INTO events (event_id, body, received) VALUES (?, ?, ?)", (event_id, body, time.time())
        )
        return changed == 1

    def local_events(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Events delivered locally, in delivery order (the newest `limit` when given)."""
        sql = "SELECT seq, event_id, body, received FROM events ORDER BY seq DESC"
        params: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [dict(r) for r in reversed(self._query(sql, params))]


_INSERT_QUEUED = (
    "INSERT OR IGNORE INTO outbox (event_id, kind, run_id, body, state, created, updated)"
    " VALUES (?, ?, ?, ?, 'queued', ?, ?)"
)


def insert_rows(conn: sqlite3.Connection, rows: list[NewRow]) -> int:
    """Insert outbox rows on `conn`, in order, inside the caller's transaction; how many were
    new (a row whose event id is already there is a replay and is skipped). Plain rows in a
    row go in with one statement."""
    now = time.time()
    added = 0
    plain: list[tuple[Any, ...]] = []
    for row in rows:
        if not isinstance(row, NumberedRow):
            plain.append((*row, now, now))
            continue
        if plain:
            added += conn.executemany(_INSERT_QUEUED, plain).rowcount
            plain = []
        event_id, body = row.build(1)
        if conn.execute("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)).fetchone():
            continue  # a replay: it already has its number
        attempt = _take_attempt(conn, row.user_key, row.object_id)
        if attempt != 1:
            event_id, body = row.build(attempt)
        added += conn.execute(_INSERT_QUEUED, (event_id, row.kind, row.run_id, body, now, now)).rowcount
    if plain:
        added += conn.executemany(_INSERT_QUEUED, plain).rowcount
    return added


def _event_ids(event_ids: list[str]) -> list[str]:
    """The ids, checked: a seq (int) passed by mistake would silently match no row."""
    for event_id in event_ids:
        if not isinstance(event_id, str):
            raise invalid("event_id", f"must be the event id as str (not the row's seq), got {event_id!r}")
    return list(event_ids)


def _first_seq_created_at(conn: sqlite3.Connection, when: float) -> int:
    """The smallest seq whose row was created at or after `when` (one past the last row when
    none was): a binary search by primary key, since seq grows with `created`."""
    low, high = (int(v) for v in conn.execute("SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) + 1 FROM outbox").fetchone())
    while low < high:
        middle = (low + high) // 2
        row = conn.execute("SELECT seq, created FROM outbox WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)).fetchone()
        if row is None or row[1] >= when:
            high = middle
        else:
            low = int(row[0]) + 1
    return low


def _take_attempt(conn: sqlite3.Connection, user_key: str, object_id: str) -> int:
    conn.execute(
        "INSERT INTO attempts (user_key, object_id, attempt) VALUES (?, ?, 1)"
        " ON CONFLICT (user_key, object_id) DO UPDATE SET attempt = attempt + 1",
        (user_key, object_id),
    )
    row = conn.execute(
        "SELECT attempt FROM attempts WHERE user_key = ? AND object_id = ?", (user_key, object_id)
    ).fetchone()
    return int(row[0])


# What a store deleted under a kernel hands to its successor at the same path: what is not
# delivered yet and what decides future numbers and runs (delivered history stays behind).
_CARRIED = {
    "runs": "SELECT * FROM runs",
    "attempts": "SELECT * FROM attempts",
    "users": "SELECT * FROM users",
    "checkpoints": "SELECT * FROM checkpoints",
    "outbox": "SELECT * FROM outbox WHERE state = 'queued' ORDER BY seq",
}


def _carry_over(old: sqlite3.Connection, new: sqlite3.Connection) -> None:
    new.execute("BEGIN IMMEDIATE")
    try:
        for table, query in _CARRIED.items():
            rows = old.execute(query).fetchall()
            if not rows:
                continue
            names = [k for k in rows[0].keys() if not (table == "outbox" and k == "seq")]
            new.executemany(
                f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [tuple(r[k] for k in names) for r in rows],
            )
        new.execute("COMMIT")
    except BaseException:
        if new.in_transaction:
            new.execute("ROLLBACK")
        raise
