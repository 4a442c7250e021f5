"""`timeback-nb`: check, runs, events, flush and demo, through `main([...])` with a temp store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from timeback_nb import cli
from timeback_nb.outbox import stop_senders
from timeback_nb.events import Target, completion_envelope, dumps, event_id, time_spent_envelope
from timeback_nb.records import ActivityRef, Completion, TimeWindow
from timeback_nb.store import Store

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SECRET = "s3cr3t-value-never-printed"
RUN = "0b0e2c1e-1f4c-4d0e-9a53-3c2d51f0b6a7"
REF = ActivityRef("linear-functions", "Linear functions", {"subject": "Math", "grade": 8})
TARGET = Target(
    app_name="Timeback Notebooks",
    sensor="https://notebooks.example.org",
    subject="Math",
    course_id="c-stg-8",
    course_name="NB-MATH-8",
    oneroster_base="https://api.staging.alpha-1edtech.ai",
    user_email="student@example.edu",
    user_id="u-123",
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean operator environment: no TIMEBACK_* variables, a temp store, cwd with a config."""
    for name in (
        "TIMEBACK_ENV", "TIMEBACK_CLIENT_ID", "TIMEBACK_CLIENT_SECRET", "TIMEBACK_AUTH_URL",
        "TIMEBACK_CALIPER_URL", "TIMEBACK_USER_EMAIL", "TIMEBACK_USER_ID", "TIMEBACK_ONEROSTER_URL",
        "TIMEBACK_NB_TRANSPORT", "TIMEBACK_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TIMEBACK_NB_STORE", str(tmp_path / "store" / "timeback.sqlite"))
    work = tmp_path / "course"
    work.mkdir()
    shutil.copyfile(NOTEBOOKS / "timeback.config.json", work / "timeback.config.json")
    monkeypatch.chdir(work)
    return tmp_path


def _store(env: Path) -> Store:
    return Store(env / "store" / "timeback.sqlite")


def _window(start_s: int, active_ms: int, inactive_ms: int) -> TimeWindow:
    end_ms = start_s * 1000 + active_ms + inactive_ms
    return TimeWindow(
        REF,
        RUN,
        f"2025-01-15T10:00:{start_s:02d}.000Z",
        f"2025-01-15T10:00:{end_ms // 1000:02d}.{end_ms % 1000:03d}Z",
        active_ms,
        inactive_ms,
    )


def _fill(store: Store) -> list[str]:
    """Three events of one run: a delivered window, a rejected window, a queued completion."""
    bodies = [
        dumps(time_spent_envelope(_window(0, 13500, 1500), TARGET, send_time="2025-01-15T10:00:15.1Z")),
        dumps(time_spent_envelope(_window(15, 15000, 0), TARGET, send_time="2025-01-15T10:00:30.1Z")),
        dumps(
            completion_envelope(
                Completion(
                    REF,
                    RUN,
                    "2025-01-15T10:00:40.000Z",
                    {"xpEarned": 8, "totalQuestions": 5, "correctQuestions": 4, "masteredUnits": 1,
                     "pctComplete": 100},
                ),
                TARGET,
                attempt=1,
                send_time="2025-01-15T10:00:40.1Z",
            )
        ),
    ]
    for body in bodies:
        kind = "completion" if '"Completed"' in body else "time"
        assert store.enqueue(event_id(json.loads(body)), kind, RUN, body)
    first, second, _ = (r["event_id"] for r in store.events())
    store.mark_delivered(first)
    store.mark_rejected(second, "422 Unprocessable Entity: actor.email: not a known student")
    store.remember_run("student@example.edu", "intro", "CS-101", "11111111-2222-4333-8444-555555555555",
                       "2025-01-14T09:00:00.000Z")
    store.close_run("11111111-2222-4333-8444-555555555555", "2025-01-14T09:30:00.000Z")
    store.remember_run("student@example.edu", REF.id, "Math/g8", RUN, "2025-01-15T10:00:00.000Z")
    return bodies


# --- check ------------------------------------------------------------------------------------


