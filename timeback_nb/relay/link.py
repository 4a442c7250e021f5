"""The HTTP process's side of the relay's writer process (`writer.py`): `WriterProcess` starts,
replaces and stops the child; `WriterLink` is the event loop's connection to it.

The two talk over a socketpair. The loop streams the checked requests to the writer as it
reads them (a message every few requests, or at the end of the loop's pass), without waiting
for the answers to earlier ones; the writer builds their events while it commits the groups
before them, then commits every group that is ready as one transaction and answers each
message, in order, once it is durable. So neither process waits for the other to finish a
turn: the writer starts on the first requests of a burst while this process still reads the
rest. When the HTTP process dies (SIGKILL too) the writer reads end-of-file and stops; when
the writer dies or stops answering, the requests in flight are answered 503 (kernels retry;
event ids are deterministic, so one that did commit is a duplicate the second time) and the
next request starts a new writer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import pickle
import socket
import subprocess
import sys
import threading
from typing import Any

from ..errors import ConfigError
from .adapter import AdapterError
from .journal import Result, not_stored, settle
from .writer import HEADER, frame, recv_message, send_message

log = logging.getLogger(__name__)

__all__ = ["ANSWER_TIMEOUT_S", "STOP_TIMEOUT_S", "WriterLink", "WriterProcess"]

# Imported, not run with -m: one copy of the writer module in the child, whatever it imports.
_CHILD = "import sys; from timeback_nb.relay.writer import main; sys.exit(main())"
START_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 120.0  # a group commit never takes this long unless the disk has hung
STOP_TIMEOUT_S = 15.0


class WriterProcess:
    """The writer child of a relay: `start()` starts it and waits until it is ready (ConfigError
    if it cannot open the store), `socket` is the HTTP process's end of their socketpair (used
    by a `WriterLink`), `restart()` replaces a writer that is gone, `stop()` stops it."""

    def __init__(self, config: dict[str, Any], *, pass_fds: tuple[int, ...] = ()) -> None:
        self._config = config
        self._pass_fds = pass_fds
        self._process: subprocess.Popen[bytes] | None = None
        self.socket: socket.socket | None = None
        self._lock = threading.Lock()  # start, restart and stop come from different threads

    def start(self) -> WriterProcess:
        with self._lock:
            self._start()
        return self

    def restart(self) -> socket.socket:
        """A new writer in place of one that is gone or hung (ConfigError if it cannot start)."""
        with self._lock:
            self._close_socket()
            if self._process is not None:
                code = self._process.poll()
                if code is None:  # it stopped answering: it serves no one (it ignores SIGTERM, see _serve)
                    self._process.kill()  # a commit is atomic: a cut one is as if never begun
                else:
                    log.error("timeback relay: the writer process ended (exit code %s); starting another", code)
            self._reap()
            self._start()
            assert self.socket is not None
            return self.socket

    def stop(self) -> None:
        """Close the writer's socket (it stops once it has committed what it read) and wait."""
        with self._lock:
            self._close_socket()
            self._reap()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())], pass_fds=(theirs.fileno(), *self._pass_fds)
            )
        try:
            ours.settimeout(START_TIMEOUT_S)
            send_message(ours, self._config)
            kind, detail = recv_message(ours)
        except (OSError, EOFError) as exc:
            ours.close()
            self._reap()
            raise ConfigError(f"the relay's writer process did not start: {exc}", field="--store") from exc
        if kind != "ready":
            ours.close()
            self._reap()
            message, field = detail
            raise ConfigError(message, field=field or "--store")
        ours.setblocking(False)  # from here on the event loop reads and writes it
        self.socket = ours

    def _close_socket(self) -> None:
        sock, self.socket = self.socket, None
        if sock is not None:
            sock.close()

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


