"""Load-path benchmark: tcxc-etl against its own baselines, in one run on the same data.

    python bench/load_bench.py [--cdrs 200000] [--days 30] [--page-size 1000] [--window 1d]
        [--window-rows N] [--variants sol,copy-cdr,naive,etl[,etl-lean,etl-halves]] [--workers N]
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
  (``LEAN_DROPS``): what they cost a load (docs/performance.md, "Where the time goes").
  Not a default;
- ``etl-halves``: an experiment (not a default): two first syncs at once, each in its own
  process over half of the range with one fetch slot (``variants.py``).

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
compared with N x page size / latency and with the database's limit. Each scaling run is
also compared with its own load path's limit (``own-limit-...``: the same sync, same workers
or accounts, from a simulator with no latency, best of ``--repeat`` runs): what the loading
side absorbs on this machine when fetching costs no wait. Figures are ratios
within one run, best and median of ``--repeat`` rounds (each round runs every variant once,
so all meet the same machine load); this is a benchmark, not a test: it reports, it never
fails on a time.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import psycopg
from common import HERE, drop_database, postgres, result_payload, write_results
from figures import DB_LIMIT, LEAN, own_limit, ratios, report, round_ratios
from runner import (
    END,
    KEY,
    LOGIN,
    SimulatorProcess,
    best_of,
    fresh_database,
    make_template,
    row_count,
    run_variant,
    write_counters,
)

from etl import db, payload
from etl.config import parse_duration

LEAN_DROPS = ("DROP INDEX ix_cdr_cld", "DROP INDEX ix_cdr_customer_amount")  # etl-lean's cdr


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
        results = {variant: best_of(variant_runs) for variant, variant_runs in runs.items()}
        if counters:
            results["resync"]["cdr_write_counters"] = counters[-1]
            results["resync"]["cdr_write_counters_every_round"] = counters
        for workers in options.scaling:
            args = {**base_args, "workers": workers}
            label = f"etl with {workers} worker(s)"
            results[f"etl-{workers}w"] = scaling_run(
                label, "etl", args, workers, options, sim, server_url, pg_dir
            )
    finally:
        sim.stop()
    if options.scaling or options.account_scaling:
        limits = [("copy-cdr", DB_LIMIT, {})] + [
            ("etl", own_limit(f"etl-{w}w"), {"workers": w}) for w in options.scaling
        ]
        results.update(zero_latency_runs(options, base_args, limits, 1, server_url, pg_dir))
    for accounts in options.account_scaling:
        args = {**base_args, "accounts": accounts, "workers": 1}
        limits = [("etl-accounts", own_limit(f"etl-{accounts}accounts"), {})]
        results.update(zero_latency_runs(options, args, limits, accounts, server_url, pg_dir))
        print(f"generating {options.cdrs:,} simulated CDRs for {accounts} accounts ...", flush=True)
        sim = SimulatorProcess(options.cdrs, options.days, options.latency, accounts)
        try:
            label = f"etl-accounts: {accounts} accounts, 1 worker each"
            run = scaling_run(
                label,
                "etl-accounts",
                {**args, "sim_url": sim.url},
                accounts,
                options,
                sim,
                server_url,
                pg_dir,
            )
        finally:
            sim.stop()
        results[f"etl-{accounts}accounts"] = run
    for result in results.values():
        result["rows_per_second"] = result["rows_loaded"] / result["wall_seconds"]
    for name, result in results.items():
        if "ideal_rows_per_second" in result:
            if DB_LIMIT in results:
                result["db_limit_rows_per_second"] = results[DB_LIMIT]["rows_per_second"]
            own = results.get(own_limit(name))
            if own is not None:
                result["own_limit_rows_per_second"] = own["rows_per_second"]
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


def zero_latency_runs(
    options: argparse.Namespace,
    base_args: dict[str, Any],
    runs: list[tuple[str, str, dict[str, Any]]],
    accounts: int,
    server_url: str,
    pg_dir: Path | None,
) -> dict[str, Any]:
    """The limits the scaling target is read against, from a simulator with no latency
    (serving ``accounts`` accounts), best of ``--repeat`` runs each: ``db-limit`` (copy-cdr:
    COPY as received into ``cdr``: the database's own limit) and ``own-limit-...`` (the same
    tcxc-etl sync as a scaling run: its load path's limit on this machine). ``runs`` holds
    (variant, result name, args added to ``base_args``)."""
    print(
        f"generating {options.cdrs:,} simulated CDRs ({accounts} account(s)) with no latency ...",
        flush=True,
    )
    sim = SimulatorProcess(options.cdrs, options.days, 0.0, accounts)
    found: dict[str, Any] = {}
    try:
        for variant, name, extra in runs:
            attempts = []
            for attempt in range(options.repeat):
                url = fresh_database(server_url, "bench_limit")
                args = {**base_args, **extra, "db_url": db.libpq_url(url), "sim_url": sim.url}
                print(f"  {name}: {variant}, no latency (round {attempt + 1}) ...", flush=True)
                run = run_variant(name, variant, args, sim, pg_dir)
                run["rows_loaded"] = row_count(url, "cdr")
                attempts.append(run)
                drop_database(server_url, "bench_limit")
            found[name] = {"variant": variant, "latency_seconds": 0.0, **best_of(attempts)}
    finally:
        sim.stop()
    return found


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
        help="comma-separated: sol, copy-cdr, naive, etl (etl includes the re-sync), etl-lean,"
        " etl-halves; '' for none",
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
