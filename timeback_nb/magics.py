"""The IPython extension hooks and the ``%timeback`` line magic.

Thin and symmetric, like jupysql's and jupyter-black's: `load_ipython_extension` registers one
`TimebackMagics` per shell (loading twice registers once) and binds the name ``timeback_nb`` in
the notebook when it is free, so the design's two lines (``%load_ext timeback_nb``, then
``timeback_nb.start(...)``) run as written; `unload_ipython_extension` removes exactly that and
puts back whatever ``%timeback`` was before. The magic only turns a line into a
call on the public API (`timeback_nb.start`, `current().pause()`, ...); a `TimebackError`
becomes one line on stderr instead of a traceback, and changes nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from . import api
from .clock import format_elapsed  # the page's own elapsed-time format, so both read alike
from .errors import StateError, TimebackError
from .records import results_text

if TYPE_CHECKING:
    from .activity import Activity

__all__ = [
    "Command",
    "TimebackMagics",
    "describe",
    "load_ipython_extension",
    "parse_line",
    "unload_ipython_extension",
]

MAGIC_NAME = "timeback"
PACKAGE_NAME = "timeback_nb"  # the name %load_ext binds in the user's namespace


class _HelpShown(Exception):
    """``--help`` printed its usage; argparse would otherwise call sys.exit in the kernel."""


class _Parser(MagicArgumentParser):
    """argparse for a magic: errors raise UsageError, ``--help`` prints and returns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("add_help", True)
        # IPython's MagicHelpFormatter writes reST for docstrings; this help is read on screen.
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # `self.prog` is "%timeback start" for a subcommand, so the line says where it failed.
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _HelpShown


def _number(text: str) -> int | float:
    """An int when the text is one (``12`` stays ``12`` on the wire), else a float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


# `%timeback end` option -> (Timeback's metric name, how the value is read, help).
_METRIC_OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "xp": ("xpEarned", _number, "xpEarned (required with results)"),
    "total": ("totalQuestions", int, "totalQuestions (with --correct)"),
    "correct": ("correctQuestions", int, "correctQuestions (with --total)"),
    "mastered": ("masteredUnits", int, "masteredUnits"),
    "pct": ("pctComplete", _number, "pctComplete, 0-100"),
}


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=f"%{MAGIC_NAME}",
        description="Start, inspect, pause, resume and end this kernel's Timeback activity.",
        epilog="Each command has its own help, e.g. `%timeback start --help`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    start = commands.add_parser(
        "start",
        help="start the activity (like timeback_nb.start) and show its widget",
        description="Start this kernel's activity and show its widget. The course is "
        "--subject with --grade, or --code; it may be left out when the config has one course.",
    )
    start.add_argument("id", metavar="ID", help="the activity's slug, e.g. week-3-loops")
    start.add_argument("--name", required=True, help="the activity's display name")
    start.add_argument("--subject", help="course subject, e.g. Math (with --grade)")
    start.add_argument("--grade", type=int, help="course grade, 0-12 (with --subject)")
    start.add_argument("--code", help="course code, e.g. CS-101 (instead of --subject/--grade)")
    start.add_argument(
        "--stateful",
        action="store_true",
        help="continue the earlier, not yet completed run of this activity",
    )
    start.add_argument("--run-id", metavar="UUID", help="use this run id")
    start.add_argument(
        "--interval", type=float, metavar="S", help="heartbeat interval in seconds (default 15)"
    )
    start.add_argument(
        "--abandon-after",
        type=float,
        metavar="S",
        help="stop counting after S seconds with no visible page (default 600)",
    )
    start.add_argument(
        "--idle-after",
        type=float,
        metavar="S",
        help="stop counting from the last input after S seconds without input (default off; 0: off)",
    )
    start.add_argument(
        "--no-time", action="store_true", help="completion only: no time tracking"
    )

    commands.add_parser("status", help="show the running activity", description="Show the "
                        "running activity: run id, state, active time, events waiting.")
    commands.add_parser("pause", help="pause the activity (nothing counts as active)",
                        description="Pause the running activity.")
    commands.add_parser("resume", help="resume a paused activity",
                        description="Resume the paused activity.")

    end = commands.add_parser(
        "end",
        help="end the activity, with results when given",
        description="End the running activity. Without options only the time is sent; with "
        "any option a completion event with these results follows (--xp is then required).",
    )
    for option, (_, read, help_text) in _METRIC_OPTIONS.items():
        end.add_argument(f"--{option}", type=read, metavar="N", help=help_text)
    return parser


@dataclass(frozen=True)
class Command:
    """What one ``%timeback`` line asks for: an action and the keyword arguments of its call."""

    action: str  # "start" | "status" | "pause" | "resume" | "end" | "help"
    kwargs: dict[str, Any] = field(default_factory=dict)


_PARSER = _build_parser()


def parse_line(line: str) -> Command:
    """Parse a ``%timeback`` line; pure. ``--help`` prints usage and gives ``Command("help")``.

    Raises `UsageError` (IPython shows it as one line) for a line argparse refuses.
    """
    try:
        # POSIX quoting, so `--name "Week 3"` is the name Week 3 (IPython's own splitter keeps
        # the quotes).
        # A `# ...` after the command is a comment, as everywhere else in a cell.
        argv = shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"%{MAGIC_NAME}: {exc}") from None
    try:
        args = _PARSER.parse_args(argv)
    except _HelpShown:
        return Command("help")
    if args.command == "start":
        return Command("start", _start_kwargs(args))
    if args.command == "end":
        metrics = {
            metric: getattr(args, option)
            for option, (metric, _, _) in _METRIC_OPTIONS.items()
            if getattr(args, option) is not None
        }
        return Command("end", {"metrics": metrics or None})
    return Command(args.command)


def _start_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`timeback_nb.start` keyword arguments; options not given are left to its defaults."""
    prog = f"%{MAGIC_NAME} start"
    if args.code is not None and (args.subject is not None or args.grade is not None):
        raise UsageError(f"{prog}: give --code, or --subject with --grade, not both")
    if (args.subject is None) != (args.grade is None):
        raise UsageError(f"{prog}: --subject and --grade go together")
    kwargs: dict[str, Any] = {"id": args.id, "name": args.name}
    if args.code is not None:
        kwargs["course"] = {"code": args.code}
    elif args.subject is not None:
        kwargs["course"] = {"subject": args.subject, "grade": args.grade}
    if args.stateful:
        kwargs["stateful"] = True
    if args.run_id is not None:
        kwargs["run_id"] = args.run_id
    if args.interval is not None:
        kwargs["heartbeat_interval"] = args.interval
    if args.abandon_after is not None:
        kwargs["abandon_after"] = args.abandon_after
    if args.idle_after is not None:
        kwargs["idle_after"] = args.idle_after
    if args.no_time:
        kwargs["time"] = False
    return kwargs


