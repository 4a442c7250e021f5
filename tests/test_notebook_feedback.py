"""What a notebook shows a student and a course author, cell by cell, in a real kernel.

One notebook run in a real IPython kernel (nbclient, local mode, temp store), as a person runs
it: `start()` as a cell's last line shows the widget and no stale text beside it; the end cell
confirms what was recorded in one line; a repeated `end()` is one clear line, not a traceback,
while other exceptions keep theirs; `%timeback status` / `end` after the end say when it ended
and with what; a pctComplete that looks like a fraction is kept, with one warning.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from timeback_nb.store import Store

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

CELLS = [
    "%load_ext timeback_nb",
    'timeback_nb.start("week-3", "Week 3", {"subject": "Math", "grade": 8})',
    "activity = timeback_nb.current()\nactivity",
    'activity.end({"xpEarned": 12, "totalQuestions": 10, "correctQuestions": 8, "pctComplete": 0.75})',
    "activity.end()",
    "%timeback status",
    "%timeback end",
    "1 / 0",
    'again = timeback_nb.start("week-4", "Week 4", {"subject": "Math", "grade": 8}, display=False)\n'
    'again.end({"xpEarned": 1, "pctComplete": 0.5})',
    "%timeback start week-5 --name 'Week 5' --subject Math --grade 8",
    '%timeback end --xp 2 --pct 50',
]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The notebook above, executed once; each cell's outputs and the store's events."""
    tmp = tmp_path_factory.mktemp("feedback")
    work = tmp / "course"
    work.mkdir()
    shutil.copyfile(NOTEBOOKS / "timeback.config.json", work / "timeback.config.json")
    store = tmp / "store.sqlite"
    env = {
        "TIMEBACK_NB_TRANSPORT": "local", "TIMEBACK_NB_STORE": str(store),
        "TIMEBACK_USER_EMAIL": "student@example.edu", "TIMEBACK_USER_ID": "u-feedback",
        "IPYTHONDIR": str(tmp / "ipython"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
    }
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("TIMEBACK_ENV", "TIMEBACK_CLIENT_ID", "TIMEBACK_CLIENT_SECRET", "TIMEBACK_CONFIG",
                         "TIMEBACK_CALIPER_URL", "TIMEBACK_RELAY_URL", "JUPYTERHUB_API_TOKEN"):
            patch.delenv(variable, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        notebook = nbformat.v4.new_notebook()
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
        NotebookClient(
            notebook, timeout=60, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(work)}}
        ).execute()
    with Store(store) as opened:
        events = [e for row in opened.events() for e in json.loads(row["body"])["data"]]
    return {"cells": notebook.cells, "events": events}


def _outputs(ran: dict[str, Any], index: int) -> list[Any]:
    return list(ran["cells"][index].outputs)


def _text(outputs: list[Any], kinds: tuple[str, ...] = ("stdout", "stderr", "display", "result")) -> str:
    parts = []
    for output in outputs:
        kind = output.get("name") if output.output_type == "stream" else {
            "display_data": "display", "execute_result": "result"}.get(output.output_type, output.output_type)
        if kind in kinds:
            parts.append(output.text if output.output_type == "stream" else output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_start_as_the_last_line_shows_the_widget_and_no_stale_text(ran: dict[str, Any]) -> None:
    outputs = _outputs(ran, 1)
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    assert WIDGET_MIME in outputs[0].data  # the widget, whose own text form is its fallback
    assert "<Activity" not in json.dumps(outputs)


def test_an_activity_in_a_later_cell_shows_its_state_now(ran: dict[str, Any]) -> None:
    text = _text(_outputs(ran, 2))
    assert text.startswith("<Activity 'week-3' (Week 3; subject=Math, grade=8)") and "mode=local>" in text


def test_the_end_cell_confirms_the_time_and_the_results_and_warns_once_about_a_fraction(ran: dict[str, Any]) -> None:
    outputs = _outputs(ran, 3)
    line = _text(outputs, ("display",))
    assert re.fullmatch(
        r"Ended 'Week 3': \d+:\d\d active; 12 XP, 8/10 correct, 0\.75% complete \(saved on this computer\)\.", line
    ), line
    warning = _text(outputs, ("stderr",))
    assert "UserWarning: pctComplete is a percentage 0–100; did you mean 75? (recorded as given: 0.75 %)" in warning
    # Kept as given: 0.75 % went out, not 75.
    (completion,) = [e for e in ran["events"] if e["type"] == "ActivityEvent" and "week-3" in e["object"]["id"]]
    assert completion["generated"]["extensions"] == {"pctCompleteApp": 0.75}
    # Once per kernel: the next fraction (0.5, cell 8) is kept without a second warning.
    assert "pctComplete" not in _text(_outputs(ran, 8), ("stderr",))
    assert any(e["type"] == "ActivityEvent" and e["generated"]["extensions"] == {"pctCompleteApp": 0.5} for e in ran["events"])


def test_a_repeated_end_is_one_line_naming_when_it_ended_not_a_traceback(ran: dict[str, Any]) -> None:
    (error,) = _outputs(ran, 4)
    assert error.output_type == "error" and error.ename == "StateError"
    (line,) = error.traceback
    assert re.fullmatch(
        r"StateError: cannot end: activity 'week-3' already ended at \d\d:\d\d:\d\d UTC "
        r"\(\d+:\d\d active; 12 XP, 8/10 correct, 0\.75% complete\); start a new one with timeback_nb\.start\(\)",
        line,
    ), line


def test_other_exceptions_keep_their_traceback(ran: dict[str, Any]) -> None:
    (error,) = _outputs(ran, 7)
    assert error.ename == "ZeroDivisionError" and len(error.traceback) > 1
    assert "Traceback" in "\n".join(error.traceback)


def test_status_after_the_end_says_it_ended_when_and_with_what(ran: dict[str, Any]) -> None:
    text = _text(_outputs(ran, 5))
    assert "  state    ended" in text
    assert re.search(r"  ended    \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    assert "  results  12 XP, 8/10 correct, 0.75% complete" in text


def test_the_magics_end_after_the_end_says_when_in_one_line(ran: dict[str, Any]) -> None:
    outputs = _outputs(ran, 6)
    assert [o.output_type for o in outputs] == ["stream"] and outputs[0].name == "stderr"
    assert re.fullmatch(
        r"timeback: cannot end: activity 'week-3' already ended at \d\d:\d\d:\d\d UTC \(.*\); start a new one.*\n",
        outputs[0].text,
    )


def test_the_magics_start_shows_the_widget_and_its_end_one_line(ran: dict[str, Any]) -> None:
    start = _outputs(ran, 9)
    assert [o.output_type for o in start] == ["display_data"] and WIDGET_MIME in start[0].data
    end = _outputs(ran, 10)
    assert _text(end) == "Ended 'Week 5': 0:00 active; 2 XP, 50% complete (saved on this computer)."
