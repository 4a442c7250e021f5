"""`%load_ext timeback_nb` in a fresh interpreter vs `import anywidget` in another, both with
IPython imported and a shell created first (a kernel has both). Wall time of just that line,
measured inside each process; the two kinds of process alternate."""

from __future__ import annotations

import re
import subprocess
import sys

from .results import Bar, Row, median
from .session import ROOT

NAME = "import"

_SETUP = (
    "import time\n"
    "from IPython.core.interactiveshell import InteractiveShell\n"
    "shell = InteractiveShell.instance()\n"
)
LOAD_EXT = _SETUP + (
    "started = time.perf_counter()\n"
    "shell.run_line_magic('load_ext', 'timeback_nb')\n"
    "took = time.perf_counter() - started\n"
    "assert 'timeback' in shell.magics_manager.magics['line'], 'the %timeback magic is not registered'\n"
    "print(took * 1000)\n"
)
ANYWIDGET = _SETUP + (
    "started = time.perf_counter()\n"
    "import anywidget\n"
    "took = time.perf_counter() - started\n"
    "print(took * 1000)\n"
)


def fresh_ms(source: str) -> float:
    done = subprocess.run([sys.executable, "-c", source], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"the timing process failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


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
    loads, baseline = [], []
    fresh_ms(LOAD_EXT), fresh_ms(ANYWIDGET)  # warm the OS file cache: cold disks are not the question
    for _ in range(n):
        loads.append(fresh_ms(LOAD_EXT))
        baseline.append(fresh_ms(ANYWIDGET))
    return [
        Row(NAME, "%load_ext timeback_nb, ms (fresh process)", loads, Bar("over_baseline_at_most", 30.0),
            "≤ baseline + 30 ms", baseline=median(baseline), baseline_text="import anywidget",
            digits=1, notes=[
                f"{n} processes each; baseline runs {min(baseline):.1f}–{max(baseline):.1f} ms; "
                f"added: {median(loads) - median(baseline):.1f} ms",
                own_modules(),
            ]),
    ]
