"""One relay process per store file.

The relay's sender leases rows under a fixed owner name (so a restarted relay resends what its
previous life held at once), and its journal caches run owners as the store's only writer: a
second relay on the same file would take the first one's leases as its own and judge runs
against a stale cache. So the relay holds an exclusive `flock` on `<store>.lock` for its whole
life, and shares it with its writer process (the same open file, passed to the child): the
lock lasts while either runs. A second relay is refused at start, after waiting a few seconds
in case the holder is a killed relay's writer on its way out. The OS drops the lock when the
processes end, however they end (SIGKILL too), so a restart never finds a stale one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import IO

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; the relay runs on the hub's (POSIX) host
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["StoreLock"]


class StoreLock:
    """`acquire()` the lock beside the store at `store_path` (ConfigError naming `--store` if
    another process holds it); `release()` is idempotent."""

    def __init__(self, store_path: str | os.PathLike[str]) -> None:
        store = Path(store_path).expanduser().resolve()  # one lock file however the path is spelled
        self.path = store.with_name(store.name + ".lock")
        self._file: IO[str] | None = None

    def __repr__(self) -> str:
        return f"StoreLock({str(self.path)!r}, held={self._file is not None})"

    def fds(self) -> tuple[int, ...]:
        """The held lock's descriptor, for a child process to share (the lock lasts while
        either has it open); none when not held."""
        return () if self._file is None else (self._file.fileno(),)

    def acquire(self, *, wait: float = 0.0) -> StoreLock:
        """Take the lock; if another process holds it, try again for up to `wait` s (a killed
        relay's writer process lets go a moment after its parent died)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._acquire()
            except _HeldElsewhere:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def _acquire(self) -> StoreLock:
        if self._file is not None:
            return self
        if fcntl is None:
            log.warning("timeback relay: no flock on this system; make sure one relay runs per store")
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        except OSError as exc:
            raise ConfigError(f"--store: cannot create the relay's lock file '{self.path}': {exc}", field="--store") from exc
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise _HeldElsewhere(
                f"--store: another timeback-nb relay (pid {holder}) is running on this store; it holds "
                f"'{self.path}'. Run one relay process per store file (stop that one, or give this one another --store)",
                field="--store",
            ) from exc
        except OSError as exc:  # e.g. a file system without locks
            file.close()
            raise ConfigError(f"--store: cannot lock '{self.path}': {exc}", field="--store") from exc
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")  # for the message a second relay prints
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()  # closing the descriptor drops the flock


class _HeldElsewhere(ConfigError):
    """Another process holds the lock (the one failure worth trying again)."""
