"""TimebackWidget without a kernel: the joined ESM, traits from the snapshot, the message handler."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import comm
import pytest

from timeback_nb import widget as widget_module
from timeback_nb.widget import TimebackWidget

JS = Path(__file__).resolve().parent.parent / "js"


class FakeActivity:
    """The two methods the widget uses, with the reply contract of `Activity`."""

    def __init__(self, **overrides: Any) -> None:
        self.snap: dict[str, Any] = {
            "elapsedMs": 61_000,
            "windowElapsedMs": 1_000,
            "state": "active",
            "mode": "local",
            "pendingEvents": 0,
            "rejectedEvents": 0,
            "lastError": "",
            "activityName": "Linear functions",
            "idleAfterMs": 0,
            "pagesShowing": 1,
            "runId": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "nextPingMs": 1500,
            **overrides,
        }
        self.course: dict[str, Any] = {"subject": "Math", "grade": 8}
        self.received: list[dict[str, Any]] = []
        self.reject = False

    def snapshot(self) -> dict[str, Any]:
        return dict(self.snap)

    def page_message(self, message: dict[str, Any]) -> dict[str, Any] | None:
        self.received.append(message)
        return None if self.reject else self.snapshot()


class RecordingComm(comm.DummyComm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.published: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None, **keys: Any) -> None:
        self.published.append({"msg_type": msg_type, "data": data})

    def sent(self) -> list[dict[str, Any]]:
        """Kernel → page messages after the comm opened."""
        return [p["data"] for p in self.published if p["msg_type"] == "comm_msg"]


@pytest.fixture(autouse=True)
def recording_comms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comm, "create_comm", RecordingComm)


def sent(w: TimebackWidget) -> list[dict[str, Any]]:
    assert isinstance(w.comm, RecordingComm)
    return w.comm.sent()


def report(seq: int = 1, **changes: Any) -> dict[str, Any]:
    return {"type": "report", "page": "page-a", "seq": seq, "kind": "ping", "visible": True, "t": 1234.5, **changes}


def from_page(w: TimebackWidget, content: Any) -> None:
    """Deliver a page's `model.send(content)` the way ipywidgets does."""
    w._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


# --- the ESM -----------------------------------------------------------------------------------


def _code_lines(source: str) -> list[str]:
    """A JS file's lines without its whole-line comments and blank lines."""
    return [line for line in widget_module._COMMENT_LINES.sub("", source).splitlines() if line.strip()]


def test_esm_is_the_helpers_then_widget_js_without_its_imports_or_comment_lines() -> None:
    esm = TimebackWidget._esm
    widget_js = (JS / "widget.js").read_text("utf-8")
    expected = [
        *_code_lines((JS / "format.js").read_text("utf-8")),
        *_code_lines((JS / "visibility.js").read_text("utf-8")),
        *[line for line in _code_lines(widget_js) if not line.startswith("import ")],
    ]
    assert [line for line in esm.splitlines() if line.strip()] == expected
    assert "./format.js" in widget_js and "./visibility.js" in widget_js and "./" not in esm
    assert "export default { initialize, render };" in esm
    # What is dropped is never inside a template literal (the CSS, the HTML): an even count of
    # backticks before each dropped line.
    for name in ("format.js", "visibility.js", "widget.js"):
        source = (JS / name).read_text("utf-8")
        for match in widget_module._COMMENT_LINES.finditer(source):
            assert source[: match.start()].count("`") % 2 == 0, (name, match.group(0))


def test_comment_lines_are_dropped_and_code_is_kept() -> None:
    source = (
        "// a line comment\n  /** a doc\n   * block */\nconst a = 1; // kept: after code\n"
        "/** @type {any} */ (a);\nconst css = `x{}\n/* inside a template: still dropped */\n`;\n"
    )
    assert widget_module._COMMENT_LINES.sub("", source) == (
        "const a = 1; // kept: after code\n/** @type {any} */ (a);\nconst css = `x{}\n`;\n"
    )


def test_esm_stays_within_the_design_budget() -> None:
    esm = TimebackWidget._esm.encode()
    assert len(esm) <= 12 * 1024
    assert len(gzip.compress(esm)) <= 4 * 1024


