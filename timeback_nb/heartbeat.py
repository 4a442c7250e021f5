"""The heartbeat thread: wakes at the next window boundary (or when told) and runs one tick."""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread calling ``tick()`` -> seconds until the next call (None: stop).

    It sleeps until the deadline instead of polling; ``wake()`` cuts the sleep short (a page
    report arrived, the student paused). ``start`` is a no-op while running and ``stop`` is
    idempotent and joins, so nothing runs after it returns.
    """

    def __init__(self, tick: Callable[[], float | None], *, name: str = "timeback-heartbeat") -> None:
        self._tick = tick
        self._name = name
        self._wakeup = threading.Condition()
        self._stopping = False
        self._woken = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._wakeup:
            if self.running or self._stopping:
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        with self._wakeup:
            self._woken = True
            self._wakeup.notify_all()

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                if self._stopping:
                    return
            try:
                delay = self._tick()
            except Exception:  # a bug must not silently end tracking; keep ticking
                log.exception("heartbeat tick failed")
                delay = 1.0
            with self._wakeup:
                if delay is None:
                    self._stopping = True
                if self._stopping:
                    return
                if not self._woken:
                    self._wakeup.wait(max(0.0, delay))
                self._woken = False
