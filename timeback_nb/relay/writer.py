"""The relay's store side (the journal's group commits, the sender and the pruner: everything
that writes the store) and the process it runs in.

`timeback-nb relay` runs it in a child process of its own (`WriterProcess`), so the HTTP
process only reads, checks and answers requests: it never waits for the GIL behind SQLite,
event building or delivery, and a 2-core server uses both cores (measured: ~1.2-1.4x the
requests per second of the same parts on threads of one process). The two talk over a
socketpair, one group of requests per message: the HTTP process's `GroupThread` sends every
request that arrived while the last group committed, the writer answers once the group is
durable. The writer shares the HTTP process's store lock (see `lock.py`). When the HTTP
process dies (SIGKILL too) the writer reads end-of-file and stops; when the writer dies, the
group in flight is answered 503 (kernels retry; event ids are deterministic, so a group that
did commit is a duplicate the second time) and the next group starts a new writer.
`Relay(..., in_process=True)` runs the same `StoreSide` on threads of one process instead:
the in-process tests use it.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from ..clock import iso_utc_ms
from ..config import Settings
from ..errors import ConfigError, TimebackError
from ..outbox import Sender, make_transport
from ..store import Store
from .adapter import AdapterError, parse_body, validate_heartbeat, validate_submit
from .journal import CompletionItem, Item, Journal, Result, TimeItem, not_stored, prepare
from .retention import Pruner

log = logging.getLogger(__name__)

__all__ = ["StoreSide", "WriterProcess", "wire_item"]

_HEADER = struct.Struct("!I")
# Imported, not run with -m: one copy of this module in the child, whatever it imports.
_CHILD = "import sys; from timeback_nb.relay.writer import main; sys.exit(main())"
START_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 120.0  # a group commit never takes this long unless the disk has hung
STOP_TIMEOUT_S = 15.0


class StoreSide:
    """The journal, the sender that delivers what it commits, and the pruner, on one store."""

    def __init__(
        self, store: Store, settings: Settings, *, batch: int, max_parallel: int, retention_days: float,
        wall_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.settings = settings
        self.sender = _make_sender(store, make_transport(settings, store), batch)
        self.nudge = _Nudge(self.sender.wake)
        self.journal = Journal(store, max_parallel=max_parallel, on_commit=lambda n: self.nudge.poke())
        self.pruner = Pruner(store, retention_days, wall_ms=wall_ms)
        self.wall_ms = wall_ms

    def start(self) -> StoreSide:
        self.sender.start()
        self.nudge.start()
        self.pruner.start()
        return self

    def stop(self) -> None:
        self.pruner.stop()
        self.nudge.stop()
        self.sender.stop(5.0)
        if self.sender.transport is not None:
            self.sender.transport.close()

    def commit(self, wires: list[tuple[Any, ...]]) -> list[Result]:
        """Commit checked requests (`wire_item`s) as one group, each request's event built here
        from its body; a result each, in order."""
        send_time = iso_utc_ms(self.wall_ms())
        results: list[Any] = [None] * len(wires)
        prepared, where = [], []
        for index, (kind, user, raw, target) in enumerate(wires):
            try:
                body = parse_body(raw)
                item: Item = (
                    TimeItem(user, validate_heartbeat(body), target) if kind == "time"
                    else CompletionItem(user, validate_submit(body), target)
                )
                prepared.append(prepare(item, send_time))
                where.append(index)
            except AdapterError as exc:
                results[index] = exc
        for index, result in zip(where, self.journal.commit_group(prepared)):
            results[index] = result
        return results

    def status(self) -> dict[str, Any]:
        """For /health: each cheap to read however large the store grows (queued rows come
        from an index; the rest since this start)."""
        last = self.pruner.last
        return {
            "queued": self.store.queued_count(max_seq=self.store.last_seq()),
            "accepted": self.journal.accepted,
            "lastError": self.sender.last_error,
            "pruned": None if last is None else last.as_json(),
        }


# -- the HTTP process's side -------------------------------------------------------------------


def wire_item(item: Item, raw: bytes) -> tuple[Any, ...]:
    """What the writer needs of a checked request: its kind, who it is from and for, and its
    body, which the writer reads again to build the event. Cheaper for both processes than the
    parsed request (pickling dataclasses costs more than parsing the JSON), and the HTTP
    process, the one every request passes through twice, keeps only what must answer early."""
    if isinstance(item, TimeItem):
        return ("time", item.user, raw, item.target)
    return ("submit", item.user, raw, item.target)


class WriterGone(Exception):
    """The writer process ended or stopped answering."""


class WriterProcess:
    """The writer child of a relay, used from one thread at a time (a lock sees to it):
    `start()` (until it is ready; ConfigError if it cannot open the store), `commit_group`,
    `status`, `stop()`. A writer that is gone is started again by the next call."""

    def __init__(self, config: dict[str, Any], *, pass_fds: tuple[int, ...] = ()) -> None:
        self._config = config
        self._pass_fds = pass_fds
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> WriterProcess:
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())], pass_fds=(theirs.fileno(), *self._pass_fds)
            )
        try:
            ours.settimeout(START_TIMEOUT_S)
            _send(ours, self._config)
            kind, detail = _recv(ours)
        except (OSError, EOFError) as exc:
            ours.close()
            self._reap()
            raise ConfigError(f"the relay's writer process did not start: {exc}", field="--store") from exc
        if kind != "ready":
            ours.close()
            self._reap()
            message, field = detail
            raise ConfigError(message, field=field or "--store")
        ours.settimeout(ANSWER_TIMEOUT_S)
        self._sock = ours
        return self

    def stop(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                try:
                    _send(sock, ("stop",))
                except OSError:
                    pass
                sock.close()
            self._reap()

    def commit_group(self, wires: list[tuple[Any, ...]]) -> list[Result]:
        """Commit the requests (`wire_item`s) as one group; a result each, in order. When the
        writer is gone, a 503 each: as far as the relay knows they were not committed (if they
        were, the kernel's retry is a duplicate, the event ids being deterministic)."""
        try:
            return [_result(wire) for wire in self._exchange(("group", wires))]
        except WriterGone as exc:
            return [not_stored(str(exc))] * len(wires)

    def status(self) -> dict[str, Any]:
        try:
            return dict(self._exchange(("status",)))
        except WriterGone as exc:
            return {"error": f"the relay's writer process is not running: {exc}"}

    def _exchange(self, message: tuple[Any, ...]) -> Any:
        with self._lock:
            if self._sock is None or self._process is None or self._process.poll() is not None:
                self._respawn()
            assert self._sock is not None
            try:
                _send(self._sock, message)
                kind, payload = _recv(self._sock)
            except (OSError, EOFError) as exc:  # a timeout is an OSError too
                self._lost(exc)
                raise WriterGone(f"{type(exc).__name__}: {exc}") from exc
        if kind == "error":  # the writer could not handle the message (a bug); it said why
            raise WriterGone(str(payload))
        return payload

    def _lost(self, exc: BaseException) -> None:
        code = None if self._process is None else self._process.poll()
        log.error("timeback relay: the writer process is gone (%s, exit code %s); starting another", exc, code)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _respawn(self) -> None:
        if self._process is not None:
            code = self._process.poll()
            if code is None:
                # It lost its socket or stopped answering: it serves no one. SIGKILL, since it
                # ignores SIGTERM (see _serve); a commit is atomic, so a cut one never happened.
                self._process.kill()
            else:
                log.error("timeback relay: the writer process ended (exit code %s); starting another", code)
        self._reap()
        try:
            self.start()
        except ConfigError as exc:
            raise WriterGone(str(exc)) from exc

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("timeback relay: the writer process did not stop in %g s; killing it", STOP_TIMEOUT_S)
            process.kill()
            process.wait()


def _result(wire: Any) -> Result:
    if isinstance(wire, tuple):
        status, code, message, field, detail = wire
        return AdapterError(status, code, message, field=field, detail=detail)
    return wire  # type: ignore[no-any-return]


def _send(sock: socket.socket, message: Any) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(body)) + body)


