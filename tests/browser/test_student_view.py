"""What the student sees in a real JupyterLab / Notebook 7: the chip's words with the details on
hover, what is recorded, and the docked clock while the widget's cell is scrolled away (also in
windowed mode). "Also open in another window" is checked in test_tracking's two-window run."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Iterator

import pytest

from .conftest import OpenNotebook
from .harness import JupyterServer, NotebookPage, start_source

pytestmark = pytest.mark.browser

# Long cells after the widget's, so that it can be scrolled out of view.
FILLER = "\n".join(f"x{i} = {i}" for i in range(40))

# The dock, where a student would see it: inside the notebook panel, on top (not covered).
_DOCK = """() => {
  const dock = document.querySelector('.jp-NotebookPanel .tbnb-dock');
  if (!dock || !dock.checkVisibility()) return null;
  const r = dock.getBoundingClientRect(), panel = dock.closest('.jp-NotebookPanel').getBoundingClientRect();
  const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
  const view = document.querySelector('.tbnb:not(.tbnb-dock) .tbnb-time');
  return {time: dock.querySelector('.tbnb-time').textContent, state: dock.dataset.state, title: dock.title,
          inside: r.left >= panel.left && r.right <= panel.right && r.top >= panel.top && r.bottom <= panel.bottom,
          onTop: !!top && dock.contains(top), viewTime: view.textContent, viewRendered: view.checkVisibility()};
}"""


RECORDED = (
    "Recorded: the active and inactive time of this notebook and the results the lesson reports, "
    "saved on this computer. Not recorded: keystrokes, code or outputs."
)


@contextlib.contextmanager
def windowing(server: JupyterServer, mode: str | None) -> Iterator[None]:
    """Lab's notebook windowing mode for the pages opened inside the block (None: the default)."""
    settings = server.home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    if mode is not None:
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"windowingMode": mode}))
    try:
        yield
    finally:
        settings.unlink(missing_ok=True)


def open_lesson(open_notebook: OpenNotebook, ui: str) -> NotebookPage:
    nb = open_notebook([start_source(str(uuid.uuid4())), *[FILLER] * 12], ui=ui)
    nb.run_cell(0)
    nb.widget_text()
    nb.page.wait_for_function(
        "() => document.querySelector('.tbnb').dataset.state === 'active'", polling=100, timeout=15_000
    )
    return nb


def seconds(clock: str) -> int:
    minutes, secs = clock.split(":")[-2:]
    return int(minutes) * 60 + int(secs)


@pytest.mark.parametrize(
    ("ui", "mode"), [("lab", None), ("lab", "full"), ("notebook", None)], ids=["lab", "lab-windowed-full", "notebook"]
)
def test_the_chip_speaks_to_the_student_and_the_clock_docks_while_its_cell_is_scrolled_away(
    open_notebook: OpenNotebook, jupyter: JupyterServer, ui: str, mode: str | None
) -> None:
    with windowing(jupyter, mode):
        nb = open_lesson(open_notebook, ui)
    page = nb.page
    chip = page.locator(".tbnb-chip")
    assert chip.inner_text() == "counting · saved on this computer"
    assert chip.get_attribute("title") == "active · local"  # the exact facts, for whoever helps
    assert page.locator(".tbnb-sr").inner_text() == "Timeback: counting · saved on this computer"
    # What is recorded: on hover over the widget, and one click away (touch screens, keyboards).
    assert page.locator(".tbnb").first.get_attribute("title") == RECORDED
    line = page.locator(".tbnb-what")
    assert line.inner_text() == "What is recorded?"
    line.locator("summary").click()
    assert line.inner_text() == f"What is recorded?\n{RECORDED}"

    assert page.evaluate(_DOCK) is None  # the widget is in view: no dock

    nb.scroll_to_cell(-1)
    dock = page.wait_for_function(_DOCK, polling=100, timeout=10_000).json_value()
    assert dock["inside"] and dock["onTop"], dock
    assert dock["state"] == "active" and dock["title"] == "counting · saved on this computer"
    # The same text, written by the same tick: a view, not a second count.
    assert dock["time"] == dock["viewTime"], dock
    # Windowed: the widget's cell is not even rendered any more (Lab 4.6 hides it; older Labs detach it).
    assert dock["viewRendered"] is (mode != "full"), dock
    # It keeps ticking while docked.
    page.wait_for_function(
        f"() => {{ const d = ({_DOCK})(); return d && d.time !== {json.dumps(dock['time'])}; }}", polling=100, timeout=5_000
    )

    nb.scroll_to_cell(0)
    page.wait_for_function("() => !document.querySelector('.tbnb-dock')", polling=100, timeout=10_000)
    view = page.locator(".tbnb").first
    assert view.is_visible()
    assert seconds(view.locator(".tbnb-time").inner_text()) >= seconds(dock["time"])

    # The view's cleanup takes its dock along (a cleared output leaves nothing behind).
    nb.scroll_to_cell(-1)
    page.wait_for_function(_DOCK, polling=100, timeout=10_000)
    nb.clear_output(0)
    page.wait_for_function("() => !document.querySelector('.tbnb')", polling=100, timeout=10_000)
