"""A hide/show inside a busy cell (time.sleep(8)) is counted exactly, whether the page's reports
arrive live on a comm subshell (Lab's default) or only after the cell (subshells disabled); and
the end cell's line shows the settled time when those reports come after it."""

from __future__ import annotations

import json
import time

import pytest

from timeback_nb.clock import format_elapsed

from .conftest import OpenNotebook
from .harness import FINISHED_SOURCE, JupyterServer, assert_active_time, begin, finish, run_events, wait_until

pytestmark = pytest.mark.browser

BUSY = "time.sleep(8); print('OUT busy cell done')"
STATE = "document.querySelector('.tbnb').dataset.state"  # the kernel's state word, as the page last heard it


@pytest.fixture(params=["subshells", "no-subshells"])
def server(request: pytest.FixtureRequest) -> JupyterServer:
    name = "jupyter" if request.param == "subshells" else "jupyter_no_subshells"
    return request.getfixturevalue(name)


def test_hide_and_show_during_a_busy_cell(open_notebook: OpenNotebook, server: JupyterServer) -> None:
    live = server.comms_over_subshells
    nb, run_id, truth = begin(open_notebook, server=server, heartbeat_interval=2)
    time.sleep(1.0)  # idle kernel after display: the reply to the first ping moves the comm onto a subshell
    busy = nb.add_cell(BUSY)
    nb.run_cell(busy)
    time.sleep(1.5)
    truth.hidden("a", nb.hide())
    # Live delivery answers the hidden page's report during the cell; queued delivery cannot.
    if live:
        nb.page.wait_for_function(f"() => {STATE} === 'hidden'", polling=100, timeout=3_000)
    else:
        time.sleep(1.5)
        assert nb.page.evaluate(f"() => {STATE}") == "active"
    time.sleep(1.5)
    truth.visible("a", nb.show())
    nb.wait_output(busy, "OUT busy cell done", timeout=20)
    time.sleep(1.0)
    ended, kernel = finish(nb)
    assert_active_time(run_events(server, run_id), truth, ended, kernel)


def test_the_end_cells_line_shows_the_settled_time_when_reports_come_after_the_cell(
    open_notebook: OpenNotebook, jupyter_no_subshells: JupyterServer
) -> None:
    nb, _, _ = begin(open_notebook, server=jupyter_no_subshells)
    time.sleep(1.0)
    # The page is hidden for 2 of these 4 s; its reports wait behind the cell, so when end() runs
    # the kernel still takes the page for visible: the line it shows then is 2 s too high.
    cell = nb.add_cell("time.sleep(4)\nactivity.end({'xpEarned': 3})\nprint('OUT ended')")
    nb.run_cell(cell)
    time.sleep(1.0)
    nb.hide()
    time.sleep(2.0)
    nb.show()
    nb.wait_output(cell, "OUT ended", timeout=30)
    deadline = time.monotonic() + 20
    while not (kernel := json.loads(nb.run(FINISHED_SOURCE)))["finished"]:
        assert time.monotonic() < deadline, kernel
        time.sleep(0.3)
    settled = f"Ended 'Linear functions': {format_elapsed(kernel['elapsed_ms'])} active; 3 XP (saved on this computer)."
    nb.page.wait_for_function(
        f"() => document.body.innerText.includes({json.dumps(settled)})", polling=100, timeout=5_000
    )
    assert nb.output_text(cell).startswith(settled), nb.output_text(cell)


def test_end_then_flush_in_one_cell_delivers_or_says_what_is_held(open_notebook: OpenNotebook, server: JupyterServer) -> None:
    # Issue 12 §14: with live reports, end() waits for the final window and the same cell's
    # flush() delivers it and the completion; with queued reports, flush() says they are held.
    live = server.comms_over_subshells
    nb, run_id, _truth = begin(open_notebook, server=server, heartbeat_interval=2)
    # Idle kernel after display for more than a ping interval (2 s): the reply to the first report
    # moves the comm onto a subshell, and a ping arriving there shows the kernel it is live.
    time.sleep(2.5)
    counts = json.loads(nb.run("activity.end({'xpEarned': 3})\nprint('OUT', json.dumps(timeback_nb.flush(5)))"))
    sent = [e["type"] for e in run_events(server, run_id)]
    if live:
        assert counts["held"] == 0 and counts["queued"] == 0, counts
        assert sent[-1] == "ActivityEvent", sent
    else:
        assert counts["held"] == 2 and counts["queued"] >= 2, counts  # the final window and the completion
        assert "ActivityEvent" not in sent
        wait_until(lambda: json.loads(nb.run(FINISHED_SOURCE))["finished"], 20, "the run to finish after the cell")
        assert [e["type"] for e in run_events(server, run_id)][-1] == "ActivityEvent"
