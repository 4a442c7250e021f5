"""The relay-ingest baseline: tornado answering 204 to every POST, no work at all, served the
way the relay serves (one HTTPServer, one RequestHandler).

    python -m tests.benchmarks.bare_endpoint PORT
"""

from __future__ import annotations

import asyncio
import sys

from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler


class NoContent(RequestHandler):
    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self) -> None:
        self.set_status(204)
        self.finish()


async def main(port: int) -> None:
    server = HTTPServer(Application([(r"/.*", NoContent)], log_function=lambda handler: None))
    server.listen(port, address="127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
