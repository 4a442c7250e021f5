"""A real Jupyter server and a real headless Chromium for the browser tests.

Follows the measured recipe in the project's browser-testing reference: Chromium is started
here (not by Playwright, whose launch pins `document.visibilityState` to "visible") and driven
over CDP in its default context; every notebook page gets its own window, so it can be hidden
(minimised) and shown independently of the others, and two pages can be visible at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import httpx
import nbformat
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TIMEBACK_NB_CHROMIUM", "/usr/lib/chromium/chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
)
MARKER = "TIMEBACK_NB_BROWSER_TEST"  # env var that tags every process a harness starts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries our tag (the server's kernels run in their own sessions)."""
    needle = f"{MARKER}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the process group we started, then SIGKILL what is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)


# --- Jupyter server -----------------------------------------------------------------------------


@dataclass
class JupyterServer:
    """`python -m jupyterlab` on a free loopback port, isolated under `home`.

    The kernel inherits the server's environment: the checkout on PYTHONPATH (the code under
    test), a local store, a config file, a student, and no Timeback credentials.
    """

    home: Path
    comms_over_subshells: bool = True
    # Lab settings by plugin, e.g. {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "full"}}
    lab_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    process: subprocess.Popen[bytes] | None = None

    @property
    def notebooks(self) -> Path:
        return self.home / "notebooks"

    @property
    def store_path(self) -> Path:
        return self.home / "timeback.sqlite"

    @property
    def config_path(self) -> Path:
        return self.home / "timeback.config.json"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str, ui: str) -> str:
        if ui == "lab":
            return f"{self.base_url}/lab/tree/{name}?reset&token={self.token}"
        if ui == "notebook":
            return f"{self.base_url}/notebooks/{name}?token={self.token}"
        raise ValueError(f"ui: must be 'lab' or 'notebook', got {ui!r}")

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMEBACK_", "JUPYTER", "IPYTHON"))}
        dirs = {
            "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data", "JUPYTER_RUNTIME_DIR": "runtime",
            "IPYTHONDIR": "ipython", "JUPYTERLAB_SETTINGS_DIR": "settings", "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
        }
        env.update({name: str(self.home / sub) for name, sub in dirs.items()})
        env.update(
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            TIMEBACK_NB_STORE=str(self.store_path),
            TIMEBACK_NB_TRANSPORT="local",
            TIMEBACK_CONFIG=str(self.config_path),
            TIMEBACK_ENV="staging",
            TIMEBACK_USER_EMAIL="student@example.edu",
            TIMEBACK_USER_ID="u-browser-test",  # as given: no OneRoster look-up
            JUPYTER_PLATFORM_DIRS="1",
            **{MARKER: self.tag},
        )
        return env

    def start(self) -> JupyterServer:
        self.notebooks.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self.config_path.write_text(json.dumps(TEST_CONFIG, indent=2))
        # No "get Jupyter news?" toast over the notebook (nor a request off the machine).
        settings = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}, **self.lab_settings}
        if not self.comms_over_subshells:
            settings["@jupyterlab/apputils-extension:kernels-settings"] = {"commsOverSubshells": "disabled"}
        for plugin, values in settings.items():
            package, name = plugin.split(":")
            path = self.home / "settings" / package / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        args = [
            sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.token={self.token}",
            "--ServerApp.ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--notebook-dir={self.notebooks}", "--LabApp.expose_app_in_browser=True",
            "--JupyterNotebookApp.expose_app_in_browser=True",
        ]
        if os.getuid() == 0:
            args.append("--allow-root")  # CI runs as root; without it the server exits
        log = open(self.home / "server.log", "wb")  # noqa: SIM115 (kept open for the process)
        self.process = subprocess.Popen(args, env=self.environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(self._ready, 60, f"the Jupyter server (log: {self.home / 'server.log'})", interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"Jupyter server exited: {(self.home / 'server.log').read_text()[-3000:]}")
        try:
            return self.api("GET", "/api/status").status_code == 200
        except httpx.TransportError:
            return False

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.token}"}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=10, **kwargs)

    def write_notebook(self, cells: list[str], name: str | None = None) -> str:
        name = name or f"nb-{uuid.uuid4().hex[:8]}.ipynb"
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nbformat.write(nb, self.notebooks / name)
        return name

    def shutdown_sessions(self, name: str) -> None:
        """Shut the kernels of one notebook down, so finished tests leave the CPUs alone."""
        for session in self.api("GET", "/api/sessions").json():
            if session.get("path", "").endswith(name):
                self.api("DELETE", f"/api/sessions/{session['id']}")

    def events(self) -> list[dict[str, Any]]:
        """Caliper events delivered to the local store, in delivery order."""
        from timeback_nb.store import Store

        if not self.store_path.exists():
            return []
        with Store(self.store_path) as store:
            bodies = [json.loads(row["body"]) for row in store.local_events()]
        return [event for body in bodies for event in body.get("data", [body])]

    def emitted(self, run_id: str) -> int:
        """How many of the run's events the kernel has committed to the outbox (delivered or not)."""
        from timeback_nb.store import Store

        with Store(self.store_path) as store:
            return sum(1 for row in store.events() if row["run_id"] == run_id)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(httpx.HTTPError):
            self.api("POST", "/api/shutdown")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        _stop_group(self.process)
        for pid in _tagged_pids(self.tag):  # kernels live in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process = None


