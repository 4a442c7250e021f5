"""What a heartbeat window (and a completion's time) must look like before the relay counts
it, beyond the SDK's field checks, which check none of this (protocol reference §5.5).

Pure arithmetic on epoch milliseconds; the relay's store supplies the accepted windows the
stateful rules compare against. Each refusal is a 400 INVALID_PAYLOAD naming the field.
"""

from __future__ import annotations

from typing import Iterable

from .adapter import Heartbeat, invalid_payload

__all__ = [
    "DAY_MS",
    "MAX_WINDOW_MS",
    "SKEW_MS",
    "TOLERANCE_MS",
    "check_age",
    "check_not_future",
    "check_parallel",
    "check_window",
]

DAY_MS = 86_400_000
MAX_WINDOW_MS = 10 * 60 * 1000  # the kernel closes a window every 15 s and abandons at 10 min
SKEW_MS = 60 * 1000  # a kernel's clock may run this far ahead of the relay's
TOLERANCE_MS = 1000  # rounding between a kernel's monotonic and wall clocks


def check_window(beat: Heartbeat, now_ms: int) -> None:
    """The rules one window can be judged on alone: it ends after it starts, lasts at most
    10 minutes, is not in the future, and its active + inactive time fill it (±1 s)."""
    length = beat.ended_ms - beat.started_ms
    if length <= 0:
        raise invalid_payload("endedAt", "endedAt must be after startedAt")
    if length > MAX_WINDOW_MS:
        raise invalid_payload("endedAt", f"A window lasts at most {MAX_WINDOW_MS // 60000} minutes; this one {length} ms")
    check_not_future("endedAt", beat.ended_ms, now_ms)
    window = beat.window
    if abs(window.elapsed_ms + window.paused_ms - length) > TOLERANCE_MS:
        raise invalid_payload(
            "elapsedMs", f"elapsedMs + pausedMs must equal the window's length ({length} ms), "
            f"got {window.elapsed_ms + window.paused_ms} ms",
        )


def check_not_future(field: str, ms: int, now_ms: int) -> None:
    """A moment a kernel reports (a window's or a completion's end) is not ahead of the
    relay's clock by more than the skew allowed."""
    if ms > now_ms + SKEW_MS:
        raise invalid_payload(field, f"{field} is in the future")


def check_age(field: str, ms: int, now_ms: int, max_age_ms: int) -> None:
    """A window's start or a completion's end is at most `max_age_ms` back (the relay's
    `--retention-days`): the relay prunes what would tell an older event from one it has
    already counted, so it refuses it rather than count it twice."""
    if ms < now_ms - max_age_ms:
        raise invalid_payload(
            field, f"{field} is more than {max_age_ms / DAY_MS:g} days ago, beyond the relay's retention: "
            "it may have been counted already and can no longer be told from a duplicate",
        )


def check_parallel(beat: Heartbeat, others: Iterable[tuple[int, int, int]], max_parallel: int) -> None:
    """One student's active time, over every run, is at most `max_parallel` × wall time.

    `others` are the student's accepted windows `(start_ms, end_ms, active_ms)` that may
    overlap this one; each counts with the share of its active time that falls inside this
    window (active time is taken as spread evenly over a window).
    """
    start, end = beat.started_ms, beat.ended_ms
    active = float(beat.window.elapsed_ms)
    for other_start, other_end, other_active in others:
        shared = min(end, other_end) - max(start, other_start)
        if shared > 0 and other_active > 0:
            active += other_active * shared / (other_end - other_start)
    allowed = max_parallel * (end - start) + TOLERANCE_MS
    if active > allowed:
        raise invalid_payload(
            "elapsedMs", f"More active time than {max_parallel} activities at once allow "
            f"({round(active)} ms active in a {end - start} ms window across this student's runs)",
        )