def _recv(sock: socket.socket) -> Any:
    header = _recv_exactly(sock, _HEADER.size)
    return pickle.loads(_recv_exactly(sock, _HEADER.unpack(header)[0]))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the other end closed")
        data += chunk
    return bytes(data)


# -- the writer process ------------------------------------------------------------------------


def _serve(sock: socket.socket) -> int:
    # The relay stops this process (by closing the socket) once it has stopped taking requests;
    # a Ctrl-C or a SIGTERM to the whole group must not cut a group commit short before that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = _recv(sock)
    logging.basicConfig(level=config["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = Store(config["store"])
        side = StoreSide(
            store, Settings.from_env(config["environ"]), batch=config["batch"], max_parallel=config["max_parallel"],
            retention_days=config["retention_days"], wall_ms=lambda: time.time_ns() // 1_000_000,
        ).start()
    except TimebackError as exc:
        _send(sock, ("failed", (str(exc), exc.field)))
        return 1
    _send(sock, ("ready", os.getpid()))
    try:
        while True:
            try:
                message = _recv(sock)
            except (EOFError, OSError):
                log.info("timeback relay writer: the relay is gone; stopping")
                return 0
            if message[0] == "stop":
                return 0
            try:
                reply: tuple[str, Any] = ("results", _plain(side.commit(message[1]))) if message[0] == "group" else ("status", side.status())
            except Exception as exc:  # a bug: say so to the relay (its requests get a 503), keep serving
                log.exception("timeback relay writer: %s failed", message[0])
                reply = ("error", f"{type(exc).__name__}: {exc}")
            try:
                _send(sock, reply)
            except OSError:
                log.info("timeback relay writer: the relay is gone; stopping")
                return 0
    finally:
        side.stop()
        store.close()


def _plain(results: list[Result]) -> list[Any]:
    """The results as plain data for the relay (`_result` reads them back)."""
    return [(r.status, r.code, r.message, r.field, r.detail) if isinstance(r, AdapterError) else r for r in results]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with socket.socket(fileno=int(args[0])) as sock:
        return _serve(sock)


class _Nudge:
    """Wakes the sender `delay` s after the first commit that needs it, not after every commit:
    under load it then finds a full envelope's worth of events queued, instead of sending each
    commit group on its own (one POST, one lease and one mark per group)."""

    def __init__(self, wake: Callable[[], None], delay: float = 0.05) -> None:
        self._wake = wake
        self._delay = delay
        self._poked = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="timeback-relay-nudge", daemon=True)
            self._thread.start()

    def poke(self) -> None:
        self._poked.set()

    def stop(self) -> None:
        self._stopped.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._poked.wait()
            if self._stopped.wait(self._delay):
                break
            self._poked.clear()
            self._wake()


def _make_sender(store: Store, transport: Any, batch: int) -> Sender:
    # One relay per store: a fixed lease owner lets a restarted relay (after a crash) send the
    # rows its previous life had leased at once, instead of after the lease runs out.
    # Up to `batch` events per envelope (a rejected batch is split to isolate the bad event).
    return Sender(store, transport, owner=f"timeback-relay:{socket.gethostname()}:{store.path}", batch_size=batch)

