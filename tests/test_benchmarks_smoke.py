"""The benchmark runner still runs: the cheap benchmarks, quick, through `python -m tests.benchmarks`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
    assert verdicts[("widget_js", "bytes of TimebackWidget._esm, what a page loads")] == "pass"
    assert verdicts[("widget_js", "the same, gzipped")] == "pass"
    assert any(line.startswith("Measured 20") and "Python 3." in line for line in lines)


def test_write_replaces_only_the_marked_block_and_refuses_a_file_without_one(tmp_path: Path) -> None:
    from tests.benchmarks.__main__ import BEGIN_MARK, END_MARK, write_table

    page = tmp_path / "README.md"
    page.write_text(f"# Title\n\n{BEGIN_MARK}\n| old | table |\n{END_MARK}\n\nAfter.\n", "utf-8")
    write_table(page, "| new | table |")
    write_table(page, "| newer | table |")  # again: the block is replaced, not appended to
    assert page.read_text("utf-8") == f"# Title\n\n{BEGIN_MARK}\n| newer | table |\n{END_MARK}\n\nAfter.\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n", "utf-8")
    with pytest.raises(ValueError, match="bare.md: no"):
        write_table(bare, "| t |")
    assert bare.read_text("utf-8") == "no markers\n"


def test_write_needs_a_full_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--quick", "--write", "README.md"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2 and "--write publishes numbers: it needs a full run" in done.stderr
