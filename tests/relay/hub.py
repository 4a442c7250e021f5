"""A real JupyterHub for the relay's end-to-end tests: DummyAuthenticator,
SimpleLocalProcessSpawner, the relay as a managed service (`python -m timeback_nb.relay`)
delivering to the loopback Caliper stand-in, and a `tester` service token to drive the REST
API (see the project's jupyterhub-testing reference for what was measured to work)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nbformat

from ..browser.harness import MARKER, _tagged_pids, free_port, wait_until
from ..loopback import LoopbackServer
from .harness import CONFIG, ROOT, caliper_env

PROXY = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
SERVICE = "timeback"
EMAIL_TEMPLATE = "{name}@school.edu"

_HUB_CONFIG = """
import sys
c = get_config()  # noqa: F821
settings = {settings!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = settings["homes"] + "/{{username}}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = settings["server_args"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = dict(settings["kernel_env"])
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = settings["port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = settings["hub_port"]
c.JupyterHub.db_url = "sqlite:///" + settings["home"] + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = settings["home"] + "/cookie_secret"
c.JupyterHub.pid_file = settings["home"] + "/jupyterhub.pid"
c.ConfigurableHTTPProxy.command = [settings["proxy"]]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d" % settings["proxy_api_port"]
c.ConfigurableHTTPProxy.pid_file = settings["home"] + "/proxy.pid"
c.JupyterHub.services = [
    {{"name": "{service}", "url": "http://127.0.0.1:%d" % settings["relay_port"],
      "command": [sys.executable, "-m", "timeback_nb.relay", "--store", settings["home"] + "/relay.sqlite",
                  "--email-template", "{template}", "--log-level", "INFO"],
      "environment": settings["relay_env"]}},
    {{"name": "tester", "api_token": settings["tester_token"]}},
]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "admin:servers", "tokens"], "services": ["tester"]}},
]
"""


@dataclass
class Hub:
    """`python -m jupyterhub` in a session of its own, under `home`; stopped by its PID and tag."""

    home: Path
    caliper: LoopbackServer
    port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    relay_port: int = field(default_factory=free_port)
    tester_token: str = field(default_factory=lambda: secrets.token_hex(32))
    tag: str = field(default_factory=lambda: secrets.token_hex(8))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def relay_url(self) -> str:
        """The relay's adapter base through the hub's proxy (what kernels get)."""
        return f"{self.url}/services/{SERVICE}/api/timeback"

    def homes(self) -> Path:
        return self.home / "homes"

    def start(self) -> Hub:
        self.homes().mkdir(parents=True, exist_ok=True)
        config = self.home / "timeback.config.json"
        config.write_text(json.dumps(CONFIG))
        pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        common = {"PYTHONPATH": pythonpath, MARKER: self.tag}
        kernel_env = {
            **common,
            "TIMEBACK_RELAY_URL": self.relay_url,
            "TIMEBACK_CONFIG": str(config),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        relay_env = {**common, **caliper_env(self.caliper), "TIMEBACK_CONFIG": str(config)}
        settings = {
            "home": str(self.home), "homes": str(self.homes()), "port": self.port, "hub_port": self.hub_port,
            "proxy_api_port": self.proxy_api_port, "relay_port": self.relay_port, "proxy": str(PROXY),
            "tester_token": self.tester_token, "kernel_env": kernel_env, "relay_env": relay_env,
            # window.jupyterapp, through which the browser tests drive Lab
            "server_args": ["--LabApp.expose_app_in_browser=True", *(["--allow-root"] if os.getuid() == 0 else [])],
        }
        (self.home / "jupyterhub_config.py").write_text(
            _HUB_CONFIG.format(settings=settings, service=SERVICE, template=EMAIL_TEMPLATE)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMEBACK_", "JUPYTERHUB_", "JUPYTER", "IPYTHON"))}
        env.update(common)
        log = open(self.home / "hub.log", "wb")  # noqa: SIM115 (the hub keeps it)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.home / "jupyterhub_config.py")],
            cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_until(self._ready, 90, f"JupyterHub (log: {self.home / 'hub.log'})", interval=0.2)
        wait_until(self._relay_ready, 60, "the relay service behind the proxy", interval=0.2)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"JupyterHub exited: {(self.home / 'hub.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/hub/api/", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def _relay_ready(self) -> bool:
        try:
            return httpx.get(f"{self.relay_url}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.tester_token}"}
        return httpx.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=60, **kwargs)

    def start_server(self, user: str) -> dict[str, Any]:
        """Create `user` and start their server; returns the server model once it is ready."""
        self.api("POST", f"/users/{user}")
        self.api("POST", f"/users/{user}/server")

        def ready() -> dict[str, Any] | None:
            model = self.api("GET", f"/users/{user}").json()
            server = model.get("servers", {}).get("")
            return server if server and server.get("ready") else None

        return wait_until(ready, 120, f"{user}'s server", interval=0.3)

    def server_token(self, user: str) -> str:
        """The token the hub gave `user`'s server, read from its process environment (what
        every kernel of that server inherits)."""
        pid = int(self.api("GET", f"/users/{user}").json()["servers"][""]["state"]["pid"])
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        return environ["JUPYTERHUB_API_TOKEN"]

    def write_notebook(self, user: str, cells: list[str], name: str) -> str:
        folder = self.homes() / user
        folder.mkdir(parents=True, exist_ok=True)
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nbformat.write(nb, folder / name)
        return name

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # the hub stops its servers and services
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pid in _tagged_pids(self.tag):  # servers, kernels and the relay live in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pidfile in ("proxy.pid",):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int((self.home / pidfile).read_text().strip()), signal.SIGKILL)
        self.process = None


# --- a student in Chromium ----------------------------------------------------------------------


class _HubServerView:
    """What `NotebookPage` needs to know about "its server": one student's server on the hub."""

    def __init__(self, hub: Hub, user: str) -> None:
        self.hub, self.user = hub, user

    def url(self, name: str, ui: str) -> str:
        return f"{self.hub.url}/user/{self.user}/lab/tree/{name}?reset"

    def shutdown_sessions(self, name: str) -> None:
        """The hub stops the servers (and their kernels) at the end of the module."""


def student_page(chromium: Any, hub: Hub, user: str, name: str) -> Any:
    """`user` logs in to the hub in a browser context of their own (their own cookies) and opens
    notebook `name` in JupyterLab; returns a `NotebookPage` on it."""
    from ..browser.harness import NotebookPage

    class StudentPage(NotebookPage):
        def __post_init__(self) -> None:
            context = chromium.browser.new_context()
            self.page = context.new_page()
            self.page.on("dialog", lambda dialog: dialog.accept())
            self.page.goto(f"{hub.url}/hub/login")
            self.page.fill("#username_input", user)
            self.page.fill("#password_input", "any password: DummyAuthenticator")
            self.page.click("#login_submit")
            self.page.wait_for_url(f"**/user/{user}/**", timeout=120_000)
            self.open()

    return StudentPage(chromium, _HubServerView(hub, user), name, "lab")
