"""Hand on what a killed kernel could not: its checkpointed windows and completion.

A running Activity keeps one checkpoint row per run in the store (at every heartbeat boundary
and at `end()`): the windows it holds open, closed at that instant with each page as last known
(a page last known visible stays visible until then), and a completion that is due but waits
for the final window. A kernel that finishes normally drops it. A kernel killed with SIGKILL (an
out-of-memory kill in a long cell, a crash right after the end cell) leaves it behind, and the
next process on the same store — `start()`, `flush()` or `timeback-nb flush` — adopts it: the
events are committed in order and the checkpoint dropped in one transaction, so the loss is at
most the time since the last checkpoint (one heartbeat interval), and a completion is never lost
once `end(metrics)` has returned. Windows the dead kernel had already committed have the same
ids (run + window start) and are not committed twice.

A checkpoint is adopted only when its owner is gone: on the same host its process no longer
exists; from another host, it has not been rewritten for several intervals.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from .clock import SystemClock, iso_utc_ms
from .delivery import build_row
from .errors import TimebackError
from .events import Target
from .records import Completion, record_from_json
from .store import Checkpoint, Store

log = logging.getLogger(__name__)

FOREIGN_STALE_S = 60.0  # a checkpoint from another host is its owner's for this long past 3 intervals


def adopt_orphans(store: Store) -> int:
    """Commit the checkpointed events of dead processes; returns how many events were new.
    Never raises: a checkpoint that cannot be read is left (and logged), a failing store is
    logged and tried again by the next caller."""
    added = 0
    try:
        checkpoints = store.checkpoints()
    except TimebackError as exc:
        log.warning("timeback: could not look for checkpoints of killed kernels: %s", exc)
        return 0
    for checkpoint in checkpoints:
        if _owner_alive(checkpoint):
            continue
        try:
            data = json.loads(checkpoint.body)
            target = Target(**data["target"])
            records = [record_from_json(r) for r in data["records"]]
            send_time = iso_utc_ms(SystemClock().wall_ms())
            wire = data.get("wire", "caliper")  # relay mode commits the SDK's bodies
            rows = [build_row(record, target, send_time, wire=wire) for record in records]
        except Exception:
            log.exception("timeback: the checkpoint of run %s cannot be read; left in place", checkpoint.run_id)
            continue
        ended = next((r.ended_at for r in records if isinstance(r, Completion)), None)
        try:
            new = store.adopt_checkpoint(checkpoint, rows, ended)
        except TimebackError as exc:
            log.warning("timeback: could not adopt the checkpoint of run %s: %s", checkpoint.run_id, exc)
            continue
        if new is not None:
            log.info("timeback: handed on %d event(s) of run %s from a process that ended without", new, checkpoint.run_id)
            added += new
    return added


def _owner_alive(checkpoint: Checkpoint) -> bool:
    if checkpoint.owner_host != socket.gethostname():
        try:
            interval = float(json.loads(checkpoint.body).get("interval_s", 15.0))
        except (ValueError, TypeError, AttributeError):
            interval = 15.0
        return time.time() - checkpoint.updated < 3 * interval + FOREIGN_STALE_S
    if checkpoint.owner_pid == os.getpid():
        return True  # a run of this very process
    return _process_exists(checkpoint.owner_pid)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    try:  # a killed process its parent has not reaped yet is gone too
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
