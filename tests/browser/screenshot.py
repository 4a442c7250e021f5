"""Take the README's screenshot: the demo notebook in a real JupyterLab, its widget counting.

    python -m tests.browser.screenshot docs/screenshot.png

Uses the browser tests' harness (Debian's Chromium over CDP, an isolated JupyterLab in local
mode) on a copy of notebooks/demo.ipynb with its own config, runs the cells up to "watch the
clock", and saves the notebook panel at a size a person can read. Re-run it when the widget's
look changes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from .harness import ROOT, Chromium, JupyterServer, NotebookPage, running

WIDTH = 1000  # px of the saved image: readable on GitHub without zooming, no line cut off
MARGIN = 40  # px of the window left of the picture (the empty gutter)
CELLS_TO_RUN = (1, 3)  # %load_ext + start(); then the "watch the clock" cell once time has counted
CLOCK_CELL = 5
FIRST_CELL_SHOWN = 1


def take(path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="timeback-screenshot-") as tmp:
        home = Path(tmp)
        server = JupyterServer(home / "jupyter")
        (server.notebooks).mkdir(parents=True)
        shutil.copyfile(ROOT / "notebooks" / "demo.ipynb", server.notebooks / "demo.ipynb")
        shutil.copyfile(ROOT / "notebooks" / "timeback.config.json", server.config_path)
        chromium = Chromium(home / "chromium")
        with running(chromium, server):
            nb = NotebookPage(chromium, server, "demo.ipynb", "lab")
            page = nb.page
            # Room for the notebook: close the file browser, a window as wide as the picture.
            page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); }")
            page.set_viewport_size({"width": WIDTH + MARGIN + 20, "height": 1600})
            page.add_style_tag(content=".jp-cell-toolbar { display: none !important; }")  # hover chrome
            for index in CELLS_TO_RUN:
                nb.run_cell(index)
                page.wait_for_function(
                    "(i) => { const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];"
                    " return c && !c.querySelector('.jp-InputPrompt').textContent.includes('*')"
                    " && !c.querySelector('.jp-InputPrompt').textContent.includes('[ ]'); }",
                    arg=index, polling=100, timeout=30_000,
                )
            page.locator(".tbnb").first.wait_for(timeout=30_000)
            page.wait_for_timeout(6_000)  # let the clock count a few seconds
            nb.run_cell(CLOCK_CELL)
            nb.wait_output(CLOCK_CELL, "events waiting")
            page.wait_for_timeout(500)
            # From the %load_ext cell to the clock cell's output: the lines an author writes and
            # what the student sees.
            cells = page.locator(".jp-Notebook .jp-Cell")
            cells.nth(FIRST_CELL_SHOWN).scroll_into_view_if_needed()
            top = cells.nth(FIRST_CELL_SHOWN).bounding_box()
            bottom = cells.nth(CLOCK_CELL).bounding_box()
            assert top is not None and bottom is not None
            y = top["y"] - 8
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), clip={"x": MARGIN, "y": y, "width": WIDTH, "height": bottom["y"] + bottom["height"] + 8 - y})
            nb.close()


if __name__ == "__main__":
    take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png"))
