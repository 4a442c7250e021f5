"""`timeback-nb relay` (also `python -m timeback_nb.relay`, the command a hub starts)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import TimebackError
from ..outbox import MAX_BATCH_SIZE
from .retention import DEFAULT_RETENTION_DAYS, RETENTION_DAYS_RANGE
from .service import DEFAULT_BASE_PATH, RelayOptions

PROG = "timeback-nb relay"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Timeback relay: takes the SDK's heartbeat and submit requests from kernels, "
        "identifies the student from the request's token, commits the Caliper event durably and "
        "delivers it with the credentials only this process holds (TIMEBACK_CLIENT_ID / "
        "TIMEBACK_CLIENT_SECRET). As a JupyterHub service it listens on JUPYTERHUB_SERVICE_URL "
        "under JUPYTERHUB_SERVICE_PREFIX and asks the hub whose token it is.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address outside JupyterHub (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port outside JupyterHub (8765)")
    parser.add_argument("--base-path", default=DEFAULT_BASE_PATH, help=f"route prefix ({DEFAULT_BASE_PATH})")
    parser.add_argument("--store", type=Path, help="the relay's SQLite store (default TIMEBACK_NB_STORE)")
    parser.add_argument("--tokens", type=Path, help='standalone: JSON {"<token>": {"name": "alice"}}')
    parser.add_argument("--users", type=Path, help='JSON {"alice": {"email": "...", "id": "<sourcedId>"}}')
    parser.add_argument("--email-template", help='hub name → email, e.g. "{name}@school.edu"')
    parser.add_argument(
        "--batch", type=_positive, default=100, metavar="N",
        help=f"events per envelope to Caliper, 1 to {MAX_BATCH_SIZE} (100; a rejected batch is split)",
    )
    parser.add_argument(
        "--max-parallel", type=_positive, default=2, metavar="K",
        help="a student's active time is at most K × wall time across runs (2: a split view)",
    )
    low, high = RETENTION_DAYS_RANGE
    parser.add_argument(
        "--retention-days", default=DEFAULT_RETENTION_DAYS, metavar="DAYS",  # checked by Relay: a ConfigError
        help=f"delivered events and accepted windows are pruned after DAYS ({low:g} to {high:g}, {DEFAULT_RETENTION_DAYS:g}); "
        "windows and completions older than that are refused",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = RelayOptions(
        host=args.host, port=args.port, base_path=args.base_path, store=args.store, tokens=args.tokens,
        users=args.users, email_template=args.email_template, batch=args.batch, max_parallel=args.max_parallel,
        retention_days=args.retention_days, environ=dict(os.environ),
    )
    try:
        from .app import serve
        from .service import Relay

        relay = Relay(options)
    except ImportError as exc:
        print(f"{PROG}: {exc.name} is missing: pip install 'timeback-nb[relay]'", file=sys.stderr)
        return 1
    except TimebackError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        relay.start()  # the writer process opens the store: its errors are the user's too
    except TimebackError as exc:
        relay.stop()
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    serve(relay)
    return 0