TEST_CONFIG = {
    "name": "Browser tests",
    "sensor": "https://notebooks.example.org",
    "courses": [
        {"subject": "Math", "grade": 8, "courseCode": "NB-MATH-8",
         "ids": {"staging": "c-stg-8", "production": "c-prd-8"}},
    ],
}


# --- Chromium -----------------------------------------------------------------------------------


@dataclass
class Chromium:
    """Debian's Chromium started by us, driven over CDP (so hidden tabs really are hidden)."""

    home: Path
    process: subprocess.Popen[bytes] | None = None
    playwright: Playwright | None = None
    browser: Browser | None = None

    @property
    def context(self) -> BrowserContext:
        assert self.browser is not None
        return self.browser.contexts[0]  # a new context would bring focus emulation back

    def start(self) -> Chromium:
        profile = self.home / "profile"
        env = dict(os.environ, XDG_CONFIG_HOME=str(self.home / "xdg-config"), XDG_CACHE_HOME=str(self.home / "xdg-cache"))
        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        lines = wait_until(
            lambda: port_file.is_file() and len(port_file.read_text().splitlines()) >= 2 and port_file.read_text().splitlines(),
            30, "Chromium's DevToolsActivePort",
        )
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{int(lines[0])}", no_defaults=True)
        return self

    def new_window(self) -> Page:
        """A page in a window of its own: minimising it hides this page and no other."""
        assert self.browser is not None
        cdp = self.browser.new_browser_cdp_session()
        try:
            with self.context.expect_page() as info:
                cdp.send("Target.createTarget", {"url": "about:blank", "newWindow": True})
        finally:
            cdp.detach()
        return info.value

    def stop(self) -> None:
        if self.browser is not None:
            with contextlib.suppress(Exception):
                self.browser.close()
            self.browser = None
        if self.playwright is not None:
            self.playwright.stop()
            self.playwright = None
        if self.process is not None:
            _stop_group(self.process)
            self.process = None


# --- one notebook in one window -----------------------------------------------------------------

def _panel_of(name: str | None) -> str:
    """JS: the panel of notebook `name` (None: the first notebook open), in JupyterLab and in
    Notebook 7 (`expose_app_in_browser`); a Lab page may hold several documents."""
    path = "" if name is None else f" && w.context.path === {json.dumps(name)}"
    return f"""(() => {{
  const app = window.jupyterapp;
  if (!app) return null;
  for (const w of app.shell.widgets('main')) if (w.sessionContext && w.content && w.content.widgets{path}) return w;
  return null;
}})()"""