class WriterLink:
    """The event loop's side of the writer: `start()` starts its process; `await
    link.commit(wire)` → the request's result once its group is durable; `await link.status()`,
    `await link.has_window(...)`; `await link.close()` after the last request, then `stop()`.
    (`writer.InProcessWriter` has the same interface.)

    Requests are streamed to the writer as they are read, a message every `STREAM_EVERY`
    requests or at the end of the loop's pass, without waiting for the groups before them;
    the writer commits every message that queued while it was committing as one group. So the
    writer starts on the first requests of a burst while this process still reads the rest,
    instead of the two taking turns. Replies come back in order. When the writer is gone (its
    socket closed) or silent for `ANSWER_TIMEOUT_S`, every request in flight gets a 503 (as far
    as the relay knows it was not committed; if it was, the kernel's retry is a duplicate, the
    event ids being deterministic) and the next request starts another writer."""

    STREAM_EVERY = 4

    def __init__(self, process: WriterProcess) -> None:
        self.process = process
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        # Per message sent, in order: what it expects back, the futures of its requests (a
        # group) or of a question, and when it was sent (loop time).
        self._waiting: collections.deque[tuple[str, list[asyncio.Future[Any]], float]] = collections.deque()
        self._stream: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._restart = False  # the writer was lost: the next connection needs a new one
        self._closing = False
        self._deadline: asyncio.TimerHandle | None = None

    def start(self) -> WriterLink:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    async def commit(self, wire: tuple[Any, ...]) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((wire, future))
        if len(self._pending) >= self.STREAM_EVERY and self._stream is not None:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._scheduled_flush)
        return await future

    async def status(self) -> dict[str, Any]:
        status = await self._ask(("status",))
        if status is None or isinstance(status, AdapterError):
            return {"error": "the relay's writer process is not running"}
        return dict(status)

    async def has_window(self, user: str, run_id: str, start_ms: int) -> bool:
        """Whether the writer's store holds that accepted window (False when it cannot say)."""
        return await self._ask(("has_window", user, run_id, start_ms)) is True

    async def _ask(self, message: tuple[Any, ...]) -> Any:
        """The writer's answer to a question (None when it is not running; an AdapterError
        when it could not answer), in order with the groups sent before it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not await self._connected():
            return None
        self._send(message, "answer", [future])
        return await future

    async def close(self) -> None:
        """After the last request: the writer commits and answers what it has, then stops."""
        self._closing = True
        if self._pending and not await self._connected():  # requests read but not yet sent
            self._fail(self._pending_futures(), "the writer process could not start")
        if self._stream is not None and self._reader is not None:
            self._flush()
            self._stream.write(frame(("stop",)))
            with contextlib.suppress(asyncio.TimeoutError):  # it reads to the writer's end of file
                await asyncio.wait_for(asyncio.shield(self._reader), STOP_TIMEOUT_S)
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._deadline is not None:
            self._deadline.cancel()

    # -- sending -------------------------------------------------------------------------------

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if self._stream is not None:
            self._flush()
        elif self._pending and self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _flush(self) -> None:
        if self._pending:
            group, self._pending = self._pending, []
            self._send(("group", [wire for wire, _ in group]), "results", [future for _, future in group])

    def _send(self, message: tuple[Any, ...], expect: str, futures: list[asyncio.Future[Any]]) -> None:
        assert self._stream is not None
        self._stream.write(frame(message))
        loop = asyncio.get_running_loop()
        self._waiting.append((expect, futures, loop.time()))
        if self._deadline is None:
            self._deadline = loop.call_at(loop.time() + ANSWER_TIMEOUT_S, self._check_deadline)

    async def _connected(self) -> bool:
        if self._stream is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._reconnect())
            await asyncio.shield(self._connecting)
        return self._stream is not None

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = self.process.socket
            if sock is None or self._restart:  # the writer is gone: a new one, started off the loop
                sock = await loop.run_in_executor(None, self.process.restart)
                self._restart = False
            reader, self._stream = await asyncio.open_connection(sock=sock)
            self._reader = loop.create_task(self._read(reader))
        except (ConfigError, OSError) as exc:
            log.error("timeback relay: the writer process could not start: %s", exc)
            self._fail(self._pending_futures(), f"the writer process could not start: {exc}")
        finally:
            self._connecting = None
        self._flush()

    def _pending_futures(self) -> list[asyncio.Future[Any]]:
        futures = [future for _, future in self._pending]
        self._pending = []
        return futures

    # -- answers ---------------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                kind, payload = pickle.loads(await reader.readexactly(HEADER.unpack(header)[0]))
                expect, futures, _ = self._waiting.popleft()
                if kind == "error":  # the writer could not handle the message (a bug); it said why
                    self._fail(futures, str(payload))
                elif expect == "answer":
                    settle(futures, [payload])
                else:
                    settle(futures, [_result(wire) for wire in payload])
        except (asyncio.IncompleteReadError, OSError) as exc:
            if self._reader is asyncio.current_task():  # not a link already given up (the deadline)
                self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        if not self._closing:
            log.error("timeback relay: the writer process is gone (%s: %s); the next request starts another",
                      type(exc).__name__, exc)
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._reader = None
        self._restart = True
        while self._waiting:
            _, futures, _ = self._waiting.popleft()
            self._fail(futures, f"{type(exc).__name__}: {exc}")
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _fail(self, futures: list[asyncio.Future[Any]], why: str) -> None:
        settle(futures, [not_stored(why)] * len(futures))

    def _check_deadline(self) -> None:
        """The oldest message still unanswered is given `ANSWER_TIMEOUT_S`. Checked when the
        timer fires, not re-armed on every answer (thousands a second under load)."""
        self._deadline = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        due = self._waiting[0][2] + ANSWER_TIMEOUT_S
        if loop.time() < due:
            self._deadline = loop.call_at(due, self._check_deadline)
            return
        self._lost(TimeoutError(f"the writer process has not answered for {ANSWER_TIMEOUT_S:g} s"))


def _result(wire: Any) -> Result:
    if isinstance(wire, tuple):
        status, code, message, field, detail = wire
        return AdapterError(status, code, message, field=field, detail=detail)
    return wire  # type: ignore[no-any-return]
