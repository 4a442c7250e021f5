"""`%load_ext timeback_nb` in a fresh interpreter vs `import anywidget` in another, both with
IPython imported and a shell created first (a kernel has both). Wall time of just that line,
measured inside each process; the two kinds of process alternate.

Reported too, from the same processes: the first `timeback_nb.start(...)` after it (local
store, widget displayed), which pays for whatever `%load_ext` leaves for later (the widget,
httpx, sqlite3), so a cheap `%load_ext` cannot hide the cost in the next cell."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from .results import Bar, Row, median
from .session import ROOT

NAME = "import"

_SETUP = (
    "import json, time\n"
    "from IPython.core.interactiveshell import InteractiveShell\n"
    "shell = InteractiveShell.instance()\n"
)
LOAD_EXT = _SETUP + (
    "started = time.perf_counter()\n"
    "shell.run_line_magic('load_ext', 'timeback_nb')\n"
    "took = time.perf_counter() - started\n"
    "assert 'timeback' in shell.magics_manager.magics['line'], 'the %timeback magic is not registered'\n"
    "import pathlib, tempfile, timeback_nb\n"
    "from tests.benchmarks.session import COURSE, use_local_store\n"
    "use_local_store(pathlib.Path(tempfile.mkdtemp()))\n"
    "started = time.perf_counter()\n"
    "activity = timeback_nb.start('import-cost', 'Import cost', COURSE)\n"
    "first_start = time.perf_counter() - started\n"
    "assert activity.widget is not None\n"
    "activity.end()\n"
    "print(json.dumps([took * 1000, first_start * 1000]))\n"
)
ANYWIDGET = _SETUP + (
    "started = time.perf_counter()\n"
    "import anywidget\n"
    "took = time.perf_counter() - started\n"
    "print(json.dumps([took * 1000]))\n"
)


def fresh_ms(source: str) -> list[float]:
    """The milliseconds a fresh process printed on its last line."""
    done = subprocess.run([sys.executable, "-c", source], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"the timing process failed:\n{done.stderr}")
    return [float(v) for v in json.loads(done.stdout.strip().splitlines()[-1])]


def own_modules() -> str:
    """Self time of timeback_nb's own modules in one `-X importtime` run: where the extra goes."""
    source = _SETUP + "import sys\nprint('--- load_ext', file=sys.stderr)\nshell.run_line_magic('load_ext', 'timeback_nb')\n"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", source], cwd=ROOT, capture_output=True, text=True, check=True
    )
    lines = done.stderr.split("--- load_ext", 1)[1].splitlines()
    own: dict[str, int] = {}
    for line in lines:
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(timeback_nb\S*)", line)
        if match:
            own[match.group(2)] = int(match.group(1))
    top = sorted(own.items(), key=lambda kv: -kv[1])[:3]
    return (
        f"timeback_nb's own modules: {sum(own.values()) / 1000:.1f} ms self time under -X importtime "
        f"(largest: {', '.join(f'{name} {us / 1000:.1f} ms' for name, us in top)})"
    )


def run(quick: bool) -> list[Row]:
    n = 3 if quick else 9
    loads, starts, baseline = [], [], []
    fresh_ms(LOAD_EXT), fresh_ms(ANYWIDGET)  # warm the OS file cache: cold disks are not the question
    for _ in range(n):
        load, start = fresh_ms(LOAD_EXT)
        loads.append(load)
        starts.append(start)
        baseline += fresh_ms(ANYWIDGET)
    return [
        Row(NAME, "%load_ext timeback_nb, ms (fresh process)", loads, Bar("over_baseline_at_most", 30.0),
            "≤ baseline + 30 ms", baseline=median(baseline), baseline_text="import anywidget",
            digits=1, notes=[
                f"{n} processes each; baseline runs {min(baseline):.1f}–{max(baseline):.1f} ms; "
                f"added: {median(loads) - median(baseline):.1f} ms",
                own_modules(),
            ]),
        Row(NAME, "then the first start() (widget shown), ms", starts, Bar("report"), "(reported)",
            digits=1, notes=["the first start() imports what %load_ext defers (anywidget, httpx, sqlite3), "
                             "opens the store and starts the threads"]),
    ]
