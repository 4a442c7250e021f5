"""Truth where students work (issue 9): in JupyterLab a browser tab holds several documents, and
only a notebook panel that is shown counts. Each test keeps its own clock of when the lesson was
shown (the ground truth) and compares it with Σ active of the run's TimeSpentEvents.

One JupyterLab per comms setting for the module, with windowed notebooks in "full" mode (cells
scrolled out of view leave the DOM, the widget's view with them).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Iterator

import pytest

from .conftest import OpenNotebook
from .harness import (
    WIDGET_VIEW,
    JupyterServer,
    NotebookPage,
    VisibleTime,
    assert_active_time,
    begin_behind,
    finish,
    run_events,
    running,
    start_source,
    wait_state,
)

pytestmark = pytest.mark.browser

WINDOWED = {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "full"}}
NOTES = "notes.txt"  # the other document: a text file in Lab's editor
FILLER = ["# reading the lesson\n" * 12] * 30  # tall cells: the first one scrolls far out of view
BUSY = "time.sleep(6); print('OUT busy cell done')"


def _server(tmp_path_factory: pytest.TempPathFactory, subshells: bool) -> Iterator[JupyterServer]:
    server = JupyterServer(tmp_path_factory.mktemp("jupyter-panels"), comms_over_subshells=subshells, lab_settings=WINDOWED)
    server.notebooks.mkdir(parents=True, exist_ok=True)
    (server.notebooks / NOTES).write_text("scratch notes\n")
    with running(server):
        yield server


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    yield from _server(tmp_path_factory, True)


@pytest.fixture(scope="module")
def lab_no_subshells(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    yield from _server(tmp_path_factory, False)


@pytest.mark.parametrize("subshells", [True, False], ids=["subshells", "no-subshells"])
def test_lab_tabs_split_view_scrolling_and_a_busy_cell(
    open_notebook: OpenNotebook, request: pytest.FixtureRequest, subshells: bool
) -> None:
    server: JupyterServer = request.getfixturevalue("lab" if subshells else "lab_no_subshells")
    run_id = str(uuid.uuid4())
    nb = open_notebook([start_source(run_id, heartbeat_interval=2), *FILLER], server=server)
    lesson = nb.name
    truth = VisibleTime()
    begin_behind(nb, NOTES, truth)
    time.sleep(1.5)  # idle kernel: the replies move the comm to a subshell (when on)

    truth.hidden("a", nb.activate(NOTES))  # another Lab tab in front: not counted
    wait_state(nb, "hidden")
    time.sleep(1.5)
    truth.visible("a", nb.activate(lesson))
    wait_state(nb, "active")
    time.sleep(1.5)

    nb.dock(NOTES, "split-right", lesson)  # both shown side by side: counted throughout
    assert nb.shown_in_lab(lesson) and nb.shown_in_lab(NOTES)
    time.sleep(2.0)
    truth.hidden("a", nb.dock(NOTES, "tab-after", lesson))  # back behind the notes
    assert not nb.shown_in_lab(lesson)
    time.sleep(1.5)
    truth.visible("a", nb.activate(lesson))

    # Far down the lesson: windowed mode stops rendering the widget's cell (JupyterLab 4.6 hides
    # it with display:none; other versions take it out of the DOM): the view is not on screen.
    nb.scroll_to_cell(-1)
    nb.page.wait_for_function(f"() => {{ const el = {WIDGET_VIEW}; return !el || !el.checkVisibility(); }}", polling=100, timeout=10_000)
    time.sleep(2.0)

    busy = nb.add_cell(BUSY)
    nb.run_cell(busy)
    time.sleep(1.0)
    truth.hidden("a", nb.activate(NOTES))  # during the cell: reports live or queued behind it
    time.sleep(1.5)
    truth.visible("a", nb.activate(lesson))
    nb.wait_output(busy, "OUT busy cell done", timeout=30)
    time.sleep(1.0)
    ended, kernel = finish(nb)
    assert_active_time(run_events(server, run_id), truth, ended, kernel)


def test_two_lessons_in_a_split_each_count_their_own_activity(open_notebook: OpenNotebook, lab: JupyterServer) -> None:
    run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
    a = open_notebook([start_source(run_a, heartbeat_interval=2)], server=lab)
    b = NotebookPage(a.chromium, lab, lab.write_notebook([start_source(run_b, heartbeat_interval=2)]), "lab", page=a.page)
    a.open_document(b.name)  # B in front, A behind it
    a.activate(a.name)
    truth_a, truth_b = VisibleTime(), VisibleTime()
    begin_behind(a, NOTES, truth_a)
    time.sleep(1.0)
    truth_a.hidden("a", b.activate(b.name))
    b.run_cell(0)  # B's own kernel and activity; its widget shows in B's panel
    b.page.wait_for_function(f"() => !!{b._panel}?.node.querySelector('.tbnb')", polling=100, timeout=30_000)
    truth_b.visible("b", time.monotonic())
    time.sleep(1.5)  # B counts, A does not
    truth_a.visible("a", b.dock(b.name, "split-right", a.name))  # both shown: both count
    assert a.shown_in_lab(a.name) and b.shown_in_lab(b.name)
    time.sleep(2.5)
    truth_b.hidden("b", a.dock(a.name, "tab-after", b.name))  # A moves in front of B
    assert a.shown_in_lab(a.name) and not b.shown_in_lab(b.name)
    time.sleep(1.5)
    ended_a, kernel_a = finish(a)
    truth_b.visible("b", b.activate(b.name))
    time.sleep(1.0)
    ended_b, kernel_b = finish(b)
    assert_active_time(run_events(lab, run_a), truth_a, ended_a, kernel_a)
    assert_active_time(run_events(lab, run_b), truth_b, ended_b, kernel_b)


def test_a_page_without_a_view_falls_back_to_its_tab_and_a_restored_view_anchors_again(
    open_notebook: OpenNotebook, lab: JupyterServer
) -> None:
    run_id = str(uuid.uuid4())
    a = open_notebook([start_source(run_id, heartbeat_interval=2)], server=lab)
    truth = VisibleTime()
    begin_behind(a, NOTES, truth)
    # A second browser window on the notebook: its file has no widget output (never saved), so
    # that page has the widget's model but no view: its browser tab decides, even with the
    # lesson behind another Lab document there (the README says so).
    b = open_notebook(a.name, server=lab)
    truth.visible("b", time.monotonic())  # while a is visible: the union is exact either way
    b.open_document(NOTES)
    assert not b.shown_in_lab(a.name) and b.page.locator(".tbnb").count() == 0
    truth.hidden("a", a.hide())
    time.sleep(2.0)  # counted: b's tab is visible
    truth.hidden("b", b.hide())
    time.sleep(1.0)
    b.page.close()

    truth.visible("a", a.show())
    time.sleep(1.0)

    # Saved, then reloaded: the restored view anchors the new page on its panel again, so behind
    # the notes the lesson does not count (the tab fallback would count those 2 s).
    a.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    a.page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", polling=100)
    truth.hidden("a", time.monotonic())
    a.open()  # again from the notebook's own address (the page's is now the notes' one)
    a.widget_text()
    truth.visible("a", time.monotonic())
    a.open_document(NOTES, "split-right")  # beside the lesson: it stays shown
    assert a.shown_in_lab(a.name)
    truth.hidden("a", a.dock(NOTES, "tab-after", a.name))
    wait_state(a, "hidden")
    time.sleep(2.0)
    assert not a.shown_in_lab(a.name)
    truth.visible("a", a.activate(a.name))
    time.sleep(1.5)
    ended, kernel = finish(a)
    assert_active_time(run_events(lab, run_id), truth, ended, kernel)


def _monotonic(iso: str, wall_minus_monotonic: float) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - wall_minus_monotonic


def test_idle_rule_with_input_events_and_abandonment(open_notebook: OpenNotebook, lab: JupyterServer) -> None:
    """idle_after=2 s: a stretch without input is inactive from its last input; input counts
    again; idle then hidden is abandoned abandon_after (4 s) after the last input."""
    run_id = str(uuid.uuid4())
    nb = open_notebook([start_source(run_id, heartbeat_interval=1, abandon_after=4, idle_after=2)], server=lab)
    truth = VisibleTime()
    begin_behind(nb, NOTES, truth)
    box = nb.page.locator(".jp-NotebookPanel").bounding_box()
    assert box is not None

    def touch(i: int) -> float:
        """A real (trusted) pointer move over the notebook; the test-clock instant."""
        before = time.monotonic()
        nb.page.mouse.move(box["x"] + 100 + 10 * (i % 7), box["y"] + 200 + 10 * (i % 5))
        return (before + time.monotonic()) / 2

    for i in range(6):  # working: input every half second
        last = touch(i)
        time.sleep(0.5)
    truth.hidden("a", last)  # then reading without input for 3 s: idle from the last input
    wait_state(nb, "idle", 4)
    time.sleep(max(0.0, 3.0 - (time.monotonic() - last)))
    truth.visible("a", touch(10))
    wait_state(nb, "active")
    for i in range(4):
        last = touch(20 + i)
        time.sleep(0.5)
    truth.hidden("a", last)  # no input again, then the page is hidden: abandoned 4 s after `last`
    wait_state(nb, "idle", 4)
    nb.hide()
    wall_minus_monotonic = time.time() - time.monotonic()
    wait_state(nb, "abandoned", 10)
    time.sleep(0.5)
    at_abandonment = lab.emitted(run_id)
    truth.visible("a", nb.show())  # being shown counts as input
    for i in range(3):
        time.sleep(0.5)
        touch(40 + i)
    ended, kernel = finish(nb)
    events = run_events(lab, run_id)
    assert_active_time(events, truth, ended, kernel)
    abandoned_at = _monotonic(events[at_abandonment - 1]["eventTime"], wall_minus_monotonic)
    assert abandoned_at - (last + 4.0) == pytest.approx(0, abs=0.5)
