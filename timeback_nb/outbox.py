"""The background sender: drains the outbox through a transport, in order, and never gives up.

One daemon thread per (store, endpoint) in a process. It leases rows from the store, sends them
oldest first, and marks each one delivered, rejected (parked with the reason), or queued again
with a retry delay: capped exponential backoff with jitter per row (never less than half the
step, so never zero), or the server's `Retry-After` when it asks for longer. A `Retry-After` of
0, negative, unreadable or already past gets the backoff step: no reply makes the sender hammer
the endpoint. A failed attempt pauses the whole sender for that delay, because an outage or a
rate limit concerns the endpoint, not one event. `flush()` cuts the backoff short (someone is
waiting), never a `Retry-After` (the endpoint asked for it): that hold is kept on the row in the
store, so every process's sender, `flush()`, `record()` and `timeback-nb flush` honour it.

Every delivery decision is timed on the host's monotonic clock (`store.host_now`), which all
processes on one machine share and which setting the wall clock does not move: a clock step
neither expires a lease in flight nor parks a row for the size of the step. Leases are renewed by a small keeper thread
while a send is in flight, so a slow endpoint never lets another kernel send the same row at
the same time; a killed kernel stops renewing, and its rows are free again once the lease ends.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import random
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .clock import host_now
from .config import unknown_transport
from .errors import TimebackError, invalid
from .store import Row, Store
from .transport import CaliperTransport, LocalTransport, Outcome, Transport
from .validation import validate_flush_timeout

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

Status = dict[str, Any]  # {"queued": n, "delivered": n, "rejected": n, "last_error": str | None}

IDLE_POLL_S = 15.0  # look for rows other (maybe dead) kernels left behind this often when idle
BUSY_POLL_S = 1.0  # how often to look while other senders hold the queued rows
MIN_WAIT_S = 0.02
FLUSH_POLL_S = 0.05
MAX_BATCH_SIZE = 1000  # events in one envelope; a request stays well under a megabyte


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with "equal" jitter: uniform(step/2, step) for the step
    min(cap, base * 2**(n-1)). The jitter spreads kernels apart; the floor keeps it from zero."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        step = min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 64))
        return step * (0.5 + 0.5 * rand())


def _check_batch_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        raise invalid("batch_size", f"expected an integer from 1 to {MAX_BATCH_SIZE}, got {value!r}")
    return value


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Sender:
    """Delivers the store's queued rows through `transport` on a daemon thread.

    `start()` is a no-op while running; `stop()` is idempotent and joins. `on_status` is called
    after each change, from the sender thread (or from a thread that calls `note_error`), and
    must be cheap.
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        *,
        owner: str | None = None,
        lease_seconds: float = 15.0,
        backoff: Backoff = Backoff(),
        batch: int = 100,
        batch_size: int = 1,
        on_status: Callable[[Status], None] | None = None,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = host_now,
    ) -> None:
        self.store = store
        self.transport = transport
        self.owner = owner or _default_owner()
        self.lease_seconds = lease_seconds
        self.backoff = backoff
        self.batch = batch  # rows leased at a time
        self.batch_size = _check_batch_size(batch_size)  # events per request (one envelope)
        self.on_status = on_status
        self.last_error: str | None = None
        self._error_passes = False  # last_error was a retry: the next delivery clears it
        self._rand = rand
        self._clock = clock  # seconds on the host's monotonic clock (injectable for tests)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._expedite = False
        self._pause_until = 0.0  # our own backoff after a failure (a flush cuts it short), on _clock
        self._hold_until = 0.0  # the endpoint's Retry-After (honoured even by a flush), on _clock
        # Event ids of leased rows not yet finished (renewed by the keeper); every mark names the
        # event, not its seq, which changes if the store file is replaced (Store.renew).
        self._held: list[str] = []
        self._held_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Sender({self.store!r}, {self.transport!r}, owner={self.owner!r}, running={self.running})"

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Sender:
        with self._start_lock:
            if self.running:
                return self
            self._stop.clear()
            self._wake.set()  # drain what earlier kernels left queued right away
            self._thread = threading.Thread(target=self._run, name="timeback-sender", daemon=True)
            self._keeper = threading.Thread(target=self._keep_leases, name="timeback-lease-keeper", daemon=True)
            self._thread.start()
            self._keeper.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop after the send in flight (if any); rows not attempted are released."""
        with self._start_lock:
            thread, keeper = self._thread, self._keeper
            self._stop.set()
            self._wake.set()
            for t in (thread, keeper):
                if t is not None and t is not threading.current_thread():
                    t.join(timeout)

    def wake(self) -> None:
        """Something was enqueued: look at the outbox now."""
        self._wake.set()

    def note_error(self, message: str, *, passes: bool = False) -> None:
        """Report a problem found outside the sender (e.g. an event that could not be built);
        with `passes`, the next successful delivery clears it."""
        self._set_error(message, passes=passes)
        self._report()

    def _set_error(self, message: str | None, *, passes: bool) -> None:
        # A transient failure (a retry) is over once something gets through; a reject stays
        # shown, it needs someone to look at it.
        self.last_error = message
        self._error_passes = passes

    def flush(self, timeout: float = 10.0) -> dict[str, int]:
        """Deliver what is queued now (earlier kernels' rows included, once their lease has run
        out), cutting backoff delays short (not a server's Retry-After); return when none of it
        is queued any more, or after `timeout` s. The counts cover the rows that were in the
        outbox when flush was called: delivered or rejected since then, and still queued."""
        deadline = time.monotonic() + validate_flush_timeout(timeout)
        last = self.store.last_seq()
        before = self.store.counts(max_seq=last)
        self._expedite = True
        self.start()
        self._wake.set()
        while self.store.any_queued(max_seq=last):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._changed:
                self._changed.wait(min(remaining, FLUSH_POLL_S))
        now_counts = self.store.counts(max_seq=last)
        return {
            "delivered": now_counts["delivered"] - before["delivered"],
            "queued": now_counts["queued"],
            "rejected": now_counts["rejected"] - before["rejected"],
        }

    # -- the sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set() and not self.store.closed:
            try:
                if not self._step():
                    self._sleep()
            except Exception as exc:  # e.g. the file stayed locked, disk full: keep the thread alive
                if self.store.closed:
                    break
                log.warning("timeback sender: %s: %s", type(exc).__name__, exc)
                self._set_error(f"{type(exc).__name__}: {exc}", passes=True)
                self._report()
                self._wake.wait(self.backoff.cap)
                self._wake.clear()

    def _sleep(self) -> None:
        now = self._clock()
        paused = max(self._pause_until, self._hold_until)
        if paused > now:
            timeout = paused - now
        else:
            due = self.store.next_due(now)
            # Rows are queued but none was free for us: another sender holds them or their run,
            # and may finish any moment, so look again soon (but never spin).
            timeout = IDLE_POLL_S if due is None else min(max(due - now, MIN_WAIT_S), BUSY_POLL_S)
        self._wake.wait(timeout)
        self._wake.clear()

    def _step(self) -> bool:
        """Lease and send one batch; False when there was nothing to do (or we must wait)."""
        if self._expedite:
            self._expedite = False
            self._pause_until = 0.0
            self.store.expedite(self._clock())
        now = self._clock()
        if max(self._pause_until, self._hold_until) > now:
            self._report()  # woken while waiting out a retry: what was just queued still shows
            return False
        rows = self.store.lease(self.owner, now, self.lease_seconds, max(self.batch, self.batch_size))
        if not rows:
            return False
        with self._held_lock:
            self._held = [r.event_id for r in rows]
        try:
            rows = self._park_foreign(rows)
            for chunk in self._chunks(rows):
                if self._stop.is_set() or not self._deliver(chunk):
                    break
        finally:
            with self._held_lock:
                left, self._held = self._held, []
            if left:
                self.store.release(self.owner, left)
            self._report()
        return True

    def _park_foreign(self, rows: list[Row]) -> list[Row]:
        """Reject the rows this transport cannot send (committed while another transport was
        configured: Caliper envelopes cannot go to a relay, adapter bodies not to Caliper), with
        the reason; they stay in the store, shown. The others are returned."""
        kinds = getattr(self.transport, "kinds", None)
        if kinds is None:
            return rows
        for row in rows:
            if row.kind not in kinds:
                reason = (
                    f"a {row.kind!r} row, committed under another transport; this one sends "
                    f"{', '.join(kinds)} rows (set TIMEBACK_NB_TRANSPORT back to deliver it)"
                )
                with self._held_lock:
                    self._held.remove(row.event_id)
                self.store.mark_rejected(row.event_id, reason)
                self._set_error(reason, passes=False)
        return [row for row in rows if row.kind in kinds]

    def _chunks(self, rows: list[Row]) -> list[list[Row]]:
        """The leased rows as requests: one row each, or with `batch_size` > 1 and a transport
        that sends batches, up to `batch_size` rows that fit one envelope (same `batch_key`).
        Rows keep their order within a chunk, and all rows of one run share a key (one course,
        one sensor), so a run's events still go out in seq order."""
        send_batch = getattr(self.transport, "send_batch", None)
        if self.batch_size == 1 or send_batch is None:
            return [[row] for row in rows]
        key_of = self.transport.batch_key  # type: ignore[attr-defined]
        chunks: list[list[Row]] = []
        open_chunks: dict[str, list[Row]] = {}
        for row in rows:
            key = key_of(row.body)
            if key is None:  # sent alone; nothing after it may overtake it
                open_chunks.clear()
            chunk = open_chunks.get(key) if key is not None else None
            if chunk is None or len(chunk) >= self.batch_size:
                chunk = [row]
                chunks.append(chunk)
                if key is not None:
                    open_chunks[key] = chunk
            else:
                chunk.append(row)
        return chunks

    def _deliver(self, rows: list[Row]) -> bool:
        """Send rows in one request and record the outcome; False when the sender must pause.
        A rejected batch is split in halves until the rejected rows stand alone, so one bad
        event never takes the others with it."""
        try:
            if len(rows) == 1:
                outcome = self.transport.send(rows[0].body, rows[0].event_id)
            else:
                outcome = self.transport.send_batch([(r.event_id, r.body) for r in rows])  # type: ignore[attr-defined]
        except Exception as exc:  # a transport bug must not kill the sender or lose the rows
            redact = getattr(self.transport, "redact", str)  # the message may quote the endpoint
            trace = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            log.error("timeback sender: transport raised on %s\n%s", rows[0].event_id, trace)
            outcome = Outcome.retry(None, redact(f"{type(exc).__name__}: {exc}"))
        if outcome.status == "rejected" and len(rows) > 1:
            log.info("timeback: a batch of %d events was rejected (%s); splitting it", len(rows), outcome.reason)
            half = len(rows) // 2
            return self._deliver(rows[:half]) and self._deliver(rows[half:])
        event_ids = [r.event_id for r in rows]
        with self._held_lock:
            for event_id in event_ids:
                self._held.remove(event_id)
        if outcome.status == "delivered":
            self.store.mark_delivered_many(event_ids)
            if self._error_passes:
                self._set_error(None, passes=False)
            return True
        if outcome.status == "rejected":
            row = rows[0]
            log.warning("timeback event %s rejected: %s", row.event_id, outcome.reason)
            self.store.mark_rejected(row.event_id, outcome.reason or "rejected")
            self._set_error(outcome.reason, passes=False)
            return True
        now = self._clock()
        delay, held = self._retry_delay(outcome, rows[0].attempts + 1)
        if held:
            self._hold_until = now + delay
        else:
            self._pause_until = now + delay
        for row in rows:
            self.store.mark_retry(row.event_id, outcome.reason or "retry", now + delay, owner=self.owner, hold=held)
        self._set_error(outcome.reason, passes=True)
        log.info(
            "timeback event %s%s not delivered (%s); next try in %.2f s",
            rows[0].event_id, f" and {len(rows) - 1} more" if len(rows) > 1 else "", outcome.reason, delay,
        )
        return False

    def _retry_delay(self, outcome: Outcome, attempt: int) -> tuple[float, bool]:
        """How long to wait after a failed attempt, and whether the endpoint asked for it (a
        hold no flush cuts short). Never less than our own backoff step: a Retry-After of 0,
        negative, unreadable or in the past is no reason to send again at once."""
        step = self.backoff.delay(attempt, self._rand)
        if outcome.after_s is not None and outcome.after_s > step:
            return outcome.after_s, True
        return step, False

    def _keep_leases(self) -> None:
        period = self.lease_seconds / 3
        while not self._stop.wait(period):
            with self._held_lock:
                held = list(self._held)
            if held:
                try:
                    self.store.renew(self.owner, held, self._clock(), self.lease_seconds)
                except Exception as exc:
                    log.debug("lease renewal failed: %s", exc)

    def _report(self) -> None:
        with self._changed:
            self._changed.notify_all()
        if self.on_status is None:
            return
        try:
            self.on_status(dict(_counts_if_readable(self.store), last_error=self.last_error))
        except Exception:
            log.exception("timeback sender: on_status failed")


def _counts_if_readable(store: Store) -> dict[str, int]:
    """The store's counts, or none when it cannot be read now: the error still gets through."""
    try:
        return store.counts()
    except TimebackError:
        return {}


# -- the process-wide registry ---------------------------------------------------------------

_registry: dict[tuple[str, ...], Sender] = {}
_registry_lock = threading.Lock()


def _registry_key(settings: Settings, store: Store) -> tuple[str, ...]:
    if settings.transport in ("local", "outbox"):
        return (str(store.path), settings.transport)
    if settings.transport == "relay":
        token = hashlib.sha256((settings.hub_token or settings.relay_token or "").encode("utf-8")).hexdigest()
        return (str(store.path), "relay", settings.relay_url or "", token)
    secret = hashlib.sha256((settings.client_secret or "").encode("utf-8")).hexdigest()
    return (str(store.path), "caliper", settings.caliper_url, settings.auth_url, settings.client_id or "", secret)


def make_transport(settings: Settings, store: Store) -> Transport:
    """The transport `settings` ask for: the store's events table, a Caliper endpoint, or a relay."""
    if settings.transport == "local":
        return LocalTransport(store)
    if settings.transport == "relay":
        from .adapter import RelayTransport

        return RelayTransport(
            settings.relay_url or "",
            settings.hub_token or settings.relay_token or "",
            scheme="token" if settings.hub_token else "Bearer",
            plain_http_hosts=settings.relay_plain_http_hosts,
        )
    if settings.transport == "caliper":
        return CaliperTransport(
            settings.caliper_url, settings.auth_url, settings.client_id or "", settings.client_secret or ""
        )
    raise unknown_transport(settings.transport)


class HeldOutbox:
    """`TIMEBACK_NB_TRANSPORT=outbox`: events are committed and stay queued; this process sends
    nothing. A trusted process that holds the credentials delivers them (`timeback-nb flush`).
    Same surface as `Sender`, so the Activity and `Delivery` need not know the difference."""

    running = False

    def __init__(self, store: Store) -> None:
        self.store = store
        self.transport = None
        self.on_status: Callable[[Status], None] | None = None
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"HeldOutbox({self.store!r})"

    def start(self) -> HeldOutbox:
        return self

    def stop(self, timeout: float | None = None) -> None:
        pass

    def wake(self) -> None:
        if self.on_status is not None:
            self.on_status(dict(_counts_if_readable(self.store), last_error=self.last_error))

    def note_error(self, message: str, *, passes: bool = False) -> None:
        self.last_error = message
        self.wake()

    def flush(self, timeout: float = 10.0) -> dict[str, int]:
        validate_flush_timeout(timeout)
        return {"delivered": 0, "queued": self.store.counts()["queued"], "rejected": 0}


def get_sender(settings: Settings, store: Store, *, start: bool = True) -> Sender | HeldOutbox:
    """The sender for this store and endpoint (one per process), started unless `start=False`
    (`flush` starts it itself, after counting what is queued)."""
    key = _registry_key(settings, store)
    with _registry_lock:
        sender = _registry.get(key)
        if sender is not None and sender.store.closed:  # it has nothing left to do
            sender.stop(1.0)
            if sender.transport is not None:
                sender.transport.close()
            sender = None
        if sender is None and settings.transport == "outbox":
            sender = _registry[key] = HeldOutbox(store)
        if sender is None:
            sender = _registry[key] = Sender(store, make_transport(settings, store))
    return sender.start() if start else sender


def stop_senders(timeout: float = 2.0) -> None:
    """Stop every registered sender and close its transport (at interpreter exit, in tests)."""
    with _registry_lock:
        senders = list(_registry.values())
        _registry.clear()
    for sender in senders:
        sender.stop(timeout)
        if sender.transport is not None:
            sender.transport.close()


atexit.register(stop_senders)
