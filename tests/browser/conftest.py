"""Fixtures: one Jupyter server per session, a notebook window per test (the one Chromium of the
session is `chromium` in tests/conftest.py: the hub tests drive it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from .harness import Chromium, JupyterServer, NotebookPage, running

ARTIFACTS = Path(__file__).parent / "artifacts"

OpenNotebook = Callable[..., NotebookPage]


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    server = JupyterServer(tmp_path_factory.mktemp("jupyter"))
    with running(server):
        yield server


@pytest.fixture(scope="module")
def jupyter_no_subshells(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """A server whose Lab settings turn comms over subshells off: page messages wait for busy cells."""
    server = JupyterServer(tmp_path_factory.mktemp("jupyter-no-subshells"), comms_over_subshells=False)
    with running(server):
        yield server


@pytest.fixture
def open_notebook(chromium: Chromium, jupyter: JupyterServer) -> Iterator[OpenNotebook]:
    """open_notebook(cells | name, ui="lab", server=jupyter) -> a NotebookPage in its own window."""
    opened: list[NotebookPage] = []

    def open_(cells: list[str] | str, ui: str = "lab", server: JupyterServer = jupyter) -> NotebookPage:
        name = cells if isinstance(cells, str) else server.write_notebook(cells)
        opened.append(NotebookPage(chromium, server, name, ui))
        return opened[-1]

    yield open_
    for page in reversed(opened):
        page.close()
