"""Load-path benchmark: tcxc-etl against its own baselines, in one run on the same data.

    python bench/load_bench.py [--cdrs 200000] [--days 30] [--page-size 1000] [--window 1d]
        [--window-rows N] [--variants sol,copy-cdr,naive,etl[,etl-lean]] [--workers N]
        [--raw-payload compact|full|extra] [--repeat 5] [--single-window] [--latency 0]
        [--scaling 1,2,4] [--account-scaling 2,4] [--output FILE]

Starts an embedded PostgreSQL (fsync off; or uses DATABASE_URL) and the API simulator in a
separate process (its CPU is measured apart and never counted as ours), then runs each
variant in its own child process (so its CPU time and peak RSS are its own) and into its own
fresh database:

- ``sol``: the speed of light: fetch, parse, COPY as received into a plain typed table;
- ``copy-cdr``: the same into the real ``cdr`` table (its indexes, the raw JSONB): what the
  schema alone costs, before any normalisation, deduplication or upsert;
- ``naive``: typed rows, a per-page SQLAlchemy executemany of INSERT ... ON CONFLICT DO UPDATE;
- ``etl``: tcxc-etl's first sync of the range (``etl.pipeline.backfill``), then ``resync``:
  the same range again, with the ``cdr`` table's write counters read around it;
- ``etl-lean``: the same first sync into a ``cdr`` without its two search indexes
  (``LEAN_DROPS``): what they cost a load (README, "Where the time goes"). Not a default.

It prints rows/s, CPU seconds of the variant, of the simulator and of PostgreSQL, peak RSS,
the load average around each run (other work on the machine), the write counters and the
ratios of the targets, and writes them to JSON. ``--single-window`` syncs the whole range as
one window (the memory target). ``--scaling 1,2,4`` (with ``--latency``) runs first syncs with
that many workers and compares each with workers x page size / latency, and with the smaller
of that and the database's own limit (``db-limit``: ``copy-cdr`` from a second simulator with
no latency, best of ``--repeat`` runs): the target is at least 0.8 of it.
``--account-scaling 2,4`` (with ``--latency``) does the same across accounts: for each N, a
simulator serving N accounts (``--cdrs`` split evenly between them) and one incremental pass
over all of them at once (``etl-accounts``: ``etl.passes.run_all``, one worker per account),
compared with N x page size / latency and with the database's limit. Figures are ratios
within one run, best and median of ``--repeat`` rounds (each round runs every variant once,
so all meet the same machine load); this is a benchmark, not a test: it reports, it never
fails on a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from common import (
    HERE,
    ROOT,
    create_database,
    drop_database,
    postgres,
    result_payload,
    write_results,
)

from etl import db, payload
from etl.config import parse_duration

END = datetime(2026, 10, 1)  # naive, API zone (UTC): the simulated data ends here
LOGIN, KEY = "bench", "bench-key"
TEMPLATE = "bench_template"
DB_LIMIT = "db-limit"  # the results' name of the database's own limit (--scaling)
# etl-lean: tcxc-etl into a cdr without the two indexes that serve searches, not loads.
LEAN = "etl-lean"
LEAN_DROPS = ("DROP INDEX ix_cdr_cld", "DROP INDEX ix_cdr_customer_amount")
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


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda run: run["wall_seconds"]))
    if len(runs) > 1:
        best["wall_seconds_all"] = [run["wall_seconds"] for run in runs]
        best["wall_seconds_median"] = statistics.median(best["wall_seconds_all"])
    return best


def benchmark(options: argparse.Namespace, server_url: str, pg_dir: Path | None) -> dict[str, Any]:
    start = END - timedelta(days=options.days)
    window = (
        timedelta(days=options.days) if options.single_window else parse_duration(options.window)
    )
    base_args: dict[str, Any] = {
        "login": LOGIN,
        "key": KEY,
        "start": start.replace(tzinfo=UTC).isoformat(),
        "end": END.replace(tzinfo=UTC).isoformat(),
        "page_size": options.page_size,
        "window_seconds": int(window.total_seconds()),
        "raw_payload": options.raw_payload,
    }
    if options.workers:
        base_args["workers"] = options.workers
    if options.window_rows is not None:
        base_args["window_rows"] = options.window_rows
    make_template(server_url)
    print(f"generating {options.cdrs:,} simulated CDRs ...", flush=True)
    sim = SimulatorProcess(options.cdrs, options.days, options.latency)
    base_args["sim_url"] = sim.url
    results: dict[str, Any] = {}
    try:
        # Rounds: each runs every variant once, so all of them meet the same machine load.
        runs: dict[str, list[dict[str, Any]]] = {}
        counters: list[dict[str, Any]] = []
        for attempt in range(options.repeat):
            for variant in options.variants:
                name = f"bench_{variant.replace('-', '_')}"
                url = fresh_database(server_url, name)
                args = {**base_args, "db_url": db.libpq_url(url)}
                script = variant
                if variant == LEAN:
                    script = "etl"
                    with psycopg.connect(db.libpq_url(url), autocommit=True) as conn:
                        for statement in LEAN_DROPS:
                            conn.execute(statement)
                print(f"  {variant} (round {attempt + 1}) ...", flush=True)
                run = run_variant(variant, script, args, sim, pg_dir)
                run["rows_loaded"] = row_count(url, "sol_cdr" if variant == "sol" else "cdr")
                runs.setdefault(variant, []).append(run)
                if variant == "etl":
                    before = write_counters(url)
                    print(f"  resync (round {attempt + 1}) ...", flush=True)
                    resync = run_variant("resync", "etl", args, sim, pg_dir)
                    resync["rows_loaded"] = row_count(url, "cdr")
                    counters.append({"before": before, "after": write_counters(url)})
                    runs.setdefault("resync", []).append(resync)
                drop_database(server_url, name)
        results = {variant: _best(variant_runs) for variant, variant_runs in runs.items()}
        if counters:
            results["resync"]["cdr_write_counters"] = counters[-1]
            results["resync"]["cdr_write_counters_every_round"] = counters
        if options.scaling or options.account_scaling:
            results[DB_LIMIT] = database_limit(options, base_args, server_url, pg_dir)
        for workers in options.scaling:
            args = {**base_args, "workers": workers}
            label = f"etl with {workers} worker(s)"
            results[f"etl-{workers}w"] = scaling_run(
                label, "etl", args, workers, options, sim, server_url, pg_dir
            )
    finally:
        sim.stop()
    for accounts in options.account_scaling:
        print(f"generating {options.cdrs:,} simulated CDRs for {accounts} accounts ...", flush=True)
        sim = SimulatorProcess(options.cdrs, options.days, options.latency, accounts)
        try:
            args = {**base_args, "sim_url": sim.url, "accounts": accounts, "workers": 1}
            label = f"etl-accounts: {accounts} accounts, 1 worker each"
            run = scaling_run(
                label, "etl-accounts", args, accounts, options, sim, server_url, pg_dir
            )
        finally:
            sim.stop()
        results[f"etl-{accounts}accounts"] = run
    for result in results.values():
        result["rows_per_second"] = result["rows_loaded"] / result["wall_seconds"]
    if DB_LIMIT in results:
        for result in results.values():
            if "ideal_rows_per_second" in result:
                result["db_limit_rows_per_second"] = results[DB_LIMIT]["rows_per_second"]
    return results


def scaling_run(
    label: str,
    variant: str,
    args: dict[str, Any],
    fetches: int,
    options: argparse.Namespace,
    sim: SimulatorProcess,
    server_url: str,
    pg_dir: Path | None,
) -> dict[str, Any]:
    """A first sync under ``--latency`` with ``fetches`` concurrent fetches into a fresh
    database; its ideal is fetches x page size / latency."""
    url = fresh_database(server_url, "bench_scaling")
    print(f"  {label}, {options.latency}s latency ...", flush=True)
    run = run_variant(label, variant, {**args, "db_url": db.libpq_url(url)}, sim, pg_dir)
    run["rows_loaded"] = row_count(url, "cdr")
    run["concurrent_fetches"] = fetches
    run["ideal_rows_per_second"] = fetches * options.page_size / options.latency
    drop_database(server_url, "bench_scaling")
    return run


def database_limit(
    options: argparse.Namespace, base_args: dict[str, Any], server_url: str, pg_dir: Path | None
) -> dict[str, Any]:
    """The database's own limit for the scaling target: ``copy-cdr`` (COPY as received into
    ``cdr``) from a second simulator with no latency, best of ``--repeat`` runs."""
    print(f"generating {options.cdrs:,} simulated CDRs again, with no latency ...", flush=True)
    sim = SimulatorProcess(options.cdrs, options.days, 0.0)
    runs = []
    try:
        for attempt in range(options.repeat):
            url = fresh_database(server_url, "bench_db_limit")
            args = {**base_args, "db_url": db.libpq_url(url), "sim_url": sim.url}
            print(f"  {DB_LIMIT}: copy-cdr, no latency (round {attempt + 1}) ...", flush=True)
            run = run_variant(DB_LIMIT, "copy-cdr", args, sim, pg_dir)
            run["rows_loaded"] = row_count(url, "cdr")
            runs.append(run)
            drop_database(server_url, "bench_db_limit")
    finally:
        sim.stop()
    return {"variant": "copy-cdr", "latency_seconds": 0.0, **_best(runs)}


# The ratios between variants (the first-sync and re-sync targets among them), as (ratio,
# numerator variant, denominator variant).
PAIRED = (
    ("copy_into_cdr_vs_speed_of_light", "copy-cdr", "sol"),
    ("first_sync_vs_speed_of_light", "etl", "sol"),
    ("first_sync_vs_naive_upsert", "etl", "naive"),
    ("resync_vs_first_sync", "resync", "etl"),
    ("lean_first_sync_vs_speed_of_light", LEAN, "sol"),
    ("lean_first_sync_vs_first_sync", LEAN, "etl"),
)


def ratios(results: dict[str, Any], median: bool = False) -> dict[str, float]:
    """The targets' ratios, from each variant's best run (or, with ``median``, its median)."""
    key = "wall_seconds_median" if median else "wall_seconds"
    rate = {
        name: result["rows_loaded"] / result.get(key, result["wall_seconds"])
        for name, result in results.items()
    }
    found: dict[str, float] = {}
    for name, result in results.items():
        if "ideal_rows_per_second" in result:
            ideal = result["ideal_rows_per_second"]
            found[f"{name}_vs_workers_x_page_size_over_latency"] = rate[name] / ideal
            if DB_LIMIT in rate:
                found[f"{name}_vs_min_ideal_db_limit"] = rate[name] / min(ideal, rate[DB_LIMIT])
    for ratio, top, bottom in PAIRED:
        if top in rate and bottom in rate:
            found[ratio] = rate[top] / rate[bottom]
    return found


def round_ratios(results: dict[str, Any]) -> dict[str, list[float]]:
    """Each ratio of PAIRED within every round (the two variants ran minutes apart at most,
    under the same load): steadier than best against best when the machine's speed drifts
    between rounds."""
    found: dict[str, list[float]] = {}
    for name, top, bottom in PAIRED:
        if top in results and bottom in results and "wall_seconds_all" in results[top]:
            pairs = zip(
                results[top]["wall_seconds_all"], results[bottom]["wall_seconds_all"], strict=True
            )
            rows = results[top]["rows_loaded"], results[bottom]["rows_loaded"]
            found[name] = [(rows[0] / top_wall) / (rows[1] / wall) for top_wall, wall in pairs]
    return found


def report(payload: dict[str, Any]) -> None:
    results = payload["results"]
    print()
    width = max(9, *(len(name) for name in results))
    header = (
        f"{'variant':<{width}} {'rows':>9} {'wall s':>7} {'rows/s':>8} {'own cpu':>8} "
        f"{'sim cpu':>8} {'pg cpu':>7} {'peak RSS':>9} {'load avg':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        pg = r.get("postgres_cpu_seconds")
        load = "{:.1f}->{:.1f}".format(*r["load_average_1m"])
        print(
            f"{name:<{width}} {r['rows_loaded']:>9,} {r['wall_seconds']:>7.2f} "
            f"{r['rows_per_second']:>8,.0f} {r['cpu_seconds']:>8.2f} "
            f"{r['simulator_cpu_seconds']:>8.2f} {'-' if pg is None else f'{pg:.2f}':>7} "
            f"{r['peak_rss_mb']:>6.0f} MB {load:>11}"
        )
    if "resync" in results:
        counters = results["resync"]["cdr_write_counters"]
        print(
            f"\ncdr write counters around the re-sync: {counters['before']} -> {counters['after']}"
        )
    paths = {r["load_path"] for r in results.values() if "load_path" in r}
    for path in sorted(paths):
        print(f"tcxc-etl load path run: {path}")
    found, medians = payload["ratios"], payload.get("ratios_of_medians", {})

    def ratio(name: str) -> str:
        return f"{found[name]:.2f}" + (
            f" (medians: {medians[name]:.2f})" if name in medians else ""
        )

    shown: set[str] = set()
    scaling = {name: r for name, r in results.items() if "ideal_rows_per_second" in r}
    if scaling:
        print(
            f"\nscaling under {payload['settings']['latency']}s latency, target: rows/s at least"
            " 0.8 x min(concurrent fetches x page size / latency, db limit):"
        )
    for name, r in scaling.items():
        ideal, limited = (
            f"{name}_vs_workers_x_page_size_over_latency",
            f"{name}_vs_min_ideal_db_limit",
        )
        line = (
            f"{name}: {r['rows_per_second']:,.0f} rows/s = {ratio(ideal)} x ideal"
            f" {r['ideal_rows_per_second']:,.0f}"
        )
        if limited in found:
            line += (
                f", {ratio(limited)} x min(ideal, db limit {r['db_limit_rows_per_second']:,.0f})"
            )
        print(line)
        shown.update((ideal, limited))
    per_round = payload.get("ratios_per_round", {})
    for name in found:
        if name not in shown:
            rounds = per_round.get(name)
            paired = (
                f"; per round: {', '.join(f'{x:.2f}' for x in rounds)},"
                f" median {statistics.median(rounds):.2f}"
                if rounds
                else ""
            )
            print(f"{name}: {ratio(name)}{paired}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cdrs", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--window", default="1d", help="window size, e.g. 6h, 1d")
    parser.add_argument(
        "--window-rows",
        type=int,
        default=None,
        help="TCXC_WINDOW_ROWS: join windows up to this many rows (0: never; default: its default)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="simulated seconds/request")
    parser.add_argument("--single-window", action="store_true", help="the whole range at once")
    parser.add_argument(
        "--repeat", type=int, default=5, help="rounds: runs per variant (best, median, per round)"
    )
    parser.add_argument(
        "--variants",
        default="sol,copy-cdr,naive,etl",
        type=_names,
        help="comma-separated: sol, copy-cdr, naive, etl (etl includes the re-sync), etl-lean;"
        " '' for none",
    )
    parser.add_argument("--workers", type=int, default=0, help="TCXC_WORKERS (0: its default)")
    parser.add_argument("--raw-payload", choices=payload.MODES, default=payload.COMPACT)
    parser.add_argument(
        "--scaling",
        type=_counts,
        default=[],
        help="worker counts for first syncs under --latency, e.g. 1,2,4 (also measures the"
        " database's own limit: copy-cdr with no latency)",
    )
    parser.add_argument(
        "--account-scaling",
        type=_counts,
        default=[],
        help="account counts for first syncs under --latency, e.g. 2,4: a simulator with that"
        " many accounts (--cdrs split evenly), one incremental pass over all of them at once"
        " (etl-accounts, 1 worker each); also measures the database's own limit",
    )
    parser.add_argument("--output", type=Path, help="default: bench/results/load*.json")
    options = parser.parse_args()
    for flag, counts in (
        ("--scaling", options.scaling),
        ("--account-scaling", options.account_scaling),
    ):
        if counts and options.latency <= 0:
            parser.error(f"{flag} needs --latency (seconds per request), e.g. --latency 0.1")
    for accounts in options.account_scaling:
        if accounts < 1 or options.cdrs % accounts:
            parser.error(f"--cdrs {options.cdrs} does not split evenly into {accounts} accounts")
    if options.output is None:
        suffix = "-single-window" if options.single_window else ""
        suffix += "-latency" if options.scaling or options.account_scaling else ""
        suffix += "-accounts" if options.account_scaling else ""
        options.output = HERE / "results" / f"load{suffix}.json"
    return options


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _counts(text: str) -> list[int]:
    return [int(n) for n in _names(text)]


def main() -> None:
    options = parse_args()
    started = time.time()
    with postgres("tcxc-bench-") as (server_url, pg_dir):
        results = benchmark(options, server_url, pg_dir)
    settings = {key: value for key, value in vars(options).items() if key not in ("output",)}
    payload = result_payload(started, settings, results=results, ratios=ratios(results))
    if options.repeat > 1:
        payload["ratios_of_medians"] = ratios(results, median=True)
        payload["ratios_per_round"] = round_ratios(results)
    report(payload)
    write_results(payload, options.output)


if __name__ == "__main__":
    main()
