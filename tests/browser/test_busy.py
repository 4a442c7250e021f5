"""A hide/show inside a busy cell (time.sleep(8)) is counted exactly, whether the page's reports
arrive live on a comm subshell (Lab's default) or only after the cell (subshells disabled)."""

from __future__ import annotations

import time

import pytest

from .conftest import OpenNotebook
from .harness import JupyterServer, assert_active_time, begin, finish, run_events

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
