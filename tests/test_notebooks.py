"""The shipped notebooks: valid and clean, and they really run against the real package.

The lesson and the demo are executed top to bottom in a real kernel (nbclient), in local mode
with a temp store, and the events they leave behind are read back from the store.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from timeback_nb.config import API_ENVS, load_config
from timeback_nb.store import Store

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSON = "lesson-linear-functions.ipynb"
DEMO = "demo.ipynb"
# The last window is settled once the kernel has been idle >= 1 s after the `end` cell (no page
# reports in a headless kernel); a person reading the next cell gives it that time.
IDLE_PAUSE_S = 1.5

# What a student who gets everything right types into the lesson's exercise cells.
CORRECT_ANSWERS = {
    "exercise-1": "slope_1 = (9 - 3) / (4 - 1)",
    "exercise-2": "intercept_2 = 7",
    "exercise-3": "value_3 = 2 * 6 - 5",
    "exercise-4": "def line_4(x):\n    return 2 * x - 3",
    "exercise-5": "texts_5 = (40 - 15) / 0.10",
}


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _cell(notebook: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(cell for cell in notebook.cells if cell.get("id") == cell_id)


@pytest.mark.parametrize("name", [DEMO, LESSON])
def test_notebook_is_valid_clean_and_runs_on_python3(name: str) -> None:
    notebook = _read(name)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    assert "widgets" not in notebook.metadata  # no saved widget state
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.id
    assert "%load_ext timeback_nb" in code[0].source + code[1].source


def test_the_config_next_to_the_notebooks_resolves_their_courses_in_both_envs() -> None:
    config = load_config(NOTEBOOKS / "timeback.config.json")
    for env in API_ENVS:
        for grade, name in ((3, DEMO), (8, LESSON)):
            assert f'{{"subject": "Math", "grade": {grade}}}' in "".join(
                cell.source for cell in _read(name).cells
            )
            resolved = config.resolve({"subject": "Math", "grade": grade}, env)
            assert resolved.course_id and resolved.sensor.startswith("https://")


def test_the_lesson_has_five_exercises_each_a_placeholder() -> None:
    exercises = [cell for cell in _read(LESSON).cells if "exercise" in cell.metadata.get("tags", [])]
    assert [cell.id for cell in exercises] == list(CORRECT_ANSWERS)
    for cell in exercises:
        assert "None" in cell.source  # the student replaces it


# --- the lesson's checker on its own (no kernel) -----------------------------------------------


def _checker(answers: dict[str, Any]) -> SimpleNamespace:
    """The checker cell run in a namespace with the given answers and a recording activity."""
    ended: list[dict[str, Any]] = []
    namespace: dict[str, Any] = {
        "activity": SimpleNamespace(end=ended.append),
        **answers,
    }
    exec(_cell(_read(LESSON), "checker").source, namespace)
    return SimpleNamespace(namespace=namespace, ended=ended)


def _answers(cells: dict[str, str]) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    for source in cells.values():
        exec(source, namespace)
    namespace.pop("__builtins__")
    return namespace


def test_checker_all_correct(capsys: pytest.CaptureFixture[str]) -> None:
    checker = _checker(_answers(CORRECT_ANSWERS))
    metrics = checker.namespace["finish_lesson"]()
    assert metrics == {
        "totalQuestions": 5,
        "correctQuestions": 5,
        "xpEarned": 10,
        "masteredUnits": 1,
        "pctComplete": 100,
    }
    assert checker.ended == [metrics]
    out = capsys.readouterr().out
    assert out.count("✓") == 5 and "5 of 5 correct" in out
    assert "Lesson submitted: 10 XP." in out


def test_checker_counts_wrong_unanswered_and_crashing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    answers = _answers(
        {
            **CORRECT_ANSWERS,
            "exercise-2": "intercept_2 = -3",  # wrong: that is the slope
            "exercise-4": "def line_4(x):\n    return 2 * x / (x - 2)",  # raises at x = 2
            "exercise-5": "texts_5 = None",  # not answered
        }
    )
    checker = _checker(answers)
    assert checker.namespace["check_answers"]() == {
        "totalQuestions": 5,
        "correctQuestions": 2,
        "xpEarned": 4,
        "masteredUnits": 0,
        "pctComplete": 80,
    }
    out = capsys.readouterr().out
    assert "✗  Exercise 2" in out and "✗  Exercise 4" in out
    assert "…  Exercise 5: phone plan: not answered yet" in out
    assert checker.ended == []  # checking sends nothing


def test_checker_before_any_answer_cell_ran() -> None:
    checker = _checker({})
    assert checker.namespace["check_answers"]()["pctComplete"] == 0
    booleans = _checker({"slope_1": True, "intercept_2": "7"})  # not numbers: wrong, not crashes
    metrics = booleans.namespace["check_answers"]()
    assert (metrics["correctQuestions"], metrics["pctComplete"]) == (0, 40)


# --- executed for real --------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of notebooks/ and a kernel environment in local mode with a temp store."""
    for variable in ("TIMEBACK_ENV", "TIMEBACK_CLIENT_ID", "TIMEBACK_CLIENT_SECRET", "TIMEBACK_CONFIG",
                     "TIMEBACK_USER_ID", "TIMEBACK_CALIPER_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TIMEBACK_NB_TRANSPORT", "local")
    monkeypatch.setenv("TIMEBACK_NB_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.setenv("TIMEBACK_USER_EMAIL", "student@example.edu")
    monkeypatch.setenv("TIMEBACK_USER_ID", "u-student-1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, work)
    return work


def _execute(
    notebook: nbformat.NotebookNode, folder: Path, *, pause_before: tuple[str, ...] = ()
) -> nbformat.NotebookNode:
    """Run every cell in one kernel, idling a moment before the cells named and after the last
    one, as a person would; then shut the kernel down."""
    client = NotebookClient(
        notebook,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(folder)}},
    )
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.get("id") in pause_before:
                time.sleep(IDLE_PAUSE_S)
            client.execute_cell(cell, index)
        time.sleep(IDLE_PAUSE_S)
    return notebook


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "text/plain" in output.get("data", {}):
            parts.append(output.data["text/plain"])
    return "".join(parts)


