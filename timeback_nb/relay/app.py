"""The relay's HTTP surface on tornado (what JupyterHub and Jupyter Server run on):
`POST <base>/activity/heartbeat`, `POST <base>/activity/submit`, `GET <base>/health`.

The handlers only move bytes between HTTP and `service.Relay`; `serve` runs the loop until
SIGTERM / SIGINT, then stops taking requests, lets the writer finish its group and stops the
sender (what is queued stays queued for the next start).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

from .service import Relay, Reply

log = logging.getLogger(__name__)

__all__ = ["make_app", "serve"]


class _RelayHandler(RequestHandler):
    relay: Relay

    def initialize(self, relay: Relay) -> None:
        self.relay = relay

    def check_xsrf_cookie(self) -> None:
        """Token-authenticated JSON API: no cookies, so no XSRF."""

    def compute_etag(self) -> None:
        return None

    def _send(self, reply: Reply) -> None:
        status, payload = reply
        self.set_status(status)
        if payload is None:
            self.finish()
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(payload))


class HeartbeatHandler(_RelayHandler):
    async def post(self) -> None:
        self._send(await self.relay.heartbeat(self.request.headers.get("Authorization"), self.request.body))


class SubmitHandler(_RelayHandler):
    async def post(self) -> None:
        self._send(await self.relay.submit(self.request.headers.get("Authorization"), self.request.body))


class HealthHandler(_RelayHandler):
    async def get(self) -> None:
        self._send(await self.relay.health())


def make_app(relay: Relay) -> Application:
    base = relay.base_path
    routes: list[Any] = [
        (f"{base}/activity/heartbeat", HeartbeatHandler, {"relay": relay}),
        (f"{base}/activity/submit", SubmitHandler, {"relay": relay}),
        (f"{base}/health", HealthHandler, {"relay": relay}),
    ]
    # Per-request access logs would cost more than the request at thousands per second.
    return Application(routes, log_function=_log_request)


def _log_request(handler: RequestHandler) -> None:
    status = handler.get_status()
    if status >= 500:
        log.warning("%d %s %s", status, handler.request.method, handler.request.path)
    elif status >= 400:
        log.info("%d %s %s", status, handler.request.method, handler.request.path)


async def _serve(relay: Relay) -> None:
    host, port = relay.address
    server = HTTPServer(make_app(relay), max_body_size=64 * 1024, idle_connection_timeout=300)
    server.listen(port, address=host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("timeback relay (%s) listening on http://%s:%d%s", relay.tokens.mode, host, port, relay.base_path)
    print(f"timeback relay ({relay.tokens.mode}) on http://{host}:{port}{relay.base_path}", flush=True)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
    await relay.close()


def serve(relay: Relay) -> None:
    """Run a started relay until SIGTERM or SIGINT, then stop it."""
    try:
        asyncio.run(_serve(relay))
    finally:
        relay.stop()
