"""Run the design §8 benchmarks and print one table.

    python -m tests.benchmarks                 # everything (~6 min on 2 cores)
    python -m tests.benchmarks --quick         # fewer repetitions: a smoke run
    python -m tests.benchmarks --only drain --only heartbeat
    python -m tests.benchmarks --markdown      # the table as markdown
    python -m tests.benchmarks --write README.md --write docs/benchmarks.md   # and into those files

Each benchmark runs in a fresh Python process of its own, so threads, caches and memory left
behind by one never weigh on another's numbers. Exit status: 0 every bar met, 1 a bar missed,
2 a benchmark failed (crashed, or its result was wrong: events lost, duplicated, miscounted).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .results import Row, dump_rows, load_rows

ROOT = Path(__file__).resolve().parents[2]

# Design §8 order. Each name is the module tests/benchmarks/bench_<name>.py.
BENCHMARKS = (
    "accounting_sim",
    "accounting_browser",
    "heartbeat",
    "idle",
    "import",
    "drain",
    "hostile",
    "relay_ingest",
    "memory",
    "widget_js",
)
CHILD_TIMEOUT_S = 1200


def machine_facts() -> str:
    """`nproc`, CPU model and Python version, for the table's caption."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average at the end {load} (other work on the machine shows up as noise)"
    )


def run_child(name: str, quick: bool) -> list[Row]:
    """Run one benchmark in a fresh interpreter; its progress goes to our stderr."""
    command = [sys.executable, "-m", "tests.benchmarks", "--child", name] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"exited with status {done.returncode} (traceback above)")
    return load_rows(done.stdout)


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _cells(row: Row) -> list[str]:
    lo, hi = min(row.runs), max(row.runs)
    spread = _number(lo, row.digits) if lo == hi else f"{_number(lo, row.digits)}–{_number(hi, row.digits)}"
    if row.baseline is None:
        baseline = row.baseline_text or "—"
    else:
        baseline = f"{_number(row.baseline, row.digits)} ({row.baseline_text})"
    ratio = "—" if row.ratio is None else f"{row.ratio:.2f}×"
    runs = f"{_number(row.median, row.digits)} (n={len(row.runs)})"
    return [row.benchmark, row.metric, runs, spread, baseline, ratio, row.bar_text, row.verdict]


HEADER = ["benchmark", "metric", "median (runs)", "min–max", "same-run baseline", "ratio", "bar", "result"]


def render(rows: list[Row], errors: dict[str, str], markdown: bool) -> str:
    table = [_cells(row) for row in rows]
    table += [[name, "—", "—", "—", "—", "—", "—", f"ERROR: {message}"] for name, message in errors.items()]
    notes = [f"{row.benchmark}: {note}" for row in rows for note in row.notes]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in table]
        lines += [""] + [f"- {note}" for note in notes]
    else:
        widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]

        def aligned(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        lines = [aligned(HEADER), aligned(["-" * w for w in widths]), *map(aligned, table)]
        lines += [""] + [f"  * {note}" for note in notes]
    lines += ["", f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {machine_facts()}"]
    return "\n".join(lines)


BEGIN_MARK = "<!-- benchmarks:begin (written by python -m tests.benchmarks --write) -->"
END_MARK = "<!-- benchmarks:end -->"


def write_table(path: Path, table: str) -> None:
    """Replace what stands between the markers in `path` with `table` (markdown)."""
    text = path.read_text("utf-8")
    begin, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if begin < 0 or end < begin:
        raise ValueError(f"{path}: no '{BEGIN_MARK}' ... '{END_MARK}' block to write the table into")
    path.write_text(f"{text[:begin + len(BEGIN_MARK)]}\n{table}\n{text[end:]}", "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not the numbers)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--write", action="append", type=Path, default=[], metavar="FILE",
                        help="also write the markdown table into FILE, between its benchmark markers "
                        "(repeatable; a full run only, and not when a benchmark failed)")
    parser.add_argument("--child", choices=BENCHMARKS, help=argparse.SUPPRESS)  # one benchmark, rows as JSON
    args = parser.parse_args(argv)

    if args.child:
        import importlib

        module = importlib.import_module(f"tests.benchmarks.bench_{args.child}")
        print(dump_rows(module.run(args.quick)), flush=True)
        return 0

    if args.write and (args.quick or args.only):
        parser.error("--write publishes numbers: it needs a full run (no --quick, no --only)")
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name in selected:
        started = time.monotonic()
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        try:
            rows += run_child(name, args.quick)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            errors[name] = str(exc)
        print(f"[benchmarks] {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    print(render(rows, errors, args.markdown))
    if errors:
        return 2
    published = render(rows, errors, markdown=True)  # once: every file gets the same table
    for path in args.write:  # a missed bar is published as such; a failed benchmark is not
        write_table(path, published)
        print(f"[benchmarks] table written to {path}", file=sys.stderr)
    return 1 if any(row.verdict == "miss" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
