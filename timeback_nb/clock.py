"""Time sources. Durations come from the monotonic clock; wall time only stamps ISO strings.

A run takes one `WallAnchor` at its start and stamps every instant as anchor + monotonic
offset, so a wall-clock jump during the run changes no duration and no window length.

Delivery decisions that several processes share through the store (leases, retry delays, a
server's Retry-After) are timed on `host_now`, the host's monotonic clock: every process on the
machine reads the same clock (CLOCK_MONOTONIC on Linux, mach_absolute_time on macOS,
QueryPerformanceCounter on Windows), and setting the wall clock does not move it. A store file
is only ever shared on one host (SQLite's WAL needs shared memory), and `host_boot_id` tells a
reboot, after which the clock starts again from zero.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def monotonic_ms(self) -> int: ...

    def wall_ms(self) -> int: ...


class SystemClock:
    """The process clocks, in integer milliseconds."""

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


def host_now() -> float:
    """Seconds on the host's monotonic clock (the same in every process of this boot)."""
    return time.monotonic()


_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def host_boot_id() -> str:
    """Names this boot of the host, so a store can tell `host_now` readings of an earlier boot.

    Linux says so itself; elsewhere the boot time (wall clock minus monotonic clock), rounded
    so that drift does not change it: there a wall-clock step of more than ~10 minutes also
    reads as a new boot, which only frees leases early (a receiver drops the replay)."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return f"boot@{round((time.time() - time.monotonic()) / 1000)}"


def format_elapsed(ms: int) -> str:
    """Elapsed time as the widget shows it (js/format.js formatElapsed): "0:07", "12:34", "1:02:03"."""
    seconds = max(0, int(ms)) // 1000
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}:{minutes:02d}:{seconds % 60:02d}" if hours else f"{minutes}:{seconds % 60:02d}"


def iso_utc_ms(epoch_ms: int) -> str:
    """``2025-01-15T10:00:15.000Z``: UTC, millisecond precision, the form Timeback sends."""
    moment = _dt.datetime.fromtimestamp(epoch_ms // 1000, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{epoch_ms % 1000:03d}Z"


@dataclass(frozen=True)
class WallAnchor:
    """Maps monotonic ms onto wall-clock ms using one reading taken at the start of a run."""

    monotonic_ms: int
    wall_ms: int

    @classmethod
    def now(cls, clock: Clock) -> "WallAnchor":
        return cls(clock.monotonic_ms(), clock.wall_ms())

    def epoch_ms(self, monotonic_ms: int) -> int:
        return self.wall_ms + (monotonic_ms - self.monotonic_ms)

    def iso(self, monotonic_ms: int) -> str:
        return iso_utc_ms(self.epoch_ms(monotonic_ms))