def _fail(message: str) -> None:
    """The one line a failed command prints, instead of a traceback."""
    print(f"timeback: {message}", file=sys.stderr)


@magics_class
class TimebackMagics(Magics):
    """``%timeback start|status|pause|resume|end``: a line for each call of the public API."""

    def __init__(self, shell: InteractiveShell, replaced: Any = None) -> None:
        super().__init__(shell)
        self.replaced = replaced  # the `%timeback` this one shadows, put back on unload
        self.bound_name = False  # whether load bound `timeback_nb` in the user's namespace
        self.replaced_custom_exc: tuple[Any, Any] = ((), None)  # IPython's custom-exception slot before load
        self.custom_tb: Any = None  # the handler load installed

    @line_magic(MAGIC_NAME)
    def timeback(self, line: str = "") -> Any:
        command = parse_line(line)
        if command.action == "help":
            return None
        try:
            if command.action == "start":
                return api.start(**command.kwargs)
            # After an end, the ended activity: status describes it, the others say when it ended.
            activity = api.current() or api.latest()
            if activity is None:
                raise StateError(
                    f"no activity is running; start one with "
                    f"%{MAGIC_NAME} start ID --name NAME (or timeback_nb.start)"
                )
            if command.action == "status":
                print(describe(activity))
            elif command.action == "end":
                activity.end(command.kwargs["metrics"])  # shows its line in this cell ...
                if not activity.end_note_shown:  # ... when it was started in this shell
                    print(activity.end_note())
            else:
                activity.pause() if command.action == "pause" else activity.resume()
                print(_one_line(activity))
        except TimebackError as exc:
            _fail(str(exc))
        return None


TimebackMagics.timeback.__doc__ = _PARSER.format_help()


