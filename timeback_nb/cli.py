"""The ``timeback-nb`` command: what is configured, what was sent, queued or rejected, the demo.

For the platform operator. Every command reads the same environment as the kernel
(`Settings.from_env`) and the same SQLite store; none prints a secret, only whether one is set.
Output is plain tables with stable columns (``events --json`` gives the envelopes themselves).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import (
    CONFIG_FILENAME,
    Settings,
    describe,
    find_config,
    load_config,
    no_config_error,
)
from .errors import TimebackError
from .records import results_text
from .store import STATES, Store
from .validation import validate_flush_timeout

__all__ = ["main"]

PROG = "timeback-nb"
DEMO_FILES = ("demo.ipynb", "lesson-linear-functions.ipynb", CONFIG_FILENAME)
DEFAULT_DEMO_DIR = "timeback-demo"
DEFAULT_DEMO_PORT = 8888
# A wheel carries the demo files as timeback_nb/demo/ (pyproject force-include); a checkout
# (editable install, sdist) has them in notebooks/.
_DEMO_SOURCES = (Path(__file__).resolve().parent / "demo", Path(__file__).resolve().parent.parent / "notebooks")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``timeback-nb``; returns the exit status (0 fine, 1 a problem, 2 bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["relay"]:  # the relay parses its own options (and its own --help)
        from .relay.cli import main as relay_main  # the relay extra: only this command needs it

        return relay_main(argv[1:])
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TimebackError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and deliver what timeback_nb recorded; run the demo.",
        epilog="The store is TIMEBACK_NB_STORE (default: a file in the user data directory); "
        "the environment is read as the kernel reads it.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check",
        help="is this setup usable? config, sensors, course ids, transport, credentials",
        description="Show the config file, each course's sensor and course id per environment, "
        "the transport, the store and whether credentials are set (never their values). "
        "Exit status 0 when usable, 1 otherwise.",
    )
    check.set_defaults(handler=_check)

    runs = commands.add_parser("runs", help="the runs in the store, newest first")
    runs.set_defaults(handler=_runs)

    events = commands.add_parser(
        "events",
        help="what was sent, is queued or was rejected, newest first",
        description="Events in the outbox, newest first; rejected ones with the reason.",
    )
    events.add_argument("--json", action="store_true", help="print the envelopes, one per line")
    events.add_argument("--state", choices=STATES, help="only events in this state")
    events.add_argument("--limit", type=_non_negative_int, metavar="N", help="at most N events")
    events.set_defaults(handler=_events)

    flush = commands.add_parser(
        "flush",
        help="deliver what is queued now",
        description="Deliver the queued events now; exit status 1 if some are still queued.",
    )
    flush.add_argument(
        "--timeout", type=_flush_timeout, default=10.0, metavar="S", help="give up after S seconds (10)"
    )
    flush.set_defaults(handler=_flush)

    demo = commands.add_parser(
        "demo",
        help="JupyterLab on the demo notebook, in local mode",
        description="Copy the demo notebooks and their config into a folder (files already "
        "there are kept) and start JupyterLab on it with TIMEBACK_NB_TRANSPORT=local: "
        "no account needed, events stay in the store.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path(DEFAULT_DEMO_DIR),
        help=f"working folder (default ./{DEFAULT_DEMO_DIR})",
    )
    demo.add_argument("--no-browser", action="store_true", help="do not open a browser")
    demo.add_argument(
        "--port", type=int, default=DEFAULT_DEMO_PORT, help=f"port (default {DEFAULT_DEMO_PORT})"
    )
    demo.set_defaults(handler=_demo)

    # Listed for --help; main() hands `relay ...` to timeback_nb.relay before parsing.
    commands.add_parser("relay", help="the relay service for JupyterHub: holds the credentials, kernels post to it")
    return parser


def _flush_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--timeout: expected a number of seconds, got {text!r}") from None
    try:
        return validate_flush_timeout(value, "--timeout")
    except TimebackError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


# --- output helpers ---------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; the header row in capitals."""
    cells = [[str(h).upper() for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells
    )


def _utc_second(epoch_s: float) -> str:
    """An outbox timestamp in UTC, to the second, like the event times."""
    moment = _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _open_existing_store(settings: Settings) -> Store | None:
    """The store, or None (with a note) when it does not exist yet; reading never creates it."""
    if not settings.store_path.exists():
        print(f"No store yet at {settings.store_path} (nothing recorded with this TIMEBACK_NB_STORE).")
        return None
    return Store(settings.store_path)


# --- check ------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    notes: list[str] = []
    try:
        settings: Settings | None = Settings.from_env()
    except TimebackError as exc:
        settings = None
        problems.append(str(exc))

    try:
        path = find_config()
    except TimebackError as exc:
        path = None
        problems.append(str(exc))
        print(f"config        {exc}")
    else:
        if path is None:
            problems.append(str(no_config_error()))
            print(f"config        not found in {Path.cwd()} or its parents, and TIMEBACK_CONFIG is not set")
        else:
            origin = "TIMEBACK_CONFIG" if os.environ.get("TIMEBACK_CONFIG") else "working directory or a parent"
            print(f"config        {path} (from {origin})")

    config = None
    if path is not None:
        try:
            # As the kernel loads it: start-up checks for the env in use; the other env's
            # problems show up below as notes.
            config = load_config(path, settings.env if settings is not None else None)
        except TimebackError as exc:
            problems.append(str(exc))

    if settings is not None:
        _print_settings(settings, notes)
    if config is not None:
        print(f"app name      {config.name}")
    if config is not None and settings is not None:
        rows = describe(config, settings)
        print()
        print(
            _table(
                ("course", "env", "sensor", "course id", "problem"),
                [
                    (
                        r["course"],
                        r["env"] + (" *" if r["active"] else ""),
                        r["sensor"] or "none",
                        r["course_id"],
                        "" if r["problem"] is None else "yes" if r["active"] else "other env",
                    )
                    for r in rows
                ],
            )
        )
        print(f"(* = the environment in use, TIMEBACK_ENV={settings.env})")
        if not config.courses:
            problems.append(f"{config.path}: no courses configured; add one to \"courses\"")
        for r in rows:
            if r["problem"] is not None:
                (problems if r["active"] else notes).append(r["problem"])

    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    if problems:
        for problem in dict.fromkeys(problems):
            print(f"problem: {problem}", file=sys.stderr)
        return 1
    print("ok: usable")
    return 0


def _print_settings(settings: Settings, notes: list[str]) -> None:
    print(f"environment   {settings.env}")
    if settings.transport == "local":
        print("transport     local: events are kept in the store, nothing is sent")
    elif settings.transport == "outbox":
        print("transport     outbox: events stay queued for a trusted `timeback-nb flush` to deliver")
    elif settings.transport == "relay":
        print(f"transport     relay: {settings.relay_url} (POST /activity/heartbeat, /activity/submit)")
        if settings.relay_token_source == "JUPYTERHUB_API_TOKEN":
            token = "JUPYTERHUB_API_TOKEN, this server's hub token (sent as 'Authorization: token ...')"
        else:
            token = "TIMEBACK_RELAY_TOKEN (sent as 'Authorization: Bearer ...')"
        print(f"relay token   {token}")
    else:
        print(f"transport     caliper: {settings.caliper_url}")
        print(f"token URL     {settings.auth_url}")
    status = "exists" if settings.store_path.exists() else "not created yet"
    print(f"store         {settings.store_path} ({status})")
    present = {True: "present", False: "absent"}
    print(
        f"credentials   TIMEBACK_CLIENT_ID {present[bool(settings.client_id)]}, "
        f"TIMEBACK_CLIENT_SECRET {present[bool(settings.client_secret)]}"
        + (" (relay mode needs none: the relay holds them)" if settings.transport == "relay" else "")
    )
    if settings.transport == "relay":
        if settings.client_secret:
            notes.append(
                "TIMEBACK_CLIENT_SECRET is set, but relay mode does not use it; remove it from the "
                "kernels' environment (student code can read it there)"
            )
        print("user          the relay identifies the student from the token (TIMEBACK_USER_* are not used)")
        return
    email = settings.user_email
    if settings.user_id:
        user = f"TIMEBACK_USER_ID {settings.user_id} (the OneRoster sourcedId, used as given)"
        if email:
            user += f", TIMEBACK_USER_EMAIL {email}"
    elif email and settings.transport == "local":
        user = f"TIMEBACK_USER_EMAIL {email} (local mode: no OneRoster look-up)"
    elif email:
        remembered = None
        if settings.store_path.exists():
            with Store(settings.store_path) as store:
                remembered = store.cached_user_id(email, settings.env)
        how = (
            f"sourcedId {remembered}, remembered from an earlier look-up"
            if remembered
            else f"sourcedId to be looked up in OneRoster ({settings.oneroster_url}) on first use"
        )
        user = f"TIMEBACK_USER_EMAIL {email} ({how})"
    elif settings.transport == "local":
        user = "not set: local mode records as <login>@localhost, or start(user=...)"
    else:
        user = "not set: every start() must pass user={'email': ...}"
        notes.append("no TIMEBACK_USER_EMAIL or TIMEBACK_USER_ID: every start() must pass user=...")
    print(f"user          {user}")


# --- runs -------------------------------------------------------------------------------------


def _runs(args: argparse.Namespace) -> int:
    store = _open_existing_store(Settings.from_env())
    if store is None:
        return 0
    with store:
        runs = store.runs()
    if not runs:
        print("No runs yet.")
        return 0
    print(
        _table(
            ("run id", "activity", "course", "user", "started", "ended"),
            [
                (
                    r["run_id"],
                    r["activity_id"],
                    r["course_key"],
                    r["user_key"],
                    r["started_at"],
                    r["ended_at"] or "open",
                )
                for r in runs
            ],
        )
    )
    return 0


# --- events -----------------------------------------------------------------------------------


def _events(args: argparse.Namespace) -> int:
    store = _open_existing_store(Settings.from_env())
    if store is None:
        return 0
    with store:
        rows = list(reversed(store.events(limit=args.limit, state=args.state)))
    if args.json:
        for row in rows:
            body = row["body"]
            # One envelope per line; the stored body is what was sent, so keep it as it is.
            print(body if "\n" not in body else json.dumps(json.loads(body), ensure_ascii=False))
        return 0
    if not rows:
        which = f"{args.state} " if args.state else ""
        print(f"No {which}events.")
        return 0
    print(
        _table(
            ("seq", "state", "written", "event", "activity", "details", "run", "reason"),
            [_event_row(row) for row in rows],
        )
    )
    return 0


def _event_row(row: Mapping[str, Any]) -> tuple[Any, ...]:
    kind, activity, details = summarize(row["body"])
    run = (row["run_id"] or "")[:8] or "-"
    reason = row["reason"] if row["state"] != "delivered" and row["reason"] else ""
    return (row["seq"], row["state"], _utc_second(row["created"]), kind, activity, details, run, reason)


def summarize(body: str) -> tuple[str, str, str]:
    """(event kind, activity name, the numbers) of one stored envelope (or, in relay mode, an
    adapter heartbeat or submit body), for a table row."""
    adapter = _summarize_adapter(body)
    if adapter is not None:
        return adapter
    try:
        event = json.loads(body)["data"][0]
        items = event.get("generated", {}).get("items", [])
        values = {item["type"]: item["value"] for item in items}
        activity = str(event.get("object", {}).get("activity", {}).get("name", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "?", "", "(not a Caliper envelope)"
    if event.get("type") == "TimeSpentEvent":
        details = f"active {values.get('active', 0)} s"
        if "inactive" in values:
            details += f", inactive {values['inactive']} s"
        return "time", activity, details
    if event.get("type") == "ActivityEvent":
        pct = (event.get("generated", {}).get("extensions") or {}).get("pctCompleteApp")
        metrics = {**values, **({"pctComplete": pct} if pct is not None else {})}
        return "completed", activity, results_text(metrics)
    return str(event.get("type")), activity, ""


def _summarize_adapter(body: str) -> tuple[str, str, str] | None:
    from .adapter import HEARTBEAT, route_of

    route = route_of(body) if body.startswith('{"id":') else None
    if route is None:
        return None
    parsed = json.loads(body)
    name = str(parsed.get("name", ""))
    if route == HEARTBEAT:
        details = f"active {parsed['elapsedMs'] / 1000:g} s"
        if parsed.get("pausedMs"):
            details += f", inactive {parsed['pausedMs'] / 1000:g} s"
        return "time", name, details
    metrics = parsed.get("metrics") if isinstance(parsed.get("metrics"), dict) else {}
    parts = [f"xp {metrics['xpEarned']}"] if "xpEarned" in metrics else []
    if "totalQuestions" in metrics:
        parts.append(f"{metrics.get('correctQuestions')}/{metrics['totalQuestions']} correct")
    if "masteredUnits" in metrics:
        parts.append(f"mastered {metrics['masteredUnits']}")
    if parsed.get("pctComplete") is not None:
        parts.append(f"{parsed['pctComplete']}% complete")
    return "completed", name, ", ".join(parts)


# --- flush ------------------------------------------------------------------------------------


def _flush(args: argparse.Namespace) -> int:
    from . import api  # the delivery machinery: only this command needs it

    counts = api.flush(timeout=args.timeout)
    print(
        f"delivered {counts['delivered']}, queued {counts['queued']}, rejected {counts['rejected']}"
    )
    if counts["queued"]:
        print(
            f"{counts['queued']} event(s) still queued; `{PROG} events --state queued` shows why",
            file=sys.stderr,
        )
        return 1
    return 0


# --- demo -------------------------------------------------------------------------------------


def demo_source() -> Path | None:
    """The folder the demo files are copied from: the wheel's copy, else the checkout's."""
    return next((d for d in _DEMO_SOURCES if all((d / n).is_file() for n in DEMO_FILES)), None)


def _demo(args: argparse.Namespace) -> int:
    source = demo_source()
    if source is None:
        print(
            f"{PROG}: the demo notebooks are not in {' or '.join(map(str, _DEMO_SOURCES))}; "
            "run the demo from a checkout (scripts/demo.sh)",
            file=sys.stderr,
        )
        return 1
    if importlib.util.find_spec("jupyterlab") is None:
        print(f"{PROG}: JupyterLab is not installed: pip install 'timeback-nb[demo]'", file=sys.stderr)
        return 1

    folder: Path = args.dir.expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        target = folder / name
        if target.exists():
            print(f"kept   {target}")
        else:
            shutil.copyfile(source / name, target)
            print(f"copied {target}")

    env = dict(os.environ, TIMEBACK_NB_TRANSPORT="local")
    # The kernel starts in `folder` and finds the config there; an outer TIMEBACK_CONFIG
    # would point it elsewhere.
    env.pop("TIMEBACK_CONFIG", None)
    # The demo's events stay apart from any real ones, in a hidden folder of the demo (the
    # file browser does not show it), unless TIMEBACK_NB_STORE says otherwise.
    if not env.get("TIMEBACK_NB_STORE", "").strip():
        env["TIMEBACK_NB_STORE"] = str(folder / ".timeback" / "store.sqlite")
    store_path = Settings.from_env(env).store_path
    # Our own token (or the user's JUPYTER_TOKEN), so the address printed below logs in. Passed
    # in the environment, not on the command line, where `ps` would show it.
    env["JUPYTER_TOKEN"] = env.get("JUPYTER_TOKEN") or secrets.token_urlsafe(24)
    server = f"http://127.0.0.1:{args.port}"
    notebook_url = f"{server}/lab/tree/demo.ipynb?token={env['JUPYTER_TOKEN']}"

    command = [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.root_dir={folder}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={args.port}",
        "--ServerApp.port_retries=0",
        "--LabApp.default_url=/lab/tree/demo.ipynb",
    ]
    if args.no_browser:
        command.append("--no-browser")  # else JupyterLab opens the notebook when a browser exists
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # containers run as root; Jupyter refuses without it
    afterwards = "See what was recorded (paste into another terminal):\n\n" + "\n".join(
        f"    {line}" for line in demo_commands(store_path, folder / CONFIG_FILENAME)
    )

    def ready() -> None:
        print(
            f"\nThe demo is running. Open the notebook (the address carries its login token):\n\n"
            f"    {notebook_url}\n\n"
            f"Local mode: events go to {store_path}; nothing leaves this machine.\n"
            f"{afterwards}\n\nStop with Ctrl-C.\n",
            flush=True,
        )

    print(f"\nStarting JupyterLab on {folder} ...", flush=True)
    status = _run_jupyterlab(command, folder, env, ready_url=f"{server}/api/status", on_ready=ready)
    print(f"\n{afterwards}")
    return status


def demo_commands(store_path: Path, config_path: Path) -> list[str]:
    """The follow-up commands the demo prints: whole command lines that work when pasted
    anywhere (this environment's `timeback-nb` by its full path, the demo's store and config)."""
    installed = Path(sys.executable).parent / PROG
    program = shlex.quote(str(installed)) if os.access(installed, os.X_OK) else f"{shlex.quote(sys.executable)} -m timeback_nb.cli"
    store = f"TIMEBACK_NB_STORE={shlex.quote(str(store_path))}"
    return [
        f"{store} {program} runs",
        f"{store} {program} events",
        f"TIMEBACK_CONFIG={shlex.quote(str(config_path))} TIMEBACK_NB_TRANSPORT=local {store} {program} check",
    ]


def _run_jupyterlab(
    command: list[str], cwd: Path, env: Mapping[str, str], *, ready_url: str, on_ready: Callable[[], None]
) -> int:
    """Run JupyterLab in the foreground until it exits; call `on_ready` once it answers.

    Ctrl-C reaches the whole process group: JupyterLab handles it (asks, then shuts its kernels
    down, so their last windows are written). This process only waits for that, instead of
    killing the server from under its kernels.
    """
    process = subprocess.Popen(command, cwd=cwd, env=dict(env))
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no signal handling to change
        previous = None
    try:
        if _wait_until_serving(process, ready_url, env["JUPYTER_TOKEN"]):
            on_ready()
        return process.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, token: str, timeout: float = 120.0) -> bool:
    """True once the server answers `url`; False if it exits first (its own log says why)."""
    import time
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
