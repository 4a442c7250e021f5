"""Fixtures shared by the kernel-level tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

import timeback_nb

if TYPE_CHECKING:
    from .browser.harness import Chromium

# Timeback's example config (protocol reference §6.9, without the staging sensor override).
CONFIG = {
    "name": "Course Notebooks",
    "sensor": "https://notebooks.example.org",
    "courses": [
        {"subject": "Math", "grade": 8, "ids": {"staging": "c-stg-1", "production": "c-prd-1"}},
        {"subject": "Other", "courseCode": "DS-101", "ids": {"staging": "c-stg-2"}},
    ],
}


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Local mode in tmp_path: the config above, a fresh store, a student; cleaned up after."""
    config = tmp_path / "timeback.config.json"
    config.write_text(json.dumps(CONFIG))
    for name in ("TIMEBACK_CLIENT_ID", "TIMEBACK_CLIENT_SECRET", "TIMEBACK_ENV", "TIMEBACK_USER_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TIMEBACK_CONFIG", str(config))
    monkeypatch.setenv("TIMEBACK_NB_STORE", str(tmp_path / "store.sqlite3"))
    monkeypatch.setenv("TIMEBACK_NB_TRANSPORT", "local")
    monkeypatch.setenv("TIMEBACK_USER_EMAIL", "student@example.edu")
    yield tmp_path
    running = timeback_nb.current()
    if running is not None:
        running.end()
        running.shutdown()
    from timeback_nb.outbox import stop_senders

    stop_senders()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """The session's one Chromium (Playwright's sync API allows one per process), for the
    browser tests and the relay's hub tests alike."""
    from .browser.harness import Chromium, running

    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    with running(browser):
        yield browser
