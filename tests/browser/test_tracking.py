"""Active time measured in a real JupyterLab / Notebook 7 in Chromium, read back from the local store.

Each test scripts visibility (a window per page; hidden = minimised), keeps its own clock of
the visible stretches (the ground truth) and compares it with Σ active over the run's
TimeSpentEvents. Heartbeats are short so the runs are quick.
"""

from __future__ import annotations

import time

import pytest

from .conftest import ARTIFACTS, OpenNotebook
from .harness import TOLERANCE_S, JupyterServer, assert_active_time, begin, finish, run_events, spent_seconds

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("ui", ["lab", "notebook"])
def test_visibility_switches_are_counted_within_a_second(open_notebook: OpenNotebook, jupyter: JupyterServer, ui: str) -> None:
    nb, run_id, truth = begin(open_notebook, ui=ui, heartbeat_interval=2)
    for visible_s, hidden_s in ((2.0, 1.5), (1.5, 1.0), (1.0, 2.0)):
        time.sleep(visible_s)
        truth.hidden("a", nb.hide())
        time.sleep(hidden_s)
        truth.visible("a", nb.show())
    time.sleep(1.5)
    ended, kernel = finish(nb)
    events = run_events(jupyter, run_id)
    assert_active_time(events, truth, ended, kernel)
    assert kernel["state"] == "ended"
    assert len([e for e in events if e["type"] == "TimeSpentEvent"]) >= 5  # a window every 2 s


A_CHIP = "document.querySelector('.tbnb-chip').textContent"


def test_two_tabs_count_the_union_and_one_closing_leaves_the_other_counting(
    open_notebook: OpenNotebook, jupyter: JupyterServer
) -> None:
    a, run_id, truth = begin(open_notebook, heartbeat_interval=2)
    b = open_notebook(a.name, ui="notebook")  # the same notebook and kernel, in Notebook 7
    truth.visible("b", time.monotonic())
    # Both visible: counted once, and a's widget says why its clock runs while a is hidden.
    a.page.wait_for_function(
        f"() => {A_CHIP} === 'counting · also open in another window · saved on this computer'", polling=100, timeout=5_000
    )
    time.sleep(1.0)
    truth.hidden("a", a.hide())
    time.sleep(1.5)  # b alone
    truth.hidden("b", b.hide())
    time.sleep(1.5)  # neither
    truth.visible("a", a.show())
    truth.visible("b", b.show())
    time.sleep(1.0)
    b.page.close()  # pagehide: b says bye; a keeps counting
    truth.hidden("b", time.monotonic())
    a.page.wait_for_function(f"() => {A_CHIP} === 'counting · saved on this computer'", polling=100, timeout=5_000)
    time.sleep(1.0)
    ended, kernel = finish(a)
    assert_active_time(run_events(jupyter, run_id), truth, ended, kernel)


def test_a_widget_displayed_twice_counts_once(open_notebook: OpenNotebook, jupyter: JupyterServer) -> None:
    nb, run_id, truth = begin(open_notebook, heartbeat_interval=2)
    nb.run_cell(nb.add_cell("display(activity.widget)"))
    nb.page.locator(".tbnb").nth(1).wait_for()
    time.sleep(2.5)
    truth.hidden("a", nb.hide())
    time.sleep(2.0)
    truth.visible("a", nb.show())
    time.sleep(2.0)
    ended, kernel = finish(nb)
    assert_active_time(run_events(jupyter, run_id), truth, ended, kernel)
    assert nb.page.locator(".tbnb").count() == 2


def test_a_reload_mid_run_is_not_counted_twice(open_notebook: OpenNotebook, jupyter: JupyterServer) -> None:
    nb, run_id, truth = begin(open_notebook, heartbeat_interval=2)
    time.sleep(2.5)
    nb.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    nb.page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", polling=100)
    truth.hidden("a", time.monotonic())
    nb.reload()  # the old page says bye; the new one (same kernel) reports as a new page
    nb.widget_text()
    truth.visible("a", time.monotonic())
    time.sleep(3.0)
    ended, kernel = finish(nb)
    assert_active_time(run_events(jupyter, run_id), truth, ended, kernel)


def test_an_abandoned_tab_stops_heartbeats_and_returns_to_a_clean_slate(
    open_notebook: OpenNotebook, jupyter: JupyterServer
) -> None:
    nb, run_id, truth = begin(open_notebook, heartbeat_interval=1, abandon_after=3)
    time.sleep(2.0)
    truth.hidden("a", nb.hide())
    nb.page.wait_for_function(
        "() => document.querySelector('.tbnb-chip').textContent.startsWith('stopped: away too long')", polling=100, timeout=8_000
    )
    time.sleep(0.5)  # the window closed at the abandonment instant is committed by now
    count_at_abandonment = jupyter.emitted(run_id)
    time.sleep(3.0)
    assert jupyter.emitted(run_id) == count_at_abandonment  # no heartbeats while abandoned
    truth.visible("a", nb.show())
    time.sleep(2.0)
    ended, kernel = finish(nb)
    events = run_events(jupyter, run_id)
    assert_active_time(events, truth, ended, kernel)
    # Only the 3 s before abandonment are inactive; the abandoned stretch is reported nowhere.
    assert spent_seconds(events, "inactive") == pytest.approx(3.0, abs=TOLERANCE_S)
    assert len(events) > count_at_abandonment  # heartbeats resumed on return


def test_end_with_metrics_lands_the_completion_and_the_widget_shows_ended(
    open_notebook: OpenNotebook, jupyter: JupyterServer
) -> None:
    nb, run_id, truth = begin(open_notebook, heartbeat_interval=2)
    time.sleep(3.5)
    nb.screenshot_widget(ARTIFACTS / "widget.png")
    metrics = {"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8, "masteredUnits": 1, "pctComplete": 40}
    ended, kernel = finish(nb, metrics)
    events = run_events(jupyter, run_id)
    (completion,) = [e for e in events if e["type"] == "ActivityEvent"]
    assert completion["action"] == "Completed"
    assert {i["type"]: i["value"] for i in completion["generated"]["items"]} == {
        "totalQuestions": 10, "correctQuestions": 8, "xpEarned": 12, "masteredUnits": 1,
    }
    assert completion["generated"]["extensions"] == {"pctCompleteApp": 40}
    assert events[-1] is completion  # after the final TimeSpentEvent
    assert_active_time(events, truth, ended, kernel)

    # The page learns "ended" from the reply to its next ping, and stops ticking there.
    nb.page.wait_for_function(
        "() => document.querySelector('.tbnb-chip').textContent.startsWith('finished')", polling=100, timeout=10_000
    )
    assert nb.page.locator(".tbnb").first.get_attribute("data-state") == "ended"
    view = nb.page.locator(".tbnb:not(.tbnb-dock)")  # the view, not the copy docked while it is scrolled away
    minutes, seconds = view.locator(".tbnb-time").inner_text().split(":")
    assert int(minutes) * 60 + int(seconds) == pytest.approx(kernel["elapsed_ms"] / 1000, abs=1.0)
    nb.screenshot_widget(ARTIFACTS / "widget-ended.png")

    # Readable in both themes: text against the widget's and the chip's own backgrounds.
    for theme in ("JupyterLab Dark", "JupyterLab Light"):
        nb.set_theme(theme)
        for part in (".tbnb", ".tbnb-chip"):
            assert nb.contrast(part) >= 4.5, (theme, part, nb.contrast(part))
        if theme == "JupyterLab Dark":
            nb.screenshot_widget(ARTIFACTS / "widget-dark.png")
