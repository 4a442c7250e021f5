"""Relay ingest: heartbeat requests per second into `timeback-nb relay` (a real process on
127.0.0.1 with its writer process, standalone tokens, delivering with its sender to the
loopback Caliper stand-in), each request answered only after its event is committed to the
relay's outbox (group commit, fsynced); then p50/p99 latency at a steady 500 requests/s. The
baseline is tornado answering 204 to the same requests with no work, in the same run, driven
by the same load generator (a separate process).

Throughput is a server's capacity: each server is loaded flat out by 32, 64, 128 and 256
keep-alive clients, and its best is its throughput (the ratio is best against best). The two
peak at different concurrencies: tornado's cost per request grows with its connections, while
the relay's falls, since more waiting clients fill its group commits. At any one count the
comparison would favour one of them; every count's result is in the notes. The two servers
run side by side and take each count's load one right after the other, so that the machine's
changes of speed (this is a shared VM) fall on both alike.

Correctness, checked afterwards in the relay's store: one outbox row per 204, none twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from tests.loopback import LoopbackServer
from tests.relay.harness import CONFIG, ROOT, caliper_env

from .results import Bar, Row, median

NAME = "relay_ingest"
CLIENT_COUNTS = (32, 64, 128, 256)  # each server's throughput is its best of these (see the docstring)
PACED_CLIENTS = 64
BAR_PER_S = 2000
BAR_RATIO = 0.5
PACED_RATE = 500
PATH = "/api/timeback/activity/heartbeat"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMEBACK_", "JUPYTERHUB_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def _spawn(command: list[str], env: dict[str, str], ready: Any, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{command[2]} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _load(port: int, seconds: float, rate: float, spec: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.relay_load", str(port), PATH, str(seconds), str(rate), str(spec)],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=seconds * 4 + 60, check=True,
    )
    return json.loads(done.stdout)


def _spec(folder: Path, t0: int, count: int) -> tuple[Path, dict[str, Any]]:
    clients = [{"token": f"tok-{uuid.uuid4().hex}", "run": str(uuid.uuid4())} for _ in range(count)]
    spec = folder / f"spec-{uuid.uuid4().hex[:6]}.json"
    spec.write_text(json.dumps({"t0": t0, "clients": clients}))
    return spec, {"clients": clients}


def _http_ready(url: str) -> Any:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code in (200, 405)
        except httpx.TransportError:
            return False

    return ready


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its children (the relay's
    writer), from /proc: the server side only, not the load generator or the stand-in."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class FlatOut:
    """A server loaded flat out by each client count: requests/s and CPU µs per request."""

    rates: dict[int, float]
    cpus: dict[int, float]
    requests: int  # answered, over all counts

    @property
    def best(self) -> int:
        """The client count this server did best at."""
        return max(self.rates, key=self.rates.__getitem__)


class _Server:
    """A server under load: its port and process, and what each flat-out load measured."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process
        self.flat = FlatOut({}, {}, 0)

    def flat_out(self, count: int, seconds: float, spec: Path) -> None:
        """One flat-out load (every reply checked to be 204) with the server's CPU per request
        over it."""
        before = _cpu_s(self.process.pid)
        result = _load(self.port, seconds, 0, spec)
        assert result["statuses"] == {"204": result["requests"]}, result
        self.flat.rates[count] = result["requests"] / result["seconds"]
        self.flat.cpus[count] = (_cpu_s(self.process.pid) - before) / max(result["requests"], 1) * 1e6
        self.flat.requests += result["requests"]


@contextlib.contextmanager
def _bare_server(folder: Path) -> Iterator[_Server]:
    port = _free_port()
    process = _spawn([sys.executable, "-m", "tests.benchmarks.bare_endpoint", str(port)], _env(),
                     _http_ready(f"http://127.0.0.1:{port}{PATH}"), folder / "bare.log")
    try:
        yield _Server(port, process)
    finally:
        _stop(process)


@contextlib.contextmanager
def _relay_server(folder: Path, store: Path, students: list[dict[str, str]]) -> Iterator[_Server]:
    """`timeback-nb relay` standalone, `students` in its tokens and users files, delivering to
    a loopback Caliper stand-in."""
    port = _free_port()
    (folder / "tokens.json").write_text(json.dumps({c["token"]: {"name": f"s{i}"} for i, c in enumerate(students)}))
    (folder / "users.json").write_text(json.dumps({f"s{i}": {"email": f"s{i}@school.edu", "id": f"u-{i}"} for i in range(len(students))}))
    (folder / "timeback.config.json").write_text(json.dumps(CONFIG))
    with LoopbackServer() as caliper:
        env = {**_env(), **caliper_env(caliper), "TIMEBACK_CONFIG": str(folder / "timeback.config.json")}
        command = [sys.executable, "-m", "timeback_nb.relay", "--port", str(port), "--store", str(store),
                   "--tokens", str(folder / "tokens.json"), "--users", str(folder / "users.json"), "--log-level", "WARNING"]
        process = _spawn(command, env, _http_ready(f"http://127.0.0.1:{port}/api/timeback/health"), folder / "relay.log")
        try:
            yield _Server(port, process)
        finally:
            _stop(process)


