"""What a benchmark reports: rows of repeated measurements, a same-run baseline and a bar.

A benchmark module (`bench_*.py`) exposes ``NAME`` and ``run(quick: bool) -> list[Row]``. It
asserts that what it measured was *correct* (nothing lost, duplicated or miscounted) and raises
otherwise; whether the numbers meet the design §8 bar is the runner's business (`Bar.met`).
Rows travel from the benchmark's own process to the runner as JSON, so they hold plain data.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

RESULT_PREFIX = "BENCHMARK-ROWS "  # the line a benchmark process prints its rows on

BAR_KINDS = ("exact", "at_most", "below", "at_least", "ratio_at_most", "over_baseline_at_most", "report")
VERDICTS = ("pass", "miss", "n/a")


@dataclass(frozen=True)
class Bar:
    """A design §8 bar, judged on the median (``on="max"``: every run must meet it).

    kinds: ``exact`` (== limit), ``at_most`` (<=), ``below`` (<), ``at_least`` (>=),
    ``ratio_at_most`` (median / baseline <=), ``over_baseline_at_most`` (median - baseline <=),
    ``report`` (a number to know, no bar).
    """

    kind: str
    limit: float = 0.0
    on: str = "median"  # "median" | "max"

    def __post_init__(self) -> None:
        if self.kind not in BAR_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(BAR_KINDS)}, got {self.kind!r}")
        if self.on not in ("median", "max"):
            raise ValueError(f"on: must be 'median' or 'max', got {self.on!r}")

    def met(self, row: Row) -> str:
        """"pass", "miss", or "n/a" for a number with no bar."""
        if self.kind == "report":
            return "n/a"
        value = max(row.runs) if self.on == "max" else row.median
        if self.kind in ("ratio_at_most", "over_baseline_at_most") and row.baseline is None:
            raise ValueError(f"{row.benchmark}: bar {self.kind} needs a baseline")
        ok = {
            "exact": lambda: value == self.limit,
            "at_most": lambda: value <= self.limit,
            "below": lambda: value < self.limit,
            "at_least": lambda: value >= self.limit,
            "ratio_at_most": lambda: value / row.baseline <= self.limit,  # type: ignore[operator]
            "over_baseline_at_most": lambda: value - row.baseline <= self.limit,  # type: ignore[operator]
        }[self.kind]()
        return "pass" if ok else "miss"


@dataclass
class Row:
    """One line of the table: a metric measured `len(runs)` times, its baseline and bar."""

    benchmark: str
    metric: str  # what was measured, with its unit, e.g. "per-event latency, ms"
    runs: list[float]
    bar: Bar
    bar_text: str  # the bar as design §8 states it, e.g. "<= 1.5x baseline"
    baseline: float | None = None  # the same-run baseline's median, in the metric's unit
    baseline_text: str = ""  # what the baseline is, e.g. "bare SQLite insert + httpx POST"
    digits: int = 2  # decimals to show
    over_baseline: bool = False  # the metric is already measured over the baseline: no ratio
    notes: list[str] = field(default_factory=list)  # facts worth a line under the table

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError(f"{self.benchmark}: runs must not be empty")
        self.runs = [float(v) for v in self.runs]

    @property
    def median(self) -> float:
        return float(statistics.median(self.runs))

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0 or self.over_baseline:
            return None
        return self.median / self.baseline

    @property
    def verdict(self) -> str:
        return self.bar.met(self)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        data = dict(data)
        data["bar"] = Bar(**data["bar"])
        return cls(**data)


def dump_rows(rows: list[Row]) -> str:
    """The one stdout line that carries a benchmark's rows to the runner."""
    return RESULT_PREFIX + json.dumps([row.to_json() for row in rows])


def load_rows(stdout: str) -> list[Row]:
    """The rows from a benchmark process's stdout (its last result line)."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise ValueError("the benchmark printed no result line")
    return [Row.from_json(item) for item in json.loads(lines[-1][len(RESULT_PREFIX) :])]


def median(values: list[float]) -> float:
    return float(statistics.median(values))
