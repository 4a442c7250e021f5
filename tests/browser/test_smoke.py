"""The widget's page messages reach the kernel and its replies reach the page, in Lab and Notebook 7."""

from __future__ import annotations

import json

import pytest

from .conftest import OpenNotebook

pytestmark = pytest.mark.browser

# A stand-in Activity inside the kernel: counts reports and asks for quick pings.
FAKE_ACTIVITY = """
from timeback_nb.widget import TimebackWidget

class EchoActivity:
    course = {"code": "SMOKE-1"}

    def __init__(self):
        self.reports = []

    def snapshot(self):
        return {"elapsedMs": 1000 * len(self.reports), "windowElapsedMs": 0, "state": "active",
                "mode": "memory", "pendingEvents": 0, "rejectedEvents": 0, "lastError": "",
                "activityName": "Smoke test", "idleAfterMs": 0, "pagesShowing": 1,
                "runId": "00000000-0000-4000-8000-000000000000",
                "nextPingMs": 300}

    def page_message(self, message):
        self.reports.append(message)
        return self.snapshot()

echo = EchoActivity()
TimebackWidget(echo)
"""

READ_REPORTS = 'import json; print("OUT", json.dumps(echo.reports))'


@pytest.mark.parametrize("ui", ["lab", "notebook"])
def test_page_reports_reach_the_kernel_and_replies_reach_the_page(open_notebook: OpenNotebook, ui: str) -> None:
    nb = open_notebook([FAKE_ACTIVITY], ui=ui)
    nb.run_cell(0)
    assert "Smoke test" in nb.widget_text()
    # Pings every 300 ms (the ack's nextPingMs): the shown time follows the kernel's count.
    nb.page.wait_for_function(
        "() => { const t = document.querySelector('.tbnb-time'); return t && t.textContent >= '0:03'; }",
        polling=100, timeout=20_000,
    )
    reports = json.loads(nb.run(READ_REPORTS))
    assert reports[0]["kind"] == "transition" and reports[0]["visible"] is True
    assert {r["kind"] for r in reports[1:]} == {"ping"}
    assert [r["seq"] for r in reports] == list(range(1, len(reports) + 1))
    assert len({r["page"] for r in reports}) == 1
    assert nb.page.locator(".tbnb-chip").inner_text() == "counting · not saved"

    hidden_at = len(reports)
    nb.hide()
    nb.show()
    reports = json.loads(nb.run(READ_REPORTS))
    flips = [(r["kind"], r["visible"]) for r in reports[hidden_at:] if r["kind"] == "transition"]
    assert flips == [("transition", False), ("transition", True)]
