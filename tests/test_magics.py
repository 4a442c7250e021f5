"""`%load_ext` / `%unload_ext` symmetry and the `%timeback` magic, in a real IPython shell."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import timeback_nb
from timeback_nb import api, magics
from timeback_nb.magics import Command, TimebackMagics, parse_line
from timeback_nb.store import Store


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell(config=config)
    yield shell
    magics.unload_ipython_extension(shell)


def _line_magics(shell: InteractiveShell) -> dict[str, object]:
    return dict(shell.magics_manager.magics["line"])


# --- parsing (pure) ---------------------------------------------------------------------------


def test_start_line_becomes_the_keyword_arguments_of_start() -> None:
    command = parse_line(
        'start week-3 --name "Week 3: loops" --subject "Social Studies" --grade 8 --stateful '
        "--run-id 0b0e2c1e-1f4c-4d0e-9a53-3c2d51f0b6a7 --interval 5 --abandon-after 60.5 --idle-after 90 --no-time"
    )
    assert command == Command(
        "start",
        {
            "id": "week-3",
            "name": "Week 3: loops",
            "course": {"subject": "Social Studies", "grade": 8},
            "stateful": True,
            "run_id": "0b0e2c1e-1f4c-4d0e-9a53-3c2d51f0b6a7",
            "heartbeat_interval": 5.0,
            "abandon_after": 60.5,
            "idle_after": 90.0,
            "time": False,
        },
    )


def test_start_leaves_options_not_given_to_the_api_defaults() -> None:
    assert parse_line("start intro --name Intro --code CS-101") == Command(
        "start", {"id": "intro", "name": "Intro", "course": {"code": "CS-101"}}
    )
    # No course: the config's only course is used (the API decides).
    assert parse_line("start intro --name Intro") == Command("start", {"id": "intro", "name": "Intro"})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("start x --name y --code C --grade 3", "not both"),
        ("start x --name y --code C --subject Math", "not both"),
        ("start x --name y --subject Math", "--subject and --grade go together"),
        ("start x --name y --grade 3", "--subject and --grade go together"),
        ("start x --name y --grade three", "--grade: invalid int value"),
        ("start x", "required: --name"),
        ("start x --name 'unclosed", "No closing quotation"),
        ("end --xp lots", "--xp: not a number: 'lots'"),
        ("end --total 2.5", "--total: invalid int value"),
        ("finish", "invalid choice: 'finish'"),
        ("", "required: COMMAND"),
    ],
)
@pytest.mark.bad_input
def test_a_line_argparse_refuses_is_one_usage_error_naming_the_option(line: str, expected: str) -> None:
    with pytest.raises(UsageError, match="^%timeback") as caught:
        parse_line(line)
    assert expected in str(caught.value)


def test_a_comment_after_the_command_is_a_comment() -> None:
    assert parse_line("status          # run id, state, active time") == Command("status")
    assert parse_line('start w --name "Week #3" --code CS-1   # or --subject') == Command(
        "start", {"id": "w", "name": "Week #3", "course": {"code": "CS-1"}}
    )


def test_end_options_become_timeback_metric_names_and_numbers_keep_their_type() -> None:
    command = parse_line("end --xp 12 --total 10 --correct 8 --mastered 1 --pct 40.5")
    assert command == Command(
        "end",
        {
            "metrics": {
                "xpEarned": 12,
                "totalQuestions": 10,
                "correctQuestions": 8,
                "masteredUnits": 1,
                "pctComplete": 40.5,
            }
        },
    )
    assert type(command.kwargs["metrics"]["xpEarned"]) is int
    assert parse_line("end --xp 2.5").kwargs == {"metrics": {"xpEarned": 2.5}}
    assert parse_line("end") == Command("end", {"metrics": None})  # time only


@pytest.mark.parametrize("action", ["status", "pause", "resume"])
def test_commands_without_options(action: str) -> None:
    assert parse_line(action) == Command(action)


# --- help -------------------------------------------------------------------------------------


def test_help_prints_usage_of_every_command(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    magics.load_ipython_extension(shell)
    assert shell.run_line_magic("timeback", "--help") is None
    out = capsys.readouterr().out
    assert out.startswith("usage: %timeback")
    for action in ("start", "status", "pause", "resume", "end"):
        assert f"    {action} " in out

    shell.run_line_magic("timeback", "start --help")
    out = capsys.readouterr().out
    assert out.startswith("usage: %timeback start")
    for option in ("--name", "--subject", "--grade", "--code", "--stateful", "--run-id",
                   "--interval", "--abandon-after", "--idle-after", "--no-time"):
        assert option in out

    shell.run_line_magic("timeback", "end -h")
    out = capsys.readouterr().out
    assert "--xp" in out and "pctComplete" in out


def test_the_magic_docstring_is_its_usage(shell: InteractiveShell) -> None:
    magics.load_ipython_extension(shell)
    doc = shell.magics_manager.magics["line"]["timeback"].__doc__
    assert doc is not None and doc.startswith("usage: %timeback")


# --- load / unload ----------------------------------------------------------------------------


def test_load_twice_registers_once_and_unload_removes_exactly_that(shell: InteractiveShell) -> None:
    line_before = _line_magics(shell)
    cell_before = dict(shell.magics_manager.magics["cell"])
    registry_before = dict(shell.magics_manager.registry)

    magics.load_ipython_extension(shell)
    entry = shell.magics_manager.magics["line"]["timeback"]
    magics.load_ipython_extension(shell)
    assert shell.magics_manager.magics["line"]["timeback"] == entry
    added = set(shell.magics_manager.registry) - set(registry_before)
    assert added == {"TimebackMagics"}
    assert isinstance(shell.magics_manager.registry["TimebackMagics"], TimebackMagics)
    assert set(_line_magics(shell)) - set(line_before) == {"timeback"}

    magics.unload_ipython_extension(shell)
    assert _line_magics(shell) == line_before
    assert dict(shell.magics_manager.magics["cell"]) == cell_before
    assert dict(shell.magics_manager.registry) == registry_before

    magics.unload_ipython_extension(shell)  # a second unload is a no-op
    assert _line_magics(shell) == line_before


@pytest.mark.parametrize("extension", ["timeback_nb", "timeback_nb.magics"])
def test_load_ext_and_unload_ext_through_ipython(shell: InteractiveShell, extension: str) -> None:
    before = set(_line_magics(shell))  # names: IPython itself loads %load_ext lazily
    shell.run_line_magic("load_ext", extension)
    assert "timeback" in shell.magics_manager.magics["line"]
    shell.run_line_magic("unload_ext", extension)
    assert set(_line_magics(shell)) == before
    assert "TimebackMagics" not in shell.magics_manager.registry
    shell.run_line_magic("load_ext", extension)  # and it loads again
    assert "timeback" in shell.magics_manager.magics["line"]
    shell.run_line_magic("unload_ext", extension)


def test_load_ext_binds_the_name_timeback_nb_and_unload_ext_removes_it(shell: InteractiveShell) -> None:
    # The design's two lines: `%load_ext timeback_nb`, then `timeback_nb.start(...)`, no import.
    shell.run_line_magic("load_ext", "timeback_nb")
    assert shell.user_ns["timeback_nb"] is timeback_nb
    assert shell.run_cell("timeback_nb.current()").success
    shell.run_line_magic("unload_ext", "timeback_nb")
    assert "timeback_nb" not in shell.user_ns


def test_load_ext_leaves_a_name_timeback_nb_the_notebook_already_has(shell: InteractiveShell) -> None:
    shell.user_ns["timeback_nb"] = "the user's own"
    shell.run_line_magic("load_ext", "timeback_nb")
    assert shell.user_ns["timeback_nb"] == "the user's own"
    shell.run_line_magic("unload_ext", "timeback_nb")
    assert shell.user_ns["timeback_nb"] == "the user's own"


def test_unload_ext_leaves_the_name_when_the_user_rebound_it(shell: InteractiveShell) -> None:
    shell.run_line_magic("load_ext", "timeback_nb")
    shell.run_cell("timeback_nb = 42")
    shell.run_line_magic("unload_ext", "timeback_nb")
    assert shell.user_ns["timeback_nb"] == 42


def test_a_timeback_error_in_a_cell_is_one_line_until_unload(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    slot_before = (shell.custom_exceptions, shell.CustomTB)
    shell.run_line_magic("load_ext", "timeback_nb")
    result = shell.run_cell('timeback_nb.record(id="x", name="X", metrics={"xpEarned": -1})')
    assert isinstance(result.error_in_exec, timeback_nb.ValidationError)
    out = capsys.readouterr().out
    assert out == "ValidationError: metrics.xpEarned: expected a finite number ≥ 0 and ≤ 9007199254740991, got -1\n"
    shell.run_cell("1 / 0")  # any other exception keeps its traceback
    assert "Traceback" in capsys.readouterr().out

    shell.run_line_magic("unload_ext", "timeback_nb")
    assert (shell.custom_exceptions, shell.CustomTB) == slot_before
    shell.run_cell('import timeback_nb; timeback_nb.record(id="x", name="X", metrics={"xpEarned": -1})')
    assert "Traceback" in capsys.readouterr().out


def test_a_custom_exception_handler_that_was_there_keeps_its_exceptions(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    def theirs(shell: InteractiveShell, etype: type, value: BaseException, tb: object, tb_offset: object = None) -> list[str]:
        print(f"theirs: {value}")
        return [str(value)]

    shell.set_custom_exc((KeyError,), theirs)
    handler = shell.CustomTB
    shell.run_line_magic("load_ext", "timeback_nb")
    shell.run_cell("raise KeyError('k')")
    assert capsys.readouterr().out == "theirs: 'k'\n"
    shell.run_cell('timeback_nb.record(id="x", name="X", metrics={})')
    assert capsys.readouterr().out.startswith("ValidationError: metrics.xpEarned")
    shell.run_line_magic("unload_ext", "timeback_nb")
    assert shell.custom_exceptions == (KeyError,) and shell.CustomTB is handler


def test_unload_puts_back_a_timeback_magic_that_was_there_before(shell: InteractiveShell) -> None:
    def users_own(line: str) -> str:
        return f"mine: {line}"

    shell.register_magic_function(users_own, "line", "timeback")
    magics.load_ipython_extension(shell)
    assert shell.run_line_magic("timeback", "--help") is None  # ours now
    magics.unload_ipython_extension(shell)
    assert shell.run_line_magic("timeback", "hello") == "mine: hello"


def test_unload_leaves_a_magic_it_does_not_own(shell: InteractiveShell) -> None:
    magics.load_ipython_extension(shell)

    def replaced_later(line: str) -> str:
        return "later"

    shell.register_magic_function(replaced_later, "line", "timeback")
    magics.unload_ipython_extension(shell)
    assert shell.run_line_magic("timeback", "") == "later"


def test_a_usage_error_is_one_line_not_a_traceback(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    magics.load_ipython_extension(shell)
    result = shell.run_cell("%timeback start x --name y --grade 3")
    assert not result.success
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "UsageError: %timeback start: --subject and --grade go together" in captured.err


# --- against the real API, local mode ---------------------------------------------------------

@pytest.fixture
def local(local_env: Path, shell: InteractiveShell) -> Iterator[Path]:
    """A shell with the extension loaded, a config and a local store in tmp_path."""
    magics.load_ipython_extension(shell)
    yield local_env


def _run(shell: InteractiveShell, capsys: pytest.CaptureFixture[str], line: str) -> tuple[str, str]:
    result = shell.run_cell(line)
    assert result.success, result.error_in_exec
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return captured.out, captured.err


def _wait_finished(activity: timeback_nb.Activity) -> None:
    deadline = time.monotonic() + 5
    while not activity.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert activity.finished


def test_a_whole_run_through_the_magic(
    local: Path, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    activity = shell.run_line_magic(
        "timeback", 'start week-3 --name "Week 3: Linear functions" --subject Math --grade 8 --interval 5'
    )
    assert isinstance(activity, timeback_nb.Activity)
    assert timeback_nb.current() is activity
    assert (activity.id, activity.name, dict(activity.course)) == (
        "week-3", "Week 3: Linear functions", {"subject": "Math", "grade": 8}
    )

    out, _ = _run(shell, capsys, "%timeback status")
    assert out.splitlines()[0] == "week-3 · Week 3: Linear functions (subject=Math, grade=8)"
    assert f"  run id   {activity.run_id}" in out
    assert "local mode" in out

    out, _ = _run(shell, capsys, "%timeback pause")
    assert activity.is_paused and out.startswith("week-3: paused, active ")
    out, _ = _run(shell, capsys, "%timeback resume")
    assert not activity.is_paused

    _run(shell, capsys, "%timeback end --xp 12 --total 10 --correct 8 --mastered 1 --pct 40")
    _wait_finished(activity)
    assert timeback_nb.current() is None
    assert timeback_nb.flush(timeout=5)["queued"] == 0
    with Store(local / "store.sqlite3") as store:
        sent = [json.loads(row["body"])["data"][0] for row in store.local_events()]
    completion = sent[-1]
    assert completion["type"] == "ActivityEvent"
    assert completion["session"] == f"urn:uuid:{activity.run_id}"
    assert completion["generated"]["items"] == [
        {"type": "totalQuestions", "value": 10},
        {"type": "correctQuestions", "value": 8},
        {"type": "xpEarned", "value": 12},
        {"type": "masteredUnits", "value": 1},
    ]
    assert completion["generated"]["extensions"] == {"pctCompleteApp": 40}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("%timeback end --xp -1", "xpEarned"),
        ("%timeback end --xp 1 --total 3 --correct 4", "correctQuestions"),
        ("%timeback end --xp 1 --pct 101", "pctComplete"),
        ("%timeback end --total 3 --correct 2", "xpEarned"),
        ("%timeback start other --name Other --code DS-101", "already running"),
    ],
)
@pytest.mark.bad_input
def test_a_refused_command_is_one_line_on_stderr_and_the_activity_runs_on(
    local: Path, shell: InteractiveShell, capsys: pytest.CaptureFixture[str], line: str, field: str
) -> None:
    activity = shell.run_line_magic("timeback", "start week-3 --name Week3 --subject Math --grade 8")
    capsys.readouterr()
    out, err = _run(shell, capsys, line)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("timeback: ") and field in err
    assert timeback_nb.current() is activity and not activity.ended


def test_commands_without_a_running_activity_say_how_to_start_one(
    local: Path, shell: InteractiveShell, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "_current", None)  # a fresh kernel: nothing started yet
    for command in ("status", "pause", "resume", "end --xp 1"):
        out, err = _run(shell, capsys, f"%timeback {command}")
        assert out == ""
        assert err == "timeback: no activity is running; start one with %timeback start ID --name NAME (or timeback_nb.start)\n"


def test_start_with_an_unknown_course_names_the_configured_ones(
    local: Path, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = _run(shell, capsys, "%timeback start week-3 --name W --subject Math --grade 9")
    assert err.startswith("timeback: course: no course in") and '{"subject": "Math", "grade": 8}' in err
    assert timeback_nb.current() is None


def test_time_off_and_a_one_line_end(local: Path, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    activity = shell.run_line_magic("timeback", "start quiz --name Quiz --code DS-101 --no-time")
    assert activity.track_time is False
    out, _ = _run(shell, capsys, "%timeback end --xp 3")
    assert out == "Ended 'Quiz': 0:00 active; 3 XP (saved on this computer).\n"
    _wait_finished(activity)
    timeback_nb.flush(timeout=5)
    with Store(local / "store.sqlite3") as store:
        kinds = [json.loads(row["body"])["data"][0]["type"] for row in store.local_events()]
    assert kinds == ["ActivityEvent"]  # completion only, no time
