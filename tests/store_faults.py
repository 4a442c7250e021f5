"""Real store failures for tests, through the store's `connect` seam (no patched sqlite3).

    faults = StoreFaults()
    store = Store(path, connect=faults.connect)
    with faults.locked(path): ...    # another connection holds the write lock (BEGIN EXCLUSIVE)
    faults.read_only()               # the store's connection may only read (SQLITE_READONLY)
    faults.full()                    # the file may not grow (SQLITE_FULL, as on a full disk)
    faults.delete(path)              # the file and its WAL are unlinked under the open store
    faults.heal()                    # writable and growable again

`read_only` and `full` act on the connections the store opened, because the tests run as root,
for whom a chmod'ed file is still writable, and a real full disk needs a mount.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

MAX_PAGES = 1_073_741_823  # SQLite's default max_page_count


class StoreFaults:
    def __init__(self) -> None:
        self.connections: list[sqlite3.Connection] = []
        self._read_only = False
        self._full = False

    def connect(self, path: Path, timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self.connections.append(conn)
        self._apply(conn)
        return conn

    def _apply(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute(f"PRAGMA query_only = {int(self._read_only)}")
            if self._full:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
            else:
                conn.execute(f"PRAGMA max_page_count = {MAX_PAGES}")
        except sqlite3.ProgrammingError:  # closed meanwhile
            pass

    def _apply_all(self) -> None:
        for conn in self.connections:
            self._apply(conn)

    def read_only(self) -> None:
        self._read_only = True
        self._apply_all()

    # Filler rows that use up the free room of every table the kernel writes (a table's pages
    # keep slack, so a page limit alone lets small rows in for a while); heal() deletes them.
    _FILLERS = (
        ("INSERT INTO outbox (event_id, kind, body, state, created, updated)"
         " VALUES ('filler-' || hex(randomblob(8)), 'filler', hex(zeroblob(?)), 'delivered', 0, 0)",
         "DELETE FROM outbox WHERE kind = 'filler'"),
        ("INSERT INTO checkpoints VALUES ('filler-' || hex(randomblob(8)), 'filler', 0, hex(zeroblob(?)), 0)",
         "DELETE FROM checkpoints WHERE owner_host = 'filler'"),
        ("INSERT INTO attempts VALUES ('filler', hex(randomblob(8)) || hex(zeroblob(?)), 0)",
         "DELETE FROM attempts WHERE user_key = 'filler'"),
    )

    def full(self) -> None:
        """No page may be added to the file any more and its pages have no room left, as on a
        full disk: the next write of anything new fails with SQLITE_FULL."""
        self._full = True
        self._apply_all()
        conn = self.connections[-1]
        for insert, _delete in self._FILLERS:
            for size in (2048, 256, 32, 4, 0):
                try:
                    while True:
                        conn.execute(insert, (size,))
                except sqlite3.OperationalError:  # database or disk is full
                    pass

    def heal(self) -> None:
        self._read_only = self._full = False
        self._apply_all()
        for _insert, delete in self._FILLERS:
            self.connections[-1].execute(delete)

    @staticmethod
    @contextmanager
    def locked(path: Path) -> Iterator[sqlite3.Connection]:
        """Another process's connection holds the write lock until the block ends."""
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield other
        finally:
            other.execute("ROLLBACK")
            other.close()

    @staticmethod
    def delete(path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
