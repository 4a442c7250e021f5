"""The public entry points: `start`, `current`, `record`, `flush` (design §4).

Everything here is glue: validate the arguments, resolve config and identity, wire an Activity
to the delivery sink, and keep the one-running-activity-per-kernel rule.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .activity import Activity
from .errors import StateError, TimebackError, invalid
from .options import resolve_idle_after, resolve_options
from .records import ActivityRef, Completion
from .validation import (
    validate_activity_id,
    validate_course_selector,
    validate_ended_at,
    validate_flush_timeout,
    validate_metrics,
    validate_name,
    validate_run_id,
    validate_user,
)

log = logging.getLogger(__name__)

NO_PAGE_NOTICE_AFTER = 5.0
STORE_PATIENCE_S = 1.0  # the most one call on a busy store waits from a cell (then StoreError)  # seconds without any page report before saying time is not counted

_lock = threading.RLock()
_current: Activity | None = None
_stores: dict[str, Any] = {}


def current() -> Activity | None:
    """The running (not yet ended) Activity of this kernel, or None."""
    with _lock:
        return _current if _current is not None and not _current.ended else None


def latest() -> Activity | None:
    """This kernel's most recent Activity, running or ended (so `%timeback status` can say how
    the last one ended), or None before the first `start()`."""
    with _lock:
        return _current


def start(
    id: str,
    name: str,
    course: Mapping[str, Any] | None = None,
    *,
    stateful: bool = False,
    run_id: str | None = None,
    user: str | Mapping[str, Any] | None = None,
    heartbeat_interval: float | None = None,
    abandon_after: float | None = None,
    idle_after: float | None = None,
    time: bool = True,
    config: str | None = None,
    display: bool = True,
) -> Activity:
    """Start tracking this notebook as the Timeback activity `id`; return the `Activity`.

    `course` is ``{"subject": "Math", "grade": 3}`` or ``{"code": "CS-101"}`` (optional when the
    config has one course). `idle_after` (seconds; default off, also ``TIMEBACK_NB_IDLE_AFTER``
    and ``c.Timeback.idle_after``; 0 turns it off): a page with no input for that long stops
    counting from its last input. Bad input raises a `TimebackError` naming the field; nothing starts.
    """
    global _current
    activity_id = validate_activity_id(id)
    activity_name = validate_name(name)
    selector = None if course is None else validate_course_selector(course)
    explicit_run_id = None if run_id is None else validate_run_id(run_id)
    user_arg = validate_user(user)
    for flag, value in (("stateful", stateful), ("time", time), ("display", display)):
        if not isinstance(value, bool):
            raise invalid(flag, f"must be True or False, got {value!r}")
    shell = _ipython()
    options = resolve_options(
        {"heartbeat_interval": heartbeat_interval, "abandon_after": abandon_after},
        ipython_config=getattr(shell, "config", None),
    )
    interval, abandon = options["heartbeat_interval"], options["abandon_after"]
    idle = resolve_idle_after(idle_after, ipython_config=getattr(shell, "config", None))
    if idle is not None and idle > abandon:
        raise invalid("idle_after", f"must be ≤ abandon_after ({abandon:g} s), got {idle:g} s")

    with _lock:
        running = current()
        if running is not None:
            raise StateError(
                f"activity {running.id!r} (run {running.run_id}) is already running in this "
                "kernel; call its end() first (timeback_nb.current().end())",
                field="id",
            )
        context = _resolve(config, selector, user_arg)
        ref = ActivityRef(activity_id, activity_name, context.course.selector)
        course_key = _course_key(ref.course)
        store = context.store
        _adopt_orphans(store, context.sender)
        if explicit_run_id is not None:
            chosen_run_id = explicit_run_id
        elif stateful:
            chosen_run_id = store.open_run(context.target.user_id, activity_id, course_key) or str(uuid.uuid4())
        else:
            chosen_run_id = str(uuid.uuid4())
        sender = context.sender
        activity = Activity(
            ref,
            run_id=chosen_run_id,
            sink=context.delivery,
            heartbeat_interval=interval,
            abandon_after=abandon,
            idle_after=idle,
            ping_interval=options["ping_interval"],
            track_time=time,
            mode=context.settings.transport,
            on_finish=lambda finished, completion: _on_finish(finished, completion, store, stateful),
            no_page_notice_after=NO_PAGE_NOTICE_AFTER,
        )
        store.remember_run(
            context.target.user_id, activity_id, course_key, chosen_run_id, activity.started_at, stateful=stateful
        )
        sender.on_status = activity.set_delivery_status
        activity.set_delivery_status(dict(store.counts(), last_error=sender.last_error))
        activity.begin(shell)
        if _current is None:
            # Registered after delivery's own exit hook, so it runs first: the last window is
            # committed while the sender can still take it.
            atexit.register(_shutdown)
        _current = activity

    if display and shell is not None:
        from IPython.display import display as show

        from .widget import TimebackWidget

        activity.widget = TimebackWidget(activity)
        activity.widget_cell = shell.execution_count  # start() as this cell's last line shows nothing more
        show(activity.widget)
    return activity


def record(
    *,
    id: str,
    name: str,
    course: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any],
    run_id: str | None = None,
    user: str | Mapping[str, Any] | None = None,
    ended_at: Any = None,
    config: str | None = None,
    timeout: float = 10.0,
) -> dict[str, int]:
    """Send a completion from any Python process (a grader, a backend): no kernel, no widget.

    The event is committed to the outbox first (a store that cannot take it raises a
    `StoreError` naming the file and the cause; nothing is half-done), then delivered for up to `timeout` seconds;
    what is not delivered by then stays queued (`timeback-nb flush`). It closes the stateful
    run of this user, activity and course. Returns the flush counts.
    """
    activity_id = validate_activity_id(id)
    activity_name = validate_name(name)
    selector = None if course is None else validate_course_selector(course)
    checked = validate_metrics(metrics)
    wait = validate_flush_timeout(timeout)
    explicit_run_id = None if run_id is None else validate_run_id(run_id)
    ended = validate_ended_at(ended_at) if ended_at is not None else _now_iso()
    with _patient_store():  # a locked store is reported in seconds, not after its busy timeout
        context = _resolve(config, selector, validate_user(user))
        ref = ActivityRef(activity_id, activity_name, context.course.selector)
        store = context.store
        session = explicit_run_id or store.open_run(context.target.user_id, activity_id, _course_key(ref.course))
        context.delivery.commit_now(Completion(ref, session, ended, checked))  # or StoreError: nothing kept
        if session is not None:
            try:
                store.close_run(session, ended)
            except TimebackError as exc:  # the completion is committed; only the run's resumption is affected
                log.warning("timeback: could not mark run %s as ended: %s", session, exc)
    return context.sender.flush(wait)


def flush(timeout: float = 10.0) -> dict[str, int]:
    """Deliver what is queued now; returns ``{"delivered": n, "queued": n, "rejected": n, "held": n}``.

    ``held`` counts this kernel's records that are not in the outbox yet (the final window and
    completion of an `end()` in the same cell while page reports wait for the cell to end, or
    records kept in memory while the store fails); they are included in ``queued``."""
    from .config import Settings
    from .outbox import get_sender

    wait = validate_flush_timeout(timeout)
    settings = Settings.from_env()
    store = _store(settings.store_path)
    sender = get_sender(settings, store, start=False)
    _adopt_orphans(store, sender)
    counts = sender.flush(wait)
    with _lock:
        activity = _current
    held = 0 if activity is None or activity.finished else activity.held_records()
    counts["held"] = held
    counts["queued"] += held
    return counts


# -- wiring --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """Config, identity and delivery resolved for one activity."""

    settings: Any
    course: Any
    store: Any
    target: Any
    sender: Any
    delivery: Any


def _resolve(config: str | None, selector: dict[str, Any] | None, user: dict[str, Any] | None) -> _Context:
    from .config import Settings, find_config, load_config, no_config_error
    from .delivery import Delivery
    from .events import Target
    from .identity import resolve_user
    from .outbox import get_sender

    settings = Settings.from_env()
    path = find_config(config)
    if path is None:
        raise no_config_error()
    course = load_config(path, settings.env).resolve(selector, settings.env)
    store = _store(settings.store_path)
    email, user_id = resolve_user(user, settings, store)
    target = Target.from_course(course, settings, email, user_id)
    sender = get_sender(settings, store)
    wire = "adapter" if settings.transport == "relay" else "caliper"  # the relay builds the events
    return _Context(settings, course, store, target, sender, Delivery(target, store, sender, wire=wire))


def _store(path: Any) -> Any:
    from .store import Store

    with _lock:
        store = _stores.get(str(path))
        if store is None or store.closed:
            store = _stores[str(path)] = Store(path)
        return store


def _adopt_orphans(store: Any, sender: Any) -> None:
    """Commit what killed kernels left in checkpoints (timeback_nb.recovery), then send it."""
    from .recovery import adopt_orphans

    with store.patience(STORE_PATIENCE_S):
        if adopt_orphans(store):
            sender.wake()


def _course_key(selector: Mapping[str, Any]) -> str:
    if "code" in selector:
        return f"code:{selector['code']}"
    return f"{selector['subject']}:g{selector['grade']}"


def _on_finish(activity: Activity, completion: Completion | None, store: Any, stateful: bool) -> None:
    # A stateful run stays open across kernels until a completion closes it.
    if completion is not None or not stateful:
        try:
            with store.patience(STORE_PATIENCE_S):
                store.close_run(activity.run_id, activity.ended_at)
        except TimebackError as exc:  # a failing store: the run stays resumable, nothing is lost
            log.warning("timeback: could not mark run %s as ended: %s", activity.run_id, exc)


@contextmanager
def _patient_store() -> Iterator[None]:
    """This thread's calls on the configured store wait at most STORE_PATIENCE_S each."""
    from .config import Settings

    with _store(Settings.from_env().store_path).patience(STORE_PATIENCE_S):
        yield


def _now_iso() -> str:
    from .clock import SystemClock, iso_utc_ms

    return iso_utc_ms(SystemClock().wall_ms())


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    return get_ipython()


def _shutdown() -> None:
    """At kernel exit: close the last window of a running activity so it is not lost."""
    with _lock:
        activity = _current
    if activity is not None and not activity.finished:
        activity.shutdown()