def _delivered(store_path: Path) -> list[dict[str, Any]]:
    """The events the local transport received, in order, as the sent JSON."""
    with Store(store_path) as store:
        return [json.loads(row["body"])["data"][0] for row in store.local_events()]


def test_lesson_with_correct_answers_reports_full_marks(workdir: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(workdir / LESSON, as_version=4)
    for cell_id, source in CORRECT_ANSWERS.items():
        _cell(notebook, cell_id).source = source

    executed = _execute(notebook, workdir)

    assert "Lesson submitted: 10 XP." in _text(_cell(executed, "finish"))
    assert "5 of 5 correct" in _text(_cell(executed, "check"))
    events = _delivered(tmp_path / "store.sqlite")
    completions = [e for e in events if e["type"] == "ActivityEvent"]
    assert len(completions) == 1
    (completion,) = completions
    assert completion["object"]["activity"]["name"] == "Linear functions: slope and intercept"
    assert completion["object"]["id"] == (
        "https://staging.notebooks.example.org/activities/Math/g8/linear-functions-slope-intercept"
    )
    assert completion["extensions"] == {"courseId": "d4e7b2a9-1c3f-4e6a-8b5d-90f1a2c3e4b7"}
    assert completion["generated"]["items"] == [
        {"type": "totalQuestions", "value": 5},
        {"type": "correctQuestions", "value": 5},
        {"type": "xpEarned", "value": 10},
        {"type": "masteredUnits", "value": 1},
    ]
    assert completion["generated"]["extensions"] == {"pctCompleteApp": 100}
    # The time of the run went out too, under the same session, before the completion.
    spent = [e for e in events if e["type"] == "TimeSpentEvent"]
    assert spent and {e["session"] for e in spent} == {completion["session"]}
    assert events.index(completion) == len(events) - 1
    with Store(tmp_path / "store.sqlite") as store:
        assert store.counts()["queued"] == 0


def test_demo_runs_top_to_bottom(workdir: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(workdir / DEMO, as_version=4)
    _cell(notebook, "busy").source = "import time\n\ntime.sleep(0.2)"  # the 10 s wait, shortened

    executed = _execute(notebook, workdir, pause_before=("flush",))

    assert "paused" in _text(_cell(executed, "status"))
    assert _text(_cell(executed, "pause")).strip() == "True"
    assert _text(_cell(executed, "resume")).strip() == "False"
    flushed = _text(_cell(executed, "flush"))
    assert "'queued': 0" in flushed and "'rejected': 0" in flushed  # nothing left to deliver
    listing = _text(_cell(executed, "events"))  # `timeback-nb events` run from the notebook
    assert "completed" in listing and "5 XP, 3/4 correct, 0 units mastered, 25% complete" in listing
    (completion,) = [e for e in _delivered(tmp_path / "store.sqlite") if e["type"] == "ActivityEvent"]
    assert completion["object"]["activity"]["name"] == "Timeback demo"
