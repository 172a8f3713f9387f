"""The load benchmark's figures: the targets' ratios (best against best, median against
median, per round) and the printed report."""

from __future__ import annotations

import statistics
from typing import Any

DB_LIMIT = "db-limit"  # the results' name of the database's own limit (--scaling)
# etl-lean: tcxc-etl into a cdr without the two indexes that serve searches, not loads.
LEAN = "etl-lean"
HALVES = "etl-halves"  # an experiment: two processes, each syncing half of the range


def own_limit(scaling: str) -> str:
    """The results' name of a scaling run's own sync with no latency (its load path's limit
    on this machine): ``etl-4w`` -> ``own-limit-4w``, ``etl-2accounts`` ->
    ``own-limit-2accounts``."""
    return "own-limit" + scaling.removeprefix("etl")


# The ratios between variants (the first-sync and re-sync targets among them), as (ratio,
# numerator variant, denominator variant).
PAIRED = (
    ("copy_into_cdr_vs_speed_of_light", "copy-cdr", "sol"),
    ("first_sync_vs_speed_of_light", "etl", "sol"),
    ("first_sync_vs_naive_upsert", "etl", "naive"),
    ("resync_vs_first_sync", "resync", "etl"),
    ("lean_first_sync_vs_speed_of_light", LEAN, "sol"),
    ("lean_first_sync_vs_first_sync", LEAN, "etl"),
    ("halves_first_sync_vs_speed_of_light", HALVES, "sol"),
    ("halves_first_sync_vs_first_sync", HALVES, "etl"),
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
            if own_limit(name) in rate:
                found[f"{name}_vs_min_ideal_own_limit"] = rate[name] / min(
                    ideal, rate[own_limit(name)]
                )
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
        ideal, limited, own = (
            f"{name}_vs_workers_x_page_size_over_latency",
            f"{name}_vs_min_ideal_db_limit",
            f"{name}_vs_min_ideal_own_limit",
        )
        line = (
            f"{name}: {r['rows_per_second']:,.0f} rows/s = {ratio(ideal)} x ideal"
            f" {r['ideal_rows_per_second']:,.0f}"
        )
        if limited in found:
            line += (
                f", {ratio(limited)} x min(ideal, db limit {r['db_limit_rows_per_second']:,.0f})"
            )
        if own in found:
            line += (
                f", {ratio(own)} x min(ideal, own load path's limit"
                f" {r['own_limit_rows_per_second']:,.0f})"
            )
        print(line)
        shown.update((ideal, limited, own))
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
