"""The relay's store side (the journal's group commits, the sender and the pruner: everything
that writes the store) and the process it runs in.

`timeback-nb relay` runs it in a child process of its own, so the HTTP process only reads,
checks and answers requests: it never waits for the GIL behind SQLite, event building or
delivery, and a 2-core server uses both cores. `link.py` is the HTTP process's side. In the
writer, one thread reads the requests the relay streams to it and builds their events while
the main thread commits the groups before them (SQLite lets go of the GIL while it writes and
fsyncs); the main thread then commits every group that is ready as one transaction and
answers each. The writer shares the HTTP process's store lock (see `lock.py`).
`Relay(..., in_process=True)` runs the same `StoreSide` on threads of one process instead
(`InProcessWriter`, where a `GroupThread` feeds it): the in-process tests use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import queue
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..clock import iso_utc_ms
from ..config import Settings
from ..errors import TimebackError
from ..outbox import Sender, make_transport
from ..store import Store
from .adapter import AdapterError, parse_body, validate_heartbeat, validate_submit
from .journal import CompletionItem, GroupThread, Item, Journal, Prepared, Result, TimeItem, prepare
from .retention import Pruner

log = logging.getLogger(__name__)

__all__ = ["HEADER", "InProcessWriter", "StoreSide", "frame", "recv_message", "send_message", "wire_item"]

HEADER = struct.Struct("!I")  # each message on the socketpair: its length, then the pickle


@dataclass
class BuiltGroup:
    """One message's requests with their events built, ready to commit: `results` holds each
    refusal in its place and None where `prepared` has the request (`where` says which)."""

    results: list[Any]
    prepared: list[Prepared]
    where: list[int]


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
        """Commit checked requests (`wire_item`s) as one group; a result each, in order."""
        return self.commit_built([self.build(wires)])[0]

    def build(self, wires: list[tuple[Any, ...]]) -> BuiltGroup:
        """Each request's event, built here from its body (a sendTime for the group)."""
        send_time = iso_utc_ms(self.wall_ms())
        built = BuiltGroup([None] * len(wires), [], [])
        for index, (kind, user, raw, target) in enumerate(wires):
            try:
                body = parse_body(raw)
                item: Item = (
                    TimeItem(user, validate_heartbeat(body), target) if kind == "time"
                    else CompletionItem(user, validate_submit(body), target)
                )
                built.prepared.append(prepare(item, send_time))
                built.where.append(index)
            except AdapterError as exc:
                built.results[index] = exc
        return built

    def commit_built(self, groups: list[BuiltGroup]) -> list[list[Result]]:
        """Commit the groups in one transaction (one fsync); each group's results, in order."""
        results = iter(self.journal.commit_group([item for group in groups for item in group.prepared]))
        for group in groups:
            for index in group.where:
                group.results[index] = next(results)
        return [group.results for group in groups]

    def has_window(self, user: str, run_id: str, start_ms: int) -> bool:
        return self.journal.has_window(user, run_id, start_ms)

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


class InProcessWriter:
    """`StoreSide` on threads of this process, behind `link.WriterLink`'s interface: `start()`,
    `await commit(wire)`, `await status()`, `await has_window(...)`, `await close()`, `stop()`.
    A `GroupThread` (`thread`) commits what the loop hands it in groups."""

    def __init__(self, side: StoreSide) -> None:
        self.side = side
        self.thread = GroupThread(side.commit)

    def start(self) -> InProcessWriter:
        self.side.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.thread.stop()
        self.side.stop()

    async def commit(self, wire: tuple[Any, ...]) -> Result:
        return await self.thread.commit(wire)

    async def status(self) -> dict[str, Any]:
        return self.side.status()

    async def has_window(self, user: str, run_id: str, start_ms: int) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.side.has_window, user, run_id, start_ms)

    async def close(self) -> None:
        """Nothing to wait for: each request's commit was awaited by the request itself."""


# -- the HTTP process's side -------------------------------------------------------------------


def wire_item(item: Item, raw: bytes) -> tuple[Any, ...]:
    """What the writer needs of a checked request: its kind, who it is from and for, and its
    body, which the writer reads again to build the event. Cheaper for both processes than the
    parsed request (pickling dataclasses costs more than parsing the JSON), and the HTTP
    process, the one every request passes through twice, keeps only what must answer early."""
    if isinstance(item, TimeItem):
        return ("time", item.user, raw, item.target)
    return ("submit", item.user, raw, item.target)