def describe(activity: Activity) -> str:
    """``%timeback status``: the run, its state, active time and what is waiting to be sent."""
    now = activity.snapshot()
    course = ", ".join(f"{key}={value}" for key, value in activity.course.items())
    lines = [
        f"{activity.id} · {activity.name} ({course})",
        f"  run id   {activity.run_id}",
        f"  started  {activity.started_at}",
        f"  state    {now['state']}",
    ]
    if activity.ended:
        results = activity.results
        lines += [
            f"  ended    {activity.ended_at}",
            f"  results  {results_text(results) if results else 'none (time only)'}",
        ]
    lines += [
        f"  active   {format_elapsed(now['elapsedMs'])} "
        f"(current window {format_elapsed(now['windowElapsedMs'])})",
        f"  events   {now['pendingEvents']} waiting, {now['rejectedEvents']} rejected "
        f"({now['mode']} mode)",
    ]
    if now["lastError"]:
        lines.append(f"  note     {now['lastError']}")
    return "\n".join(lines)


def _one_line(activity: Activity) -> str:
    """What a pause/resume/end line prints: where the activity now stands."""
    now = activity.snapshot()
    return f"{activity.id}: {now['state']}, active {format_elapsed(now['elapsedMs'])}"


def _ours(shell: InteractiveShell) -> TimebackMagics | None:
    """The TimebackMagics behind the shell's `%timeback`, or None when it is not (or no longer) ours."""
    owner = getattr(shell.magics_manager.magics["line"].get(MAGIC_NAME), "__self__", None)
    return owner if isinstance(owner, TimebackMagics) else None


def _one_line_error(
    shell: InteractiveShell, etype: type, value: BaseException, tb: Any, tb_offset: Any = None, *, previous: Any = None
) -> Any:
    """IPython's custom-exception hook: a TimebackError shows as one line naming the field and
    the fix (its message), not a traceback into the package; any other exception goes to the
    hook that was there before (`previous`), or gets IPython's usual traceback."""
    if not isinstance(value, TimebackError):
        if previous is not None:
            return previous(etype, value, tb, tb_offset=tb_offset)
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return None
    stb = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, stb)  # the hook ipykernel turns into the cell's error output
    return stb


def load_ipython_extension(shell: InteractiveShell) -> None:
    """``%load_ext timeback_nb``: register ``%timeback`` once per shell; bind ``timeback_nb``."""
    if _ours(shell) is not None:
        return
    replaced = shell.magics_manager.magics["line"].get(MAGIC_NAME)
    magics = TimebackMagics(shell, replaced)
    shell.register_magics(magics)
    # One line for a TimebackError raised in a cell; IPython has one custom-exception slot, so
    # keep what held it and hand it every other exception.
    magics.replaced_custom_exc = (shell.custom_exceptions, shell.CustomTB)
    previous = shell.CustomTB if shell.custom_exceptions else None
    shell.set_custom_exc((*shell.custom_exceptions, TimebackError), partial(_one_line_error, previous=previous))
    magics.custom_tb = shell.CustomTB
    if PACKAGE_NAME not in shell.user_ns:  # never shadow a name the notebook already uses
        shell.push({PACKAGE_NAME: sys.modules[PACKAGE_NAME]})
        magics.bound_name = True


def unload_ipython_extension(shell: InteractiveShell) -> None:
    """``%unload_ext timeback_nb``: remove what load added (the magic, the name), restore what it replaced.

    A running activity keeps running: unloading removes the magic, not the tracking.
    """
    magics = _ours(shell)
    if magics is None:
        return
    line_magics = shell.magics_manager.magics["line"]
    if magics.replaced is None:
        del line_magics[MAGIC_NAME]
    else:
        line_magics[MAGIC_NAME] = magics.replaced
    registry = shell.magics_manager.registry
    if registry.get(TimebackMagics.__name__) is magics:
        del registry[TimebackMagics.__name__]
    if shell.CustomTB is magics.custom_tb:  # not replaced since: put back what was there
        shell.custom_exceptions, shell.CustomTB = magics.replaced_custom_exc
    if magics.bound_name and shell.user_ns.get(PACKAGE_NAME) is sys.modules.get(PACKAGE_NAME):
        # Only the binding load made, still holding the package; a name the user rebound stays.
        del shell.user_ns[PACKAGE_NAME]
        shell.user_ns_hidden.pop(PACKAGE_NAME, None)
