"""kill -9 of a kernel whose windows are held (issue 12 §4, §5): real processes, real SIGKILL.

The killed process (tests/kernel_worker.py) runs cells in a real IPython shell with a page whose
reports, as without comm subshells, wait behind the running cell. The next process on the store
— its start(), flush() or `timeback-nb flush` — hands on what the dead one had checkpointed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timeback_nb.store import Store
from timeback_nb.validation import iso_to_epoch_ms

from .conftest import CONFIG

WORKER = Path(__file__).with_name("kernel_worker.py")
ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).with_name("timeback-nb")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "timeback.config.json"
    config.write_text(json.dumps(CONFIG))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIMEBACK")}
    environ.update(
        TIMEBACK_CONFIG=str(config),
        TIMEBACK_NB_STORE=str(tmp_path / "store.sqlite3"),
        TIMEBACK_NB_TRANSPORT="local",
        TIMEBACK_USER_EMAIL="student@example.edu",
        TIMEBACK_NB_PING_INTERVAL="0.25",
        PYTHONPATH=str(ROOT),
    )
    return environ


def run_until_marker(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in proc.stdout:  # other output (e.g. the end cell's confirmation) comes before
        if line.startswith("MARK "):
            return proc, line.split()[1:]
    raise AssertionError(f"the worker ended early: {proc.stderr.read()}")


def kill(proc: subprocess.Popen) -> int:
    """SIGKILL, as the OOM killer does; the wall ms of the kill."""
    killed_at = int(time.time() * 1000)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()
    return killed_at


def next_process(env: dict[str, str], how: str) -> None:
    if how == "cli":
        command = [str(CLI), "flush", "--timeout", "10"]
    else:
        command = [sys.executable, str(WORKER), how]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def delivered(env: dict[str, str], activity: str = "week-3") -> list[dict]:
    with Store(env["TIMEBACK_NB_STORE"]) as store:
        events = [json.loads(e["body"])["data"][0] for e in store.local_events()]
    return [e for e in events if e["object"]["id"].endswith(f"/{activity}")]


def window_spans(events: list[dict]) -> list[tuple[int, int, int]]:
    """(start, end, active) wall ms of each TimeSpentEvent, in delivery order."""
    spans = []
    for e in events:
        if e["type"] != "TimeSpentEvent":
            continue
        items = {i["type"]: round(i["value"] * 1000) for i in e["generated"]["items"]}
        end = iso_to_epoch_ms(e["eventTime"])
        spans.append((end - items.get("active", 0) - items.get("inactive", 0), end, items.get("active", 0)))
    return spans


def assert_contiguous(spans: list[tuple[int, int, int]]) -> None:
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        assert start == end, spans


@pytest.mark.parametrize("how", ["start", "flush", "cli"])
def test_a_completion_is_durable_when_end_returns_even_if_the_kernel_is_killed_at_once(env: dict[str, str], how: str) -> None:
    interval = 1.0
    proc, (_, since) = run_until_marker(env, "end", str(interval))
    kill(proc)  # the page's last reports wait behind the end cell: the final window was held
    assert not delivered(env) or delivered(env)[-1]["type"] != "ActivityEvent"
    next_process(env, how)
    events = delivered(env)
    assert [e["type"] for e in events].count("ActivityEvent") == 1
    completion = events[-1]
    assert completion["type"] == "ActivityEvent" and completion["generated"]["attempt"] == 1
    spans = window_spans(events)
    assert_contiguous(spans)
    ended = iso_to_epoch_ms(completion["eventTime"])
    assert spans[-1][1] == ended, "the final window closes at the end"
    # The page was visible from its first report until end(): all of it is active time.
    assert abs(sum(active for *_, active in spans) - (ended - int(since))) <= 30
    with Store(env["TIMEBACK_NB_STORE"]) as store:
        assert store.checkpoints() == []
        assert [r["ended_at"] for r in store.runs() if r["activity_id"] == "week-3"] == [completion["eventTime"]]


@pytest.mark.parametrize("into_cell", [3.3, 3.6])  # intervals: the kill lands 0.8 / 0.1 interval after a checkpoint
def test_kill_9_in_a_long_cell_without_subshells_loses_at_most_one_interval(env: dict[str, str], into_cell: float) -> None:
    interval = 1.0
    proc, (_, since) = run_until_marker(env, "long-cell", str(interval))
    time.sleep(into_cell * interval)  # every window of the cell is held in memory (reports wait)
    killed_at = kill(proc)
    before = window_spans(delivered(env))
    next_process(env, "flush")
    spans = window_spans(delivered(env))
    assert len(spans) > len(before) + 2, "the cell's windows were recovered"
    assert_contiguous(spans)
    truth = killed_at - int(since)  # the page stayed visible until the kill
    loss = truth - sum(active for *_, active in spans)
    print(f"kill -9 after {truth / 1000:.2f} s, {interval:g} s heartbeat, no subshells: lost {loss} ms")
    assert 0 <= loss <= interval * 1000 + 150
