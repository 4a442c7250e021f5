"""A kernel-like session for the benchmarks: `timeback_nb.start` wired as in a notebook (local
store in a temp folder, the repository's demo config) and a simulated page that reports to
`Activity.page_message` from its own thread, pinging as js/widget.js does."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fakes import PingingPage

__all__ = ["COURSE", "DEMO_CONFIG", "ROOT", "PingingPage", "use_local_store"]

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "notebooks" / "timeback.config.json"
COURSE = {"subject": "Math", "grade": 8}


def use_local_store(folder: Path) -> None:
    """Point this process at a fresh local store and the demo config, with no credentials."""
    for name in [n for n in os.environ if n.startswith("TIMEBACK_")]:
        del os.environ[name]
    os.environ.update(
        TIMEBACK_CONFIG=str(DEMO_CONFIG),
        TIMEBACK_NB_STORE=str(folder / "timeback.sqlite3"),
        TIMEBACK_NB_TRANSPORT="local",
        TIMEBACK_ENV="staging",
        TIMEBACK_USER_EMAIL="student@example.edu",
        TIMEBACK_USER_ID="u-benchmark",
    )