def test_check_usable_local_setup(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert f"config        {env / 'course' / 'timeback.config.json'}" in out
    assert "transport     local" in out
    assert "TIMEBACK_CLIENT_ID absent, TIMEBACK_CLIENT_SECRET absent" in out
    assert f"store         {env / 'store' / 'timeback.sqlite'} (not created yet)" in out
    assert not (env / "store").exists()  # check creates nothing
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("COURSE"))
    assert header.split() == ["COURSE", "ENV", "SENSOR", "COURSE", "ID", "PROBLEM"]
    row = next(line for line in lines if line.startswith("NB-MATH-8") and "staging *" in line)
    assert "https://staging.notebooks.example.org" in row  # the env override wins
    assert "d4e7b2a9-1c3f-4e6a-8b5d-90f1a2c3e4b7" in row
    assert out.rstrip().endswith("ok: usable")


def test_check_never_prints_the_secret(env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TIMEBACK_CLIENT_ID", "client-abc")
    monkeypatch.setenv("TIMEBACK_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("TIMEBACK_USER_EMAIL", "student@example.edu")
    monkeypatch.setenv("TIMEBACK_ENV", "production")
    assert cli.main(["check"]) == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "TIMEBACK_CLIENT_ID present, TIMEBACK_CLIENT_SECRET present" in captured.out
    assert "transport     caliper: https://caliper.alpha-1edtech.ai/caliper/event" in captured.out
    assert "TIMEBACK_USER_EMAIL student@example.edu" in captured.out
    assert any(
        line.startswith("NB-MATH-3") and "production *" in line for line in captured.out.splitlines()
    )


def test_check_without_a_config_says_where_it_looked(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (env / "course" / "timeback.config.json").unlink()
    assert cli.main(["check"]) == 1
    captured = capsys.readouterr()
    assert f"config        not found in {env / 'course'} or its parents" in captured.out
    assert "problem: config: no timeback.config.json found" in captured.err
    assert "TIMEBACK_CONFIG" in captured.err


@pytest.mark.bad_input
def test_check_fails_on_a_course_not_synced_for_the_env_in_use(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = json.loads((NOTEBOOKS / "timeback.config.json").read_text())
    config["courses"][1]["ids"]["production"] = None
    path = env / "other.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("TIMEBACK_CONFIG", str(path))

    assert cli.main(["check"]) == 0  # staging is in use: production only gets a note
    captured = capsys.readouterr()
    assert "(from TIMEBACK_CONFIG)" in captured.out
    assert "note: courses[1].ids.production: course NB-MATH-8 is not synced for production" in captured.out
    assert any(line.startswith("NB-MATH-8") and "not synced" in line for line in captured.out.splitlines())

    monkeypatch.setenv("TIMEBACK_ENV", "production")
    assert cli.main(["check"]) == 1
    assert "problem: courses[1].ids.production" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TIMEBACK_CLIENT_ID", "only-half", "TIMEBACK_CLIENT_SECRET: not set"),
        ("TIMEBACK_ENV", "prod", "TIMEBACK_ENV: 'prod' is not an environment"),
        ("TIMEBACK_NB_TRANSPORT", "carrier-pigeon", "TIMEBACK_NB_TRANSPORT: 'carrier-pigeon'"),
    ],
)
@pytest.mark.bad_input
def test_check_names_a_bad_environment_variable(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    variable: str, value: str, expected: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["check"]) == 1
    assert f"problem: {expected}" in capsys.readouterr().err


@pytest.mark.bad_input
def test_check_reports_a_broken_config_file_with_line_and_column(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (env / "course" / "timeback.config.json").write_text('{"name": "x",\n "courses": [}\n')
    assert cli.main(["check"]) == 1
    assert "line 2 column 14: invalid JSON" in capsys.readouterr().err


# --- runs / events ----------------------------------------------------------------------------


def test_runs_and_events_without_a_store_create_nothing(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["runs"]) == 0
    assert cli.main(["events"]) == 0
    assert capsys.readouterr().out.count("No store yet at") == 2
    assert not (env / "store").exists()


def test_runs_table_newest_first(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _store(env) as store:
        _fill(store)
    assert cli.main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "ACTIVITY", "COURSE", "USER", "STARTED", "ENDED"]
    assert lines[1].split() == [RUN, "linear-functions", "Math/g8", "student@example.edu",
                                "2025-01-15T10:00:00.000Z", "open"]
    assert lines[2].split() == ["11111111-2222-4333-8444-555555555555", "intro", "CS-101",
                                "student@example.edu", "2025-01-14T09:00:00.000Z",
                                "2025-01-14T09:30:00.000Z"]
    assert len(lines) == 3


def test_events_table_newest_first_with_the_reason_for_a_reject(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _store(env) as store:
        _fill(store)
    assert cli.main(["events"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "STATE", "WRITTEN", "EVENT", "ACTIVITY", "DETAILS", "RUN", "REASON"]
    completion, rejected, delivered = lines[1:]
    assert completion.startswith("3    queued")
    assert "completed" in completion and "Linear functions" in completion
    assert "8 XP, 4/5 correct, 1 unit mastered, 100% complete" in completion
    assert RUN[:8] in completion
    assert rejected.startswith("2    rejected")
    assert "active 15.0 s" in rejected
    assert rejected.endswith("422 Unprocessable Entity: actor.email: not a known student")
    assert delivered.startswith("1    delivered")
    assert "active 13.5 s, inactive 1.5 s" in delivered


def test_events_filters_and_limits(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _store(env) as store:
        _fill(store)
    assert cli.main(["events", "--state", "rejected"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["rejected"]
    assert cli.main(["events", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["3", "2"]
    assert cli.main(["events", "--state", "delivered", "--limit", "0"]) == 0
    assert capsys.readouterr().out == "No delivered events.\n"


def test_events_json_prints_each_envelope_exactly_as_stored(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _store(env) as store:
        bodies = _fill(store)
    assert cli.main(["events", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == list(reversed(bodies))
    envelope = json.loads(lines[0])
    assert envelope["data"][0]["type"] == "ActivityEvent"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["events", "--state", "lost"], "invalid choice: 'lost'"),
        (["events", "--limit", "-1"], "expected an integer >= 0, got '-1'"),
        (["flush", "--timeout", "nan"], "--timeout: expected a number of seconds from 0 to 86400, got nan"),
        (["flush", "--timeout", "-1"], "--timeout: expected a number of seconds from 0 to 86400, got -1.0"),
        (["flush", "--timeout", "1e400"], "--timeout: expected a number of seconds from 0 to 86400, got inf"),
        (["flush", "--timeout", "soon"], "--timeout: expected a number of seconds, got 'soon'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
    ],
)
@pytest.mark.bad_input
def test_bad_usage_exits_2_with_the_reason(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("check", "runs", "events", "flush", "demo"):
        assert command in out


def test_summarize_survives_a_body_that_is_not_an_envelope() -> None:
    assert cli.summarize("{}") == ("?", "", "(not a Caliper envelope)")
    assert cli.summarize("not json") == ("?", "", "(not a Caliper envelope)")


# --- demo -------------------------------------------------------------------------------------


def test_demo_copies_the_notebooks_keeps_edits_and_runs_jupyterlab_in_local_mode(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    launched: list[dict[str, Any]] = []

    def fake_run(command: list[str], cwd: Path, env_vars: dict[str, str], **_: Any) -> int:
        launched.append({"command": command, "cwd": cwd, "env": dict(env_vars)})
        return 0

    monkeypatch.setattr(cli, "_run_jupyterlab", fake_run)
    monkeypatch.setenv("TIMEBACK_CONFIG", "/somewhere/else.json")
    monkeypatch.delenv("TIMEBACK_NB_STORE")
    folder = env / "demo"
    assert cli.main(["demo", "--dir", str(folder), "--no-browser", "--port", "8899"]) == 0
    for name in ("demo.ipynb", "lesson-linear-functions.ipynb", "timeback.config.json"):
        assert (folder / name).read_bytes() == (NOTEBOOKS / name).read_bytes()

    (run,) = launched
    assert run["cwd"] == folder
    assert run["command"][1:3] == ["-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={folder}" in run["command"]
    assert "--ServerApp.port=8899" in run["command"]
    assert "--no-browser" in run["command"]
    assert run["env"]["TIMEBACK_NB_TRANSPORT"] == "local"
    assert "TIMEBACK_CONFIG" not in run["env"]  # the kernel finds the demo's own config
    store = folder / ".timeback" / "store.sqlite"
    assert run["env"]["TIMEBACK_NB_STORE"] == str(store)
    out = capsys.readouterr().out
    program = Path(sys.executable).parent / "timeback-nb"  # by its full path: .venv/bin is not on PATH
    assert f"TIMEBACK_NB_STORE={store} {program} runs" in out
    assert f"TIMEBACK_NB_STORE={store} {program} events" in out
    assert f"TIMEBACK_CONFIG={folder / 'timeback.config.json'} TIMEBACK_NB_TRANSPORT=local" in out

    # A second run keeps what the student changed.
    (folder / "demo.ipynb").write_text("edited")
    assert cli.main(["demo", "--dir", str(folder), "--no-browser"]) == 0
    assert (folder / "demo.ipynb").read_text() == "edited"
    assert f"kept   {folder / 'demo.ipynb'}" in capsys.readouterr().out


def test_demo_keeps_an_explicit_store(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(cli, "_run_jupyterlab", lambda c, cwd, e, **_: seen.append(e["TIMEBACK_NB_STORE"]) or 0)
    assert cli.main(["demo", "--dir", str(env / "demo"), "--no-browser"]) == 0
    assert seen == [str(env / "store" / "timeback.sqlite")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_script_prints_an_address_that_opens_the_notebook_and_commands_that_run_as_pasted(tmp_path: Path) -> None:
    """scripts/demo.sh with an existing virtualenv (this one), as a newcomer meets it: the address
    it prints opens the notebook (its token logs in), and each command it prints runs when pasted
    into a shell at the repository's root, with nothing but the system PATH."""
    port = _free_port()
    jupyter = tmp_path / "jupyter"
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith(("TIMEBACK_", "JUPYTER"))
    }
    environ.update(
        TIMEBACK_DEMO_VENV=sys.prefix,
        JUPYTER_CONFIG_DIR=str(jupyter / "config"),
        JUPYTER_DATA_DIR=str(jupyter / "data"),
        JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(jupyter / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(jupyter / "workspaces"),
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    folder = tmp_path / "demo"
    process = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "demo.sh"), "--no-browser", "--port", str(port), "--dir", str(folder)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # JupyterLab's own log
        text=True,
        start_new_session=True,
    )
    printed: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until the demo says it is running, and what to do next
            printed.append(line.rstrip("\n"))
            if line.startswith("Stop with Ctrl-C"):
                break
        text = "\n".join(printed)
        assert process.poll() is None, text
        (url,) = [line.strip() for line in printed if line.strip().startswith("http://")]
        commands = [line.strip() for line in printed if line.startswith("    ") and "timeback-nb" in line]
        assert len(commands) == 3, text

        with httpx.Client(follow_redirects=True, timeout=10) as browser:
            page = browser.get(url)
            assert page.status_code == 200 and page.url.path == "/lab/tree/demo.ipynb", (page.url, text)
            assert "jupyter-config-data" in page.text  # JupyterLab itself, not the login page
            # The token logged this "browser" in: the notebook itself can be read now.
            notebook = browser.get(f"http://127.0.0.1:{port}/api/contents/demo.ipynb")
            assert notebook.status_code == 200
            assert notebook.json()["content"]["metadata"]["kernelspec"]["name"] == "python3"

        pasted = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # a fresh terminal: no .venv on PATH
        for command in commands:
            result = subprocess.run(["bash", "-c", command], cwd=REPO, env=pasted, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        assert "ok: usable" in result.stdout  # the last one is `check`, on the demo's config
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=30)
    assert f"TIMEBACK_NB_STORE={folder / '.timeback' / 'store.sqlite'} " in commands[0]


def test_check_from_a_projects_root_names_the_config_one_folder_down(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(env)  # the course's config is in course/, as a clone's is in notebooks/
    assert cli.main(["check"]) == 1
    printed = capsys.readouterr()
    assert "(there is one in course/: TIMEBACK_CONFIG=course/timeback.config.json)" in printed.out + printed.err
    monkeypatch.setenv("TIMEBACK_CONFIG", "course/timeback.config.json")
    assert cli.main(["check"]) == 0


def test_check_says_where_the_student_identity_comes_from(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check"]) == 0
    assert "user          not set: local mode records as <login>@localhost" in capsys.readouterr().out

    monkeypatch.setenv("TIMEBACK_CLIENT_ID", "client-abc")
    monkeypatch.setenv("TIMEBACK_CLIENT_SECRET", SECRET)
    assert cli.main(["check"]) == 0  # usable: start(user=...) can still name the student
    out = capsys.readouterr().out
    assert "user          not set: every start() must pass user=" in out
    assert "note: no TIMEBACK_USER_EMAIL or TIMEBACK_USER_ID" in out

    monkeypatch.setenv("TIMEBACK_USER_EMAIL", "student@example.edu")
    assert cli.main(["check"]) == 0
    assert "sourcedId to be looked up in OneRoster (https://api.staging.alpha-1edtech.ai)" in capsys.readouterr().out
    with _store(env) as store:
        store.remember_user_id("student@example.edu", "staging", "u-remembered")
    assert cli.main(["check"]) == 0
    assert "sourcedId u-remembered, remembered from an earlier look-up" in capsys.readouterr().out

    monkeypatch.setenv("TIMEBACK_USER_ID", "u-given")
    assert cli.main(["check"]) == 0
    assert "TIMEBACK_USER_ID u-given (the OneRoster sourcedId, used as given)" in capsys.readouterr().out


# --- flush ------------------------------------------------------------------------------------


@pytest.fixture
def senders() -> Iterator[None]:
    yield
    stop_senders()


def test_flush_delivers_what_is_queued_locally(
    env: Path, senders: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with _store(env) as store:
        bodies = _fill(store)  # one of the three is still queued
    assert cli.main(["flush", "--timeout", "5"]) == 0
    assert capsys.readouterr().out == "delivered 1, queued 0, rejected 0\n"
    with _store(env) as store:
        assert [row["body"] for row in store.local_events()] == [bodies[2]]
        assert store.counts() == {"queued": 0, "delivered": 2, "rejected": 1}


def test_flush_exits_1_while_the_endpoint_is_unreachable(
    env: Path, senders: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("TIMEBACK_CLIENT_ID", "client-abc")
    monkeypatch.setenv("TIMEBACK_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("TIMEBACK_AUTH_URL", f"{closed}/oauth2/token")
    monkeypatch.setenv("TIMEBACK_CALIPER_URL", f"{closed}/caliper/event")
    with _store(env) as store:
        _fill(store)
    assert cli.main(["flush", "--timeout", "0.5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "delivered 0, queued 1, rejected 0\n"
    assert "1 event(s) still queued; `timeback-nb events --state queued` shows why" in captured.err
    assert SECRET not in captured.out + captured.err
    with _store(env) as store:
        assert store.counts()["queued"] == 1  # kept for the next try


def test_check_a_sensor_missing_only_in_the_other_env_is_a_note(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "name": "Staging only",
        "courses": [
            {"subject": "Math", "grade": 8, "ids": {"staging": "c-stg-8"},
             "overrides": {"staging": {"sensor": "https://staging.notebooks.example.org"}}},
        ],
    }
    (env / "course" / "timeback.config.json").write_text(json.dumps(config))
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "note: " in out and "has no sensor for production" in out
    monkeypatch.setenv("TIMEBACK_ENV", "production")
    assert cli.main(["check"]) == 1
    assert "has no sensor for production" in capsys.readouterr().err