_PANEL = _panel_of(None)

# JS: the main-area widget (any document) open on `path`.
_DOCUMENT = """(path) => {
  for (const w of window.jupyterapp.shell.widgets('main')) if (w.context && w.context.path === path) return w;
  throw new Error(`no document open on ${path}`);
}"""

_OUTPUT_TEXT = """(i) => {
  const panel = %s;
  const cell = panel && panel.content.widgets[i];
  if (!cell || !cell.model.outputs) return null;
  const outputs = cell.model.outputs.toJSON();
  return outputs.map((o) => {
    if (o.output_type === 'error') return `ERROR ${o.ename}: ${o.evalue}\\n${(o.traceback || []).join('\\n')}`;
    const text = o.text ?? (o.data && o.data['text/plain']) ?? '';
    return [].concat(text).join('');
  }).join('');
}"""


_CONTRAST = """(selector) => {
  const style = getComputedStyle(document.querySelector(selector));
  const lum = (css) => {
    const [r, g, b] = css.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const [a, b] = [lum(style.color), lum(style.backgroundColor)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


@dataclass
class NotebookPage:
    """One browser window showing one notebook (JupyterLab or Notebook 7); or, given the `page`
    of another, a second notebook open in that page's JupyterLab (see `open_document`)."""

    chromium: Chromium
    server: JupyterServer
    name: str
    ui: str
    page: Page = None  # type: ignore[assignment]  # None: a window of its own

    def __post_init__(self) -> None:
        self.owns_page = self.page is None
        if self.owns_page:
            self.page = self.chromium.new_window()
            # Playwright dismisses dialogs by default; a dismissed "leave page?" would cancel a reload.
            self.page.on("dialog", lambda dialog: dialog.accept())
            self.open()

    def open(self) -> None:
        self.page.goto(self.server.url(self.name, self.ui))
        self.page.bring_to_front()  # CDP pages start unfocused
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        """The notebook is open and its kernel is connected (only used before a cell runs)."""
        self.page.wait_for_function(
            f"""() => {{ const p = {self._panel}; const k = p && p.sessionContext.session && p.sessionContext.session.kernel;
                 return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }}""",
            polling=100, timeout=timeout * 1000,
        )

    def run_cell(self, index: int, activate: bool = True) -> None:
        """Start running cell `index` (clearing its old output first); does not wait for it.
        `activate=False` leaves the notebook where it is in Lab (e.g. behind another document;
        it must be the notebook Lab last had in front)."""
        self.page.evaluate(
            f"""([i, activate]) => {{ const app = window.jupyterapp; const p = {self._panel};
                 if (activate) app.shell.activateById(p.id); p.content.widgets[i].model.outputs.clear();
                 p.content.activeCellIndex = i; void app.commands.execute('notebook:run-cell', {{activate}}); }}""",
            [index, activate],
        )

    def add_cell(self, source: str) -> int:
        """Append a code cell (not saved) and return its index."""
        return int(self.page.evaluate(
            f"""(src) => {{ const p = {self._panel}; const cells = p.content.model.sharedModel;
                 cells.insertCell(cells.cells.length, {{cell_type: 'code', source: src}});
                 return cells.cells.length - 1; }}""",
            source,
        ))

    def scroll_to_cell(self, index: int) -> None:
        """Make cell `index` (negative: from the end) the active one and scroll it into view, as a student does."""
        self.page.evaluate(
            f"""(i) => {{ const p = {self._panel}; const n = i < 0 ? p.content.widgets.length + i : i;
                 p.content.activeCellIndex = n; void p.content.scrollToItem(n, 'center'); }}""",
            index,
        )

    def clear_output(self, index: int) -> None:
        self.page.evaluate(f"(i) => {{ ({self._panel}).content.widgets[i].model.outputs.clear(); }}", index)

    @property
    def _panel(self) -> str:
        return _panel_of(self.name)

    def output_text(self, index: int) -> str:
        return str(self.page.evaluate(_OUTPUT_TEXT % self._panel, index) or "")

    def wait_output(self, index: int, needle: str, timeout: float = 30) -> str:
        """Wait (polling, which also works in hidden tabs) until cell `index` prints `needle`."""
        self.page.wait_for_function(
            f"(i) => {{ const t = ({_OUTPUT_TEXT % self._panel})(i) || ''; return t.includes({json.dumps(needle)}) || t.startsWith('ERROR'); }}",
            arg=index, polling=100, timeout=timeout * 1000,
        )
        text = self.output_text(index)
        if needle not in text:
            raise AssertionError(f"cell {index} failed:\n{text}")
        return text

    def run(self, source: str, timeout: float = 30) -> str:
        """Run `source` in a new cell; return what it printed after the "OUT " marker."""
        index = self.add_cell(source)
        self.run_cell(index)
        return self.wait_output(index, "OUT ", timeout).split("OUT ", 1)[1].strip()

    # JupyterLab documents around the notebook: one browser tab, several Lab tabs.

    def open_document(self, path: str, mode: str = "tab-after") -> None:
        """Open `path` (relative to the notebook folder) in this page's Lab, placed by Lumino's
        `mode` relative to the notebook ("tab-after": behind it in its dock area, "split-right")."""
        self.page.evaluate(
            f"""async ([path, mode, notebook]) => {{ const find = {_DOCUMENT};
                 await window.jupyterapp.commands.execute('docmanager:open', {{path, options: {{mode, ref: find(notebook).id}}}}); }}""",
            [path, mode, self.name],
        )
        self.page.wait_for_function(
            f"(path) => ({_DOCUMENT})(path).isVisible", arg=path, polling=100, timeout=30_000
        )

    def activate(self, path: str) -> float:
        """Bring the Lab tab of `path` to the front of its dock area; the test-clock instant of the switch."""
        return self._lab_change(f"(path) => {{ window.jupyterapp.shell.activateById(({_DOCUMENT})(path).id); }}", path)

    def dock(self, path: str, mode: str, ref: str) -> float:
        """Move the Lab tab of `path` to `mode` relative to the document `ref` (e.g. "split-right",
        "tab-after"); the test-clock instant of the move."""
        return self._lab_change(
            f"""([path, mode, ref]) => {{ const find = {_DOCUMENT};
                 window.jupyterapp.shell.add(find(path), 'main', {{mode, ref: find(ref).id}}); }}""",
            [path, mode, ref],
        )

    def shown_in_lab(self, path: str) -> bool:
        """Is the document's Lab panel on screen (Lumino's own view, not the widget's)?"""
        return bool(self.page.evaluate(f"(path) => ({_DOCUMENT})(path).isVisible", path))

    def _lab_change(self, script: str, arg: Any) -> float:
        # Lumino shows and hides synchronously inside the call: its middle is the instant.
        before = time.monotonic()
        self.page.evaluate(script, arg)
        return (before + time.monotonic()) / 2

    # visibility: minimising the page's own window hides it (fires visibilitychange in ~40 ms)
    def _window_state(self, state: str) -> None:
        cdp = self.chromium.context.new_cdp_session(self.page)
        try:
            window = cdp.send("Browser.getWindowForTarget")["windowId"]
            cdp.send("Browser.setWindowBounds", {"windowId": window, "bounds": {"windowState": state}})
        finally:
            cdp.detach()

    def hide(self) -> float:
        """Hide the page; returns time.monotonic() once the page says it is hidden."""
        self._window_state("minimized")
        self.page.wait_for_function("() => document.visibilityState === 'hidden'", polling=100)
        return time.monotonic()

    def show(self) -> float:
        self._window_state("normal")
        self.page.bring_to_front()
        self.page.wait_for_function("() => document.visibilityState === 'visible'", polling=100)
        return time.monotonic()

    def visibility(self) -> str:
        return str(self.page.evaluate("document.visibilityState"))

    def reload(self) -> None:
        self.page.reload()
        self.page.bring_to_front()
        self.wait_ready()

    def widget_text(self, timeout: float = 30) -> str:
        """The text of the first rendered Timeback widget view."""
        locator = self.page.locator(".tbnb").first
        locator.wait_for(timeout=timeout * 1000)
        return locator.inner_text()

    def screenshot_widget(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.locator(".tbnb").first.screenshot(path=str(path))

    def set_theme(self, theme: str) -> None:
        """Switch the JupyterLab theme ("JupyterLab Light" / "JupyterLab Dark") and wait for it."""
        light = "true" if "Light" in theme else "false"
        self.page.evaluate("(t) => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme)
        self.page.wait_for_function(f"() => document.body.dataset.jpThemeLight === '{light}'", polling=100)
        self.page.wait_for_timeout(300)  # the theme's CSS variables apply once its stylesheet loads

    def contrast(self, selector: str) -> float:
        """WCAG contrast ratio of an element's text colour against its own background colour."""
        return float(self.page.evaluate(_CONTRAST, selector))

    def close(self) -> None:
        if self.owns_page:
            with contextlib.suppress(Exception):
                self.page.close()
        self.server.shutdown_sessions(self.name)


@contextlib.contextmanager
def running(*parts: JupyterServer | Chromium) -> Iterator[None]:
    """Start the parts in order, stop them in reverse, whatever happens in between."""
    started: list[JupyterServer | Chromium] = []
    try:
        for part in parts:
            started.append(part)
            part.start()
        yield
    finally:
        for part in reversed(started):
            part.stop()


# --- the tracking tests: cell sources, ground truth, checks ----------------------------------------


def start_source(run_id: str, **options: Any) -> str:
    """Cell source that starts the tracked activity of a browser test (the widget shows itself)."""
    extra = "".join(f", {key}={value!r}" for key, value in options.items())
    return (
        "import json, time, timeback_nb\n"
        "activity = timeback_nb.start('week-3', 'Linear functions', {'subject': 'Math', 'grade': 8}, "
        f"run_id={run_id!r}{extra})"
    )


def end_source(metrics: Mapping[str, Any] | None = None) -> str:
    """Cell source that ends the activity and prints the kernel's monotonic clock at the call
    (the same clock as the test's `time.monotonic()`: one machine)."""
    return f"ended_at = time.monotonic()\nactivity.end({'' if metrics is None else repr(dict(metrics))})\nprint('OUT', ended_at)"


# Once the run is finished (every record handed on), a flush delivers all of it.
FINISHED_SOURCE = (
    "done = activity.finished\ncounts = timeback_nb.flush()\n"
    "print('OUT', json.dumps({'finished': done, 'elapsed_ms': activity.elapsed_ms, 'state': activity.state, "
    "'flush': counts}))"
)


@dataclass
class VisibleTime:
    """The test's own account of when at least one page was visible: the ground truth."""

    since: dict[str, float] = field(default_factory=dict)
    spans: list[tuple[float, float]] = field(default_factory=list)

    def visible(self, page: str, at: float) -> None:
        self.since.setdefault(page, at)

    def hidden(self, page: str, at: float) -> None:
        start = self.since.pop(page, None)
        if start is not None:
            self.spans.append((start, at))

    def total(self, end: float) -> float:
        """Seconds covered by the union of every page's visible spans, up to `end`."""
        spans = sorted([*self.spans, *((start, end) for start in self.since.values())])
        total, reach = 0.0, float("-inf")
        for start, stop in spans:
            stop = min(stop, end)
            if stop > max(start, reach):
                total += stop - max(start, reach)
            reach = max(reach, stop)
        return total


TOLERANCE_S = 1.0  # design §8: error <= 1 s over a session in a real browser
ACCURACY_LOG = Path(__file__).parent / "artifacts" / "accuracy.jsonl"


def assert_active_time(events: list[Mapping[str, Any]], truth: VisibleTime, ended: float, kernel: Mapping[str, Any]) -> None:
    """Σ active of the run's events is the ground truth within TOLERANCE_S (logged for the README),
    and exactly what the kernel says it counted."""
    measured, expected = spent_seconds(events), truth.total(ended)
    ACCURACY_LOG.parent.mkdir(parents=True, exist_ok=True)
    with ACCURACY_LOG.open("a") as log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        log.write(json.dumps({"test": test, "measured_s": round(measured, 3), "truth_s": round(expected, 3)}) + "\n")
    assert abs(measured - expected) <= TOLERANCE_S, f"active {measured:.3f} s, ground truth {expected:.3f} s"
    assert abs(kernel["elapsed_ms"] / 1000 - measured) < 0.002, f"kernel counted {kernel['elapsed_ms']} ms"


def begin(
    open_notebook: Callable[..., NotebookPage], ui: str = "lab", server: JupyterServer | None = None, **options: Any
) -> tuple[NotebookPage, str, VisibleTime]:
    """Open a notebook, start the activity, wait for the widget; the truth clock starts then."""
    run_id = str(uuid.uuid4())
    where = {} if server is None else {"server": server}
    nb = open_notebook([start_source(run_id, **options)], ui=ui, **where)
    nb.run_cell(0)
    nb.widget_text()
    truth = VisibleTime()
    truth.visible("a", time.monotonic())
    return nb, run_id, truth


# The widget's own view (not the docked copy of its clock), and the state the kernel last sent it.
WIDGET_VIEW = "document.querySelector('.tbnb:not(.tbnb-dock)')"


def wait_state(nb: NotebookPage, state: str, timeout_s: float = 5) -> None:
    """Wait until the widget shows the kernel's `state` (the reply to the page's own report)."""
    nb.page.wait_for_function(f"() => {WIDGET_VIEW}?.dataset.state === '{state}'", polling=100, timeout=timeout_s * 1000)


def begin_behind(nb: NotebookPage, other: str, truth: VisibleTime, page: str = "a") -> None:
    """Start the activity (cell 0) while the lesson sits behind the document `other` (a file in
    the notebook folder, opened in front), then bring the lesson to the front: the truth clock
    starts at that switch, an instant of the test's own, not at some later sight of the widget."""
    nb.open_document(other)
    nb.run_cell(0, activate=False)
    nb.page.wait_for_function(f"() => !!{nb._panel}?.node.querySelector('.tbnb')", polling=100, timeout=30_000)
    wait_state(nb, "hidden")
    truth.visible(page, nb.activate(nb.name))


def finish(nb: NotebookPage, metrics: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    """End the activity from a cell and wait until its last records are delivered.

    Returns the instant `end()` was called (test clock) and the kernel's final numbers. The
    final window may close after `end()` returns (it waits for the page's next report), so
    this polls `activity.finished` from fresh cells, leaving the kernel idle in between.
    """
    index = nb.add_cell(end_source(metrics))
    nb.run_cell(index)
    ended = float(nb.wait_output(index, "OUT ", timeout=30).split("OUT ", 1)[1])
    deadline = time.monotonic() + 20
    while True:
        kernel = json.loads(nb.run(FINISHED_SOURCE))
        if kernel["finished"]:
            return ended, kernel
        if time.monotonic() > deadline:
            raise TimeoutError(f"the activity did not finish: {kernel}")
        time.sleep(0.3)


def run_events(server: JupyterServer, run_id: str) -> list[dict[str, Any]]:
    """The run's delivered events, in delivery order."""
    return [e for e in server.events() if e.get("session") == f"urn:uuid:{run_id}"]


def spent_seconds(events: list[Mapping[str, Any]], kind: str = "active") -> float:
    """Σ seconds of one kind ("active" or "inactive") over the TimeSpentEvents given."""
    return sum(
        item["value"] for e in events if e["type"] == "TimeSpentEvent"
        for item in e["generated"]["items"] if item["type"] == kind
    )