def test_esm_loads_as_one_module_in_node(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is needed for the JS checks (js/test)"
    (tmp_path / "widget.mjs").write_text(TimebackWidget._esm, "utf-8")
    probe = "const m = await import('./widget.mjs'); console.log(Object.keys(m.default).join(','), typeof m.formatElapsed)"
    out = subprocess.run([node, "--input-type=module", "-e", probe], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["initialize,render", "function"]


def test_load_esm_prefers_the_installed_static_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    static, repo = tmp_path / "static", tmp_path / "js"
    for folder, tag in ((static, "static"), (repo, "repo")):
        folder.mkdir()
        (folder / "format.js").write_text(f"// the {tag} copy\nexport const where = '{tag}';\n")
        (folder / "visibility.js").write_text("export const shown = true;\n")
        (folder / "widget.js").write_text(
            'import { where } from "./format.js";\nimport { shown } from "./visibility.js";\nexport default { where, shown };\n'
        )
    monkeypatch.setattr(widget_module, "_JS_DIRS", (static, repo))
    assert widget_module._load_esm() == (
        "export const where = 'static';\n\nexport const shown = true;\n\nexport default { where, shown };\n"
    )
    shutil.rmtree(static)
    assert "'repo'" in widget_module._load_esm()


def test_load_esm_refuses_missing_helper_imports_and_helpers_that_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "format.js").write_text("export const a = 1;\n")
    (tmp_path / "visibility.js").write_text('import { a } from "./format.js";\nexport const b = a;\n')
    (tmp_path / "widget.js").write_text('import { a } from "./format.js";\nexport default {};\n')
    monkeypatch.setattr(widget_module, "_JS_DIRS", (tmp_path,))
    with pytest.raises(ImportError, match=r"widget.js: expected one import from each of format.js, visibility.js, found \['format.js'\]"):
        widget_module._load_esm()
    (tmp_path / "widget.js").write_text('import { a } from "./format.js";\nimport { b } from "./visibility.js";\nexport default {};\n')
    with pytest.raises(ImportError, match="visibility.js: a helper module must not import anything"):
        widget_module._load_esm()
    monkeypatch.setattr(widget_module, "_JS_DIRS", (tmp_path / "missing",))
    with pytest.raises(FileNotFoundError, match="widget JS not found"):
        widget_module._load_esm()


# --- traits and messages -----------------------------------------------------------------------


def test_initial_traits_come_from_the_snapshot() -> None:
    activity = FakeActivity(state="hidden", pendingEvents=2, rejectedEvents=1, lastError="HTTP 422: bad course")
    w = TimebackWidget(activity)
    assert (w.elapsed_ms, w.state, w.mode, w.activity_name) == (61_000, "hidden", "local", "Linear functions")
    assert (w.pending_events, w.rejected_events, w.last_error) == (2, 1, "HTTP 422: bad course")
    assert isinstance(w.comm, RecordingComm)
    opened = w.comm.published[0]
    assert opened["msg_type"] == "comm_open"
    assert opened["data"]["state"]["elapsed_ms"] == 61_000
    assert sent(w) == []  # nothing goes to the page until the page speaks


def test_a_report_updates_the_traits_in_one_message_then_acks() -> None:
    activity = FakeActivity()
    w = TimebackWidget(activity)
    activity.snap.update(elapsedMs=65_432, state="ended", pendingEvents=3, pagesShowing=2, nextPingMs=700)
    from_page(w, report(seq=7))
    assert activity.received == [report(seq=7)]
    assert (w.elapsed_ms, w.state, w.pending_events, w.pages_showing) == (65_432, "ended", 3, 2)
    update, ack = sent(w)
    assert update["method"] == "update"
    assert update["state"] == {"elapsed_ms": 65_432, "state": "ended", "pending_events": 3, "pages_showing": 2}
    assert ack == {"method": "custom", "content": {"type": "ack", "seq": 7, "nextPingMs": 700}}


def test_an_unchanged_reply_still_acks() -> None:
    w = TimebackWidget(FakeActivity())
    from_page(w, report(seq=1))
    assert sent(w) == [{"method": "custom", "content": {"type": "ack", "seq": 1, "nextPingMs": 1500}}]


@pytest.mark.parametrize(
    "content",
    [
        ["report"],
        "report",
        None,
        {"type": "ack", "seq": 1},
        {"seq": 1, "kind": "ping"},
        report(page="x" * 1100),
    ],
    ids=["list", "string", "null", "wrong-type", "no-type", "oversized"],
)
def test_bad_messages_are_dropped_before_the_activity_with_a_debug_log(caplog: pytest.LogCaptureFixture, content: Any) -> None:
    activity = FakeActivity()
    w = TimebackWidget(activity)
    with caplog.at_level(logging.DEBUG, logger="timeback_nb.widget"):
        from_page(w, content)
    assert activity.received == []
    assert sent(w) == []
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_a_report_just_under_the_size_limit_is_handed_on() -> None:
    activity = FakeActivity()
    w = TimebackWidget(activity)
    content = report(page="")
    content["page"] = "x" * (widget_module.MAX_MESSAGE_BYTES - len(json.dumps(content)))
    assert len(json.dumps(content)) == widget_module.MAX_MESSAGE_BYTES
    from_page(w, content)
    assert activity.received == [content]


def test_a_report_the_activity_rejects_is_dropped_without_a_reply() -> None:
    activity = FakeActivity()
    activity.reject = True
    w = TimebackWidget(activity)
    activity.snap["elapsedMs"] = 99_000
    from_page(w, report(seq=-1))
    assert len(activity.received) == 1
    assert sent(w) == []
    assert w.elapsed_ms == 61_000


# --- text repr ---------------------------------------------------------------------------------


def test_text_repr_says_what_is_tracked_without_secrets() -> None:
    activity = FakeActivity(elapsedMs=3_723_000, state="paused", mode="caliper")
    w = TimebackWidget(activity)
    text = repr(w)
    assert text == "Timeback activity 'Linear functions' (Math grade 8), run 3f2504e0: paused, 1:02:03 active, caliper mode"
    data, _ = w._repr_mimebundle_()
    assert data["text/plain"] == text
    activity.course = {"code": "CS-101"}
    assert "(CS-101)" in repr(w)
    activity.snap.update(elapsedMs=7_999, state="active")
    assert ": active, 0:07 active" in repr(w)


# --- against the real Activity -----------------------------------------------------------------


class StepClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def monotonic_ms(self) -> int:
        return self.now

    def wall_ms(self) -> int:
        return 1_700_000_000_000 + self.now


def test_the_real_activity_accepts_page_reports_and_replies_with_the_contract() -> None:
    from timeback_nb.activity import Activity
    from timeback_nb.records import ActivityRef, MemorySink

    clock = StepClock()
    ref = ActivityRef("week-3", "Linear functions", {"subject": "Math", "grade": 8})
    activity = Activity(ref, run_id="3f2504e0-4f89-41d3-9a0c-0305e82c3301", sink=MemorySink(), clock=clock, mode="local")
    w = TimebackWidget(activity)
    assert (w.activity_name, w.mode, w.elapsed_ms) == ("Linear functions", "local", 0)
    from_page(w, report(seq=1, kind="transition", t=100.0))
    clock.now += 4_000
    from_page(w, report(seq=2, kind="ping", t=4_100.0))
    assert w.state == "active"
    assert w.elapsed_ms == 4_000
    acks = [m["content"] for m in sent(w) if m["method"] == "custom"]
    assert [a["seq"] for a in acks] == [1, 2]
    assert all(250 <= a["nextPingMs"] <= 10_000 for a in acks)
    from_page(w, report(seq=3, kind="ping", t="soon"))  # malformed: the activity says None
    assert len([m for m in sent(w) if m["method"] == "custom"]) == 2
    assert repr(w) == "Timeback activity 'Linear functions' (Math grade 8), run 3f2504e0: active, 0:04 active, local mode"
    assert w.pages_showing == 1
    # A second window shows the notebook: the reply to its report says so to every page.
    from_page(w, report(seq=1, page="page-b", kind="transition", t=50.0))
    assert w.pages_showing == 2
    from_page(w, report(seq=2, page="page-b", kind="transition", visible=False, t=60.0))
    assert w.pages_showing == 1


def test_a_reply_computed_before_end_cannot_show_a_live_state_after_it() -> None:
    # The page's report is handled on a subshell while the end cell runs on the main shell:
    # the reply says "active", then end() ends the run before the reply reaches the traits.
    class EndsMeanwhile(FakeActivity):
        ended = False

        def page_message(self, message: dict[str, Any]) -> dict[str, Any] | None:
            reply = super().page_message(message)
            self.ended = True
            self.snap["state"] = "ended"
            return reply

    w = TimebackWidget(EndsMeanwhile())
    from_page(w, report())
    assert w.state == "ended"