def frame(message: Any) -> bytes:
    """`message` as sent on the socketpair."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def send_message(sock: socket.socket, message: Any) -> None:
    sock.sendall(frame(message))


def recv_message(sock: socket.socket) -> Any:
    """The next message on a blocking socket (EOFError when the other end closed)."""
    header = _recv_exactly(sock, HEADER.size)
    return pickle.loads(_recv_exactly(sock, HEADER.unpack(header)[0]))


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
    config = recv_message(sock)
    logging.basicConfig(level=config["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = Store(config["store"])
        side = StoreSide(
            store, Settings.from_env(config["environ"]), batch=config["batch"], max_parallel=config["max_parallel"],
            retention_days=config["retention_days"], wall_ms=lambda: time.time_ns() // 1_000_000,
        ).start()
    except TimebackError as exc:
        send_message(sock, ("failed", (str(exc), exc.field)))
        return 1
    send_message(sock, ("ready", os.getpid()))
    inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
    threading.Thread(target=_read_and_build, args=(sock, side, inbox), name="timeback-relay-build", daemon=True).start()
    try:
        while True:
            messages = [inbox.get()]
            while True:  # and every other one ready: their groups commit together
                try:
                    messages.append(inbox.get_nowait())
                except queue.Empty:
                    break
            replies, stop = _answer(side, messages)
            try:
                sock.sendall(b"".join(frame(reply) for reply in replies))
            except OSError:
                stop = True
            if stop:
                log.info("timeback relay writer: the relay is gone or done; stopping")
                return 0
    finally:
        side.stop()
        store.close()


def _read_and_build(sock: socket.socket, side: StoreSide, inbox: queue.SimpleQueue[tuple[Any, ...]]) -> None:
    """The builder thread: each message from the relay, a group with its events built, into
    `inbox` in order; ("gone",) once the relay has closed its end, or when the stream cannot
    be read on (the writer then stops, and the relay answers 503 and starts another)."""
    try:
        for message in _messages(sock):
            if message[0] != "group":
                inbox.put(message)
                continue
            try:
                inbox.put(("built", side.build(message[1])))
            except Exception as exc:  # a bug: say so to the relay (its requests get a 503), keep serving
                log.exception("timeback relay writer: building a group failed")
                inbox.put(("error", f"{type(exc).__name__}: {exc}"))
    except (EOFError, OSError):
        pass
    except Exception:  # e.g. a frame that does not unpickle: the stream is lost from here
        log.exception("timeback relay writer: cannot read the relay's messages; stopping")
    finally:
        inbox.put(("gone",))  # whatever ended this thread: the main thread must not wait for it


def _messages(sock: socket.socket) -> Iterator[Any]:
    buffer = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise EOFError("the other end closed")
        buffer += chunk
        while len(buffer) >= HEADER.size and len(buffer) >= (size := HEADER.size + HEADER.unpack_from(buffer)[0]):
            message = pickle.loads(buffer[HEADER.size : size])
            del buffer[:size]
            yield message


def _answer(side: StoreSide, messages: list[tuple[Any, ...]]) -> tuple[list[tuple[str, Any]], bool]:
    """A reply per message, in order (the built groups in a row committed as one), and whether
    to stop after sending them."""
    replies: list[tuple[str, Any]] = []
    built: list[BuiltGroup] = []

    def commit() -> None:
        if not built:
            return
        try:
            replies.extend(("results", _plain(results)) for results in side.commit_built(built))
        except Exception as exc:  # a bug: say so to the relay (its requests get a 503), keep serving
            log.exception("timeback relay writer: a group commit failed")
            replies.extend([("error", f"{type(exc).__name__}: {exc}")] * len(built))
        built.clear()

    for message in messages:
        if message[0] == "built":
            built.append(message[1])
            continue
        commit()
        if message[0] in ("stop", "gone"):
            return replies, True
        if message[0] in ("status", "has_window"):
            try:
                answer = side.status() if message[0] == "status" else side.has_window(*message[1:])
                replies.append((message[0], answer))
            except Exception as exc:
                log.exception("timeback relay writer: %s failed", message[0])
                replies.append(("error", f"{type(exc).__name__}: {exc}"))
        else:  # "error" from the builder, or a message this writer does not know
            replies.append(("error", message[1] if message[0] == "error" else f"unknown message {message[0]!r}"))
    commit()
    return replies, False


def _plain(results: list[Result]) -> list[Any]:
    """The results as plain data for the relay (`link._result` reads them back)."""
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