def measure(folder: Path, seconds: float, *, first_relay: bool) -> tuple[FlatOut, FlatOut, dict[str, Any]]:
    """(the relay's flat-out loads, the bare endpoint's, the relay's paced run). Both servers
    run side by side (the idle one costs nothing) and each client count loads one right after
    the other, in turns, so that a change in the machine's speed weighs on both alike."""
    t0 = time.time_ns() // 1_000_000 - 24 * 3_600_000  # windows far enough back for any run length
    specs = {n: _spec(folder, t0, n) for n in CLIENT_COUNTS}
    paced_spec, paced = _spec(folder, t0, PACED_CLIENTS)
    students = [c for _, spec in specs.values() for c in spec["clients"]] + paced["clients"]
    store = folder / f"relay-{uuid.uuid4().hex[:6]}.sqlite"
    with _relay_server(folder, store, students) as relay, _bare_server(folder) as bare:
        for turn, count in enumerate(CLIENT_COUNTS):
            spec = specs[count][0]
            relay_first = first_relay == (turn % 2 == 0)
            for server in (relay, bare) if relay_first else (bare, relay):
                server.flat_out(count, seconds, spec)  # the bare endpoint ignores the students' ids
        steady = _load(relay.port, seconds, PACED_RATE, paced_spec)
    assert steady["statuses"] == {"204": steady["requests"]}, steady
    with sqlite3.connect(store) as db:
        rows, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM outbox").fetchone()
    assert rows == distinct == relay.flat.requests + steady["requests"], (rows, distinct, relay.flat, steady)
    return relay.flat, bare.flat, steady


def _at_each(flat: FlatOut) -> str:
    return ", ".join(f"{flat.rates[n]:,.0f}/s at {n}" for n in CLIENT_COUNTS)


def run(quick: bool) -> list[Row]:
    reps, seconds = (1, 2.0) if quick else (3, 5.0)
    rates, bares, ratios, p50s, p99s, cpus, bare_cpus, seen = [], [], [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            folder = Path(tmp) / f"rep{rep}"
            folder.mkdir()
            flat, baseline, steady = measure(folder, seconds, first_relay=rep % 2 == 1)
            rate, bare_rate = flat.rates[flat.best], baseline.rates[baseline.best]
            bares.append(bare_rate)
            bare_cpus.append(baseline.cpus[baseline.best])
            rates.append(rate)
            cpus.append(flat.cpus[flat.best])
            ratios.append(rate / bare_rate)
            p50s.append(steady["p50_ms"])
            p99s.append(steady["p99_ms"])
            seen.append(f"relay {_at_each(flat)}; bare {_at_each(baseline)}")
            print(f"  rep {rep + 1}/{reps}: relay {_at_each(flat)} ({cpus[-1]:.0f} µs CPU each at its best), "
                  f"bare tornado {_at_each(baseline)} ({bare_cpus[-1]:.0f} µs), at {PACED_RATE}/s "
                  f"p50 {steady['p50_ms']:.2f} ms p99 {steady['p99_ms']:.2f} ms", file=sys.stderr, flush=True)
    counts = ", ".join(str(n) for n in CLIENT_COUNTS)
    note = (f"flat out with {counts} keep-alive clients, each a student streaming its own run; the relay and "
            "the bare endpoint take each count in turns, seconds apart; a server's throughput is its best of "
            "those; every 204 followed a durable (fsynced) commit of the event to the relay's outbox by its "
            "writer process (group commit); store checked: one row per 204, no id twice")
    span = f"{CLIENT_COUNTS[0]}–{CLIENT_COUNTS[-1]}"
    return [
        Row(NAME, f"heartbeats/s, best of {span} clients, durable before reply", rates, Bar("at_least", BAR_PER_S),
            f"≥ {BAR_PER_S:,}/s", baseline=median(bares), baseline_text="bare tornado 204, its best, same load",
            digits=0, notes=[note, "each repetition: " + " | ".join(seen)]),
        Row(NAME, "relay / bare endpoint, throughput (best against best)", ratios, Bar("at_least", BAR_RATIO),
            f"≥ {BAR_RATIO}×", digits=2),
        Row(NAME, "CPU per heartbeat flat out, µs (HTTP + writer processes)", cpus, Bar("report"), "reported",
            baseline=median(bare_cpus), baseline_text="bare tornado, CPU per request", digits=0,
            notes=["CPU per request: user + system time of the server's processes over the flat-out load it did "
                   "best at (/proc), per request answered; the writer's includes delivering to the stand-in; the "
                   "load generator and the stand-in share the same cores and are not counted"]),
        Row(NAME, f"p50 latency at {PACED_RATE} req/s ({PACED_CLIENTS} clients), ms", p50s, Bar("report"), "reported",
            digits=2),
        Row(NAME, f"p99 latency at {PACED_RATE} req/s ({PACED_CLIENTS} clients), ms", p99s, Bar("report"), "reported",
            digits=2),
    ]
