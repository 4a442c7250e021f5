"""The anywidget declaration: what the page shows (synced traits) and where its reports go.

Page → kernel: ``model.send`` messages, never synced traits (ipywidgets merges queued trait
updates while a cell runs; custom messages arrive complete and in order)::

    {"type": "report", "page": "<random id per tab and load>", "seq": 1, 2, ...,
     "kind": "transition" | "ping" | "idle" | "bye", "visible": true | false, "t": <performance.now() ms>,
     "input": <performance.now() ms of the last input: only with the idle rule on>}

``visible`` means "this page shows the notebook" (browser tab visible and, in JupyterLab, the
notebook panel of a view shown: js/visibility.js). ``idle``: no input for ``idle_after_ms``,
counted from ``input``.

Kernel → page: the traits below plus ``{"type": "ack", "seq": n, "nextPingMs": ms}``, sent only
from the page-message handler. ipykernel routes a comm's incoming messages to the shell that last
sent on it, so a send from any other thread (or a cell) would pull the comm back to the main
shell and stop live delivery while a cell runs.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Protocol

import anywidget
import traitlets

from .clock import format_elapsed

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024

# The wheel ships the JS as timeback_nb/static/ (pyproject force-include); a checkout has js/.
_JS_DIRS = (Path(__file__).parent / "static", Path(__file__).parent.parent / "js")
# widget.js's imports of its sibling helper modules (pure, each tested on its own with node).
_LOCAL_IMPORT = re.compile(r"^import\s[^;]*?\sfrom\s+[\"']\./([\w-]+\.js)[\"'];?[ \t]*\n", re.M | re.S)
_HELPERS = ("format.js", "visibility.js")
# Whole-line comments: `// ...` lines and `/* ... */` blocks that end their line.
_COMMENT_LINES = re.compile(r"^[ \t]*(?://[^\n]*|/\*(?:(?!\*/).)*\*/[ \t]*)\n", re.M | re.S)


def _load_esm() -> str:
    """The helper modules, then widget.js without its imports of them, as one module.

    anywidget loads a single ESM string (from a blob URL, where relative imports cannot
    resolve), so the files are joined here. Their whole-line comments are for readers of
    js/, not for every page that loads the widget: they are left out (design §8 measures
    what the page loads; `tests/benchmarks/bench_widget_js.py`).
    """
    folder = next((d for d in _JS_DIRS if (d / "widget.js").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"timeback_nb widget JS not found in {' or '.join(map(str, _JS_DIRS))}")
    widget_js = (folder / "widget.js").read_text("utf-8")
    imported = _LOCAL_IMPORT.findall(widget_js)
    if sorted(imported) != sorted(_HELPERS):
        raise ImportError(f"{folder / 'widget.js'}: expected one import from each of {', '.join(_HELPERS)}, found {imported}")
    helpers = [(folder / name).read_text("utf-8") for name in _HELPERS]
    for name, source in zip(_HELPERS, helpers):
        if re.search(r"^import\s", source, re.M):
            raise ImportError(f"{folder / name}: a helper module must not import anything")
    return _COMMENT_LINES.sub("", "\n".join([*helpers, _LOCAL_IMPORT.sub("", widget_js)]))


class PageSide(Protocol):
    """What the widget needs from the Activity (see `timeback_nb.activity`)."""

    @property
    def course(self) -> Mapping[str, Any]: ...

    def page_message(self, message: dict[str, Any]) -> dict[str, Any] | None: ...

    def snapshot(self) -> dict[str, Any]: ...


# trait name -> snapshot key
_SHOWN = {
    "elapsed_ms": "elapsedMs",
    "state": "state",
    "mode": "mode",
    "pending_events": "pendingEvents",
    "rejected_events": "rejectedEvents",
    "last_error": "lastError",
    "activity_name": "activityName",
    "idle_after_ms": "idleAfterMs",
    "pages_showing": "pagesShowing",
}


def _shown(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    return {trait: snapshot[key] for trait, key in _SHOWN.items()}


class TimebackWidget(anywidget.AnyWidget):
    """The student's view of a tracked activity, and the channel for page visibility reports.

    ``TimebackWidget(activity)`` takes its initial values from ``activity.snapshot()`` and
    hands every page report to ``activity.page_message``; the reply updates the traits.
    """

    _esm = _load_esm()

    elapsed_ms = traitlets.Int(0, help="Active ms of the run, as of the last page report.").tag(sync=True)
    state = traitlets.Unicode("", help="active, idle, hidden, paused, abandoned or ended.").tag(sync=True)
    mode = traitlets.Unicode("", help="Where events go: local, caliper, outbox, relay or memory.").tag(sync=True)
    pending_events = traitlets.Int(0, help="Events queued, not yet delivered.").tag(sync=True)
    rejected_events = traitlets.Int(0, help="Events the endpoint refused (kept).").tag(sync=True)
    last_error = traitlets.Unicode("", help="The latest delivery error, secret-free.").tag(sync=True)
    activity_name = traitlets.Unicode("", help="The activity's display name.").tag(sync=True)
    idle_after_ms = traitlets.Int(0, help="The idle rule, applied by the page: ms without input; 0 = off.").tag(sync=True)
    pages_showing = traitlets.Int(
        0, help="Pages (windows, tabs) that show the notebook now, counted by the kernel: over 1, the widget says so."
    ).tag(sync=True)

    def __init__(self, activity: PageSide, **kwargs: Any) -> None:
        self._activity = activity
        super().__init__(**{**_shown(activity.snapshot()), **kwargs})
        self.on_msg(self._on_page_message)

    def _on_page_message(self, _widget: object, content: Any, _buffers: object) -> None:
        if not isinstance(content, dict) or content.get("type") != "report":
            log.debug("dropped a page message that is not a report: %.100r", content)
            return
        if len(json.dumps(content)) > MAX_MESSAGE_BYTES:
            log.debug("dropped a page message over %d bytes", MAX_MESSAGE_BYTES)
            return
        reply = self._activity.page_message(content)
        if reply is None:  # malformed: the activity has logged why
            return
        with self.hold_sync():
            for trait, value in _shown(reply).items():
                setattr(self, trait, value)
            if getattr(self._activity, "ended", False):
                self.state = "ended"  # end() ran while this reply was on its way: it is final
        self.send({"type": "ack", "seq": content["seq"], "nextPingMs": reply["nextPingMs"]})

    def __repr__(self) -> str:
        snap = self._activity.snapshot()
        return (
            f"Timeback activity {snap['activityName']!r} ({_course_text(self._activity.course)}), "
            f"run {snap['runId'][:8]}: {snap['state']}, "
            f"{format_elapsed(snap['elapsedMs'])} active, {snap['mode']} mode"
        )


def _course_text(course: Mapping[str, Any]) -> str:
    """``{"subject": "Math", "grade": 8}`` → "Math grade 8"; ``{"code": "CS-101"}`` → "CS-101"."""
    if "code" in course:
        return str(course["code"])
    return f"{course.get('subject', '')} grade {course.get('grade', '')}".strip()
