"""The benchmark runner still runs: the cheap benchmarks, quick, through `python -m tests.benchmarks`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ("accounting_sim", "widget_js", "drain")


def test_the_runner_prints_one_markdown_row_per_metric_with_a_verdict() -> None:
    only = [arg for name in CHEAP for arg in ("--only", name)]
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--quick", "--markdown", *only],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    # 2 would mean a benchmark crashed or found lost, duplicated or miscounted events. A missed
    # speed bar (1) on a busy test machine is not this test's business; correctness is.
    assert done.returncode in (0, 1), done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| benchmark | metric | median (runs) | min–max | same-run baseline |")
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:] if line.startswith("| ")]
    verdicts = {(row[0], row[1]): row[-1] for row in rows}
    assert {name for name, _ in verdicts} == set(CHEAP)
    assert set(verdicts.values()) <= {"pass", "miss", "n/a"}
    assert verdicts[("accounting_sim", "active-time error vs truth, ms")] == "pass"
    assert verdicts[("accounting_sim", "schedules with a broken invariant")] == "pass"
    assert verdicts[("widget_js", "bytes of TimebackWidget._esm (no imports)")] == "pass"
    assert any(line.startswith("Machine: ") and "Python 3." in line for line in lines)
