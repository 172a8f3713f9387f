"""How the load benchmark runs a variant: the simulated data's account and end, a fresh
database per run (from a migrated template), the simulator in its own process, and each
variant in a child process whose CPU, peak RSS, the simulator's and PostgreSQL's CPU are
measured around it."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from common import HERE, ROOT, create_database

from etl import db

END = datetime(2026, 10, 1)  # naive, API zone (UTC): the simulated data ends here
LOGIN, KEY = "bench", "bench-key"
TEMPLATE = "bench_template"
TICKS = os.sysconf("SC_CLK_TCK")


def make_template(server_url: str) -> None:
    engine = db.make_engine(create_database(server_url, TEMPLATE))
    db.migrate(engine)
    engine.dispose()


def fresh_database(server_url: str, name: str) -> str:
    return create_database(server_url, name, template=TEMPLATE)


def write_counters(url: str) -> dict[str, int]:
    """The cdr table's insert/update/delete counters (our own session closes first)."""
    with psycopg.connect(db.libpq_url(url), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname = 'cdr'"
        ).fetchone()
    assert row is not None
    return dict(zip(("ins", "upd", "del", "hot_upd"), (int(v) for v in row), strict=True))


def row_count(url: str, table: str) -> int:
    with psycopg.connect(db.libpq_url(url)) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _proc_cpu(pid: int) -> tuple[int, float, float]:
    """(parent pid, own CPU seconds, CPU seconds of reaped children) from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return int(fields[1]), (utime + stime) / TICKS, (cutime + cstime) / TICKS


def postgres_cpu(data_dir: Path | None) -> float | None:
    """CPU seconds of the embedded server: the postmaster, its live and its exited children."""
    if data_dir is None:
        return None
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    _ppid, own, reaped = _proc_cpu(postmaster)
    total = own + reaped
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid, child_own, _ = _proc_cpu(int(entry.name))
            except (OSError, ValueError):
                continue
            if ppid == postmaster:
                total += child_own
    return total


class SimulatorProcess:
    """``sim_server.py`` in a child process; ``stats()`` asks it for its own counters."""

    def __init__(self, cdrs: int, days: int, latency: float, accounts: int = 1) -> None:
        command = [
            sys.executable,
            str(HERE / "sim_server.py"),
            f"--cdrs={cdrs}",
            f"--days={days}",
            f"--end={END.isoformat()}",
            f"--latency={latency}",
            f"--login={LOGIN}",
            f"--key={KEY}",
            f"--accounts={accounts}",
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("URL "):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = line.split()[1]

    def stats(self) -> dict[str, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        result: dict[str, float] = json.loads(self.process.stdout.readline())
        return result

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def run_variant(
    name: str, variant: str, args: dict[str, Any], sim: SimulatorProcess, pg_dir: Path | None
) -> dict[str, Any]:
    """Run one variant in a child process; add the simulator's and PostgreSQL's CPU to it."""
    load_before = os.getloadavg()[0]
    sim_before, pg_before = sim.stats(), postgres_cpu(pg_dir)
    completed = subprocess.run(
        [sys.executable, str(HERE / "variants.py"), variant, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    sim_after, pg_after = sim.stats(), postgres_cpu(pg_dir)
    result["simulator_cpu_seconds"] = (
        sim_after["process_cpu_seconds"] - sim_before["process_cpu_seconds"]
    )
    result["simulator_handler_cpu_seconds"] = sim_after["cpu_seconds"] - sim_before["cpu_seconds"]
    result["simulator_requests"] = sim_after["requests"] - sim_before["requests"]
    result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if pg_before is not None and pg_after is not None:
        result["postgres_cpu_seconds"] = pg_after - pg_before
    return result


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda run: run["wall_seconds"]))
    if len(runs) > 1:
        best["wall_seconds_all"] = [run["wall_seconds"] for run in runs]
        best["wall_seconds_median"] = statistics.median(best["wall_seconds_all"])
    return best
