"""Reporting rollups: keep ``cdr_hourly``, ``cdr_daily`` and ``cdr_daily_cause`` equal to a
fresh aggregation of ``cdr``, so that BI views read thousands of rows instead of millions.

- A CDR's reporting hour and day are those of its ``connect_time`` (its ``setup_time`` when it
  has none) in ``reporting_config.applied_time_zone``; failed calls carry a connect time too.
- ``cdr_hourly`` is the finest grain (hour, account, country, vendor, cause) with additive
  measures only; ``cdr_daily`` (without the cause) and ``cdr_daily_cause`` (counts only) are
  sums of it per reporting day. Ratios (ASR, ACD, NER, ...) are computed by the views.
- ``refresh_days`` recomputes from ``cdr`` the hours a synced window overlaps (the window's
  account's CDRs of those hours, whichever window loaded them), then re-sums that account's
  days holding them. One account is enough: a CDR never moves between accounts (a stored
  ``i_cdr`` arriving under another login is a conflict, see ``etl.load``), so no other
  account's rollup can change. It writes only the rollup rows whose values changed:
  re-syncing unchanged data rewrites nothing.
- ``rebuild_rollup`` applies ``reporting_config.time_zone`` and recomputes everything.

Concurrency: a refresh holds a transaction-level advisory lock per day it touches (taken in day
order, so refreshes never deadlock each other) and a shared lock that a rebuild takes
exclusively. The SQL views over these tables are created by migration 0002.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

import psycopg

log = logging.getLogger(__name__)

NER_CAUSES = (16, 17, 18, 19, 21)  # ITU-T E.425 network-delivered causes (with answered calls)
# A CDR's hour is its connect time, which follows the setup time the API may filter windows on
# by the ring time: the hours up to this long after a window's end are refreshed with it.
ANSWER_LAG = timedelta(minutes=10)
# Advisory locks (the two-int form, apart from the one-bigint account locks of etl.locks):
# (LOCK_KEY, day number) per day touched; (LOCK_KEY, -1) shared by refreshes, taken by rebuilds;
# (LOCK_KEY, -2) is etl.db.MIGRATION_LOCK.
LOCK_KEY = 0x7C0C
_REBUILD_LOCK = -1
_EPOCH_DAY = date(1900, 1, 1)  # day numbers >= 0 (normalisation accepts years from 1900)
# Planner settings for the refresh statements (restored afterwards): hash a window's groups in
# memory rather than sort them on disk, and hash-join the rollup rows: merge joins would sort
# text keys by collation, several times slower, and a nested loop over the fresh rows (which
# the planner picks when one account's hours look small) compares every pair: 0.8 s instead
# of 10 ms for a day of 1,700 CDRs.
SETTINGS = {"work_mem": "64MB", "enable_mergejoin": "off", "enable_nestloop": "off"}

_KEY = "api_login, country_name, i_vendor, vendor_name"
_NER = ", ".join(str(code) for code in NER_CAUSES)
_WHEN = "coalesce(connect_time, setup_time)"
# The CDRs of the hour buckets lo..hi: those timed from lo to an hour past hi (a bucket holds
# less than an hour from its start, PostgreSQL's date_trunc being monotonic), of which only
# those whose bucket is in lo..hi (``_BUCKETS``): where the zone's clock goes back half an
# hour (Australia/Lord_Howe), a bucket can start on a half hour, and the CDRs of the hour past
# hi include some of the next bucket, outside the scope the refresh replaces.
_CDR_HOURS = """api_login = %(login)s AND (
    (connect_time >= %(lo)s AND connect_time < %(hi)s + interval '1 hour')
    OR (connect_time IS NULL
        AND setup_time >= %(lo)s AND setup_time < %(hi)s + interval '1 hour'))"""
_BUCKETS = "c.hour_start BETWEEN %(lo)s AND %(hi)s"
_HOURS = "t.api_login = %(login)s AND t.hour_start BETWEEN %(lo)s AND %(hi)s"
# The hours of the days lo..hi, read through the hour index from lo's first instant to the
# next day's (cdr_day_start, migration 0010: where the clock goes back at midnight, midnight
# happens twice, PostgreSQL reads ``day::timestamp AT TIME ZONE`` as the later one, and the
# day's first hour is before it), and by their day as well.
_HOURS_OF_DAYS = (
    "t.api_login = %(login)s AND t.day BETWEEN %(lo)s AND %(hi)s"
    " AND t.hour_start >= cdr_day_start(%(lo)s, %(tz)s)"
    " AND t.hour_start < cdr_day_start(%(hi)s + 1, %(tz)s)"
)
_DAYS = "t.api_login = %(login)s AND t.day BETWEEN %(lo)s AND %(hi)s"

# SQL functions of migration 0002: the billing formula and the cost check (v_cost_check).
_ISSUE = (
    "cdr_cost_issue(duration, billed_duration, billing_interval_1, billing_interval_n,"
    " billing_price_1, billing_price_n, customer_amount)"
)
_RATED = "cdr_rated_amount(billed_duration, billing_interval_1, billing_price_1, billing_price_n)"

_MEASURES = (  # of cdr_hourly and cdr_daily, in column order
    "attempts",
    "answered",
    "ner_delivered",
    "billed_seconds",
    "duration_seconds",
    "spend",
    "tta_seconds",
    "tta_calls",
    "cost_mismatches",
    "cost_difference",
)
_COUNTS = ("attempts", "answered")  # of cdr_daily_cause
_NUMERIC = {"spend", "tta_seconds", "cost_difference"}  # the others are cast back to bigint


def _sums(measures: tuple[str, ...]) -> str:
    return ", ".join(
        f"sum(t.{m})" + ("" if m in _NUMERIC else "::bigint") + f" AS {m}" for m in measures
    )


# NULL-able key columns compare through a value they never hold (normalisation turns '' into
# NULL and ids are never negative), so that equality is NULL-safe and still hashable.
_NULL_AS = {"country_name": "''", "i_vendor": "-1", "vendor_name": "''", "disconnect_code": "-1"}


def _match(names: list[str]) -> str:
    def side(alias: str) -> str:
        return ", ".join(
            f"coalesce({alias}.{n}, {_NULL_AS[n]})" if n in _NULL_AS else f"{alias}.{n}"
            for n in names
        )

    return f"({side('t')}) = ({side('f')})"


def _write(target: str, fresh: str, key: str, values: tuple[str, ...], scope: str) -> str:
    """CTEs that make ``target`` equal ``fresh`` within ``scope``, writing only changes.

    ``key`` is the unique key of ``target``, ``values`` every other column. Rows whose key is
    gone are deleted, new keys inserted, rows whose values changed updated: three disjoint
    sets of keys. The insert is a plain one, not ``ON CONFLICT``: no other writer can add these
    keys meanwhile (refreshes hold the per-day advisory locks, a rebuild the exclusive one),
    and a speculative insert cost about twice as much per row (a first sync inserts most of
    its hours' rows). Were that ever untrue, the unique key would fail the window loudly.
    """
    keys = key.split(", ")
    columns = ", ".join(f"t.{m}" for m in values), ", ".join(f"f.{m}" for m in values)
    return f"""
gone_{target} AS (
    DELETE FROM {target} t WHERE {scope}
        AND NOT EXISTS (SELECT 1 FROM {fresh} f WHERE {_match(keys)})
    RETURNING 1
), new_{target} AS (
    INSERT INTO {target}
    SELECT * FROM {fresh} f
    WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {scope} AND {_match(keys)})
    RETURNING 1
), put_{target} AS (
    UPDATE {target} t SET {", ".join(f"{m} = f.{m}" for m in values)}
    FROM {fresh} f
    WHERE {scope} AND {_match(keys)} AND ({columns[0]}) IS DISTINCT FROM ({columns[1]})
    RETURNING 1
)"""


def _written(*targets: str) -> str:
    kinds = ("gone", "new", "put")
    return " + ".join(f"(SELECT count(*) FROM {w}_{t})" for t in targets for w in kinds)


_HOURLY_KEY = f"hour_start, {_KEY}, disconnect_code"
# The calls whose time to answer counts: answered, with both times, not connected before they
# were set up (NULL compares false: no connect time, or no setup time, counts in neither the
# seconds nor the calls, so it cannot pull avg_tta_seconds down).
_RINGS = "duration > 0 AND connect_time >= setup_time"
# 1. The chosen hours of cdr_hourly, from one pass over their CDRs.
_REFRESH_HOURS = f"""
WITH fresh AS (
    SELECT h.hour_start, (h.hour_start AT TIME ZONE %(tz)s)::date AS day, {_KEY},
           disconnect_code, {", ".join(_MEASURES)}
    FROM (
        SELECT hour_start, {_KEY}, disconnect_code,
               count(*) AS attempts,
               count(*) FILTER (WHERE duration > 0) AS answered,
               count(*) FILTER (WHERE duration > 0 OR disconnect_code IN ({_NER}))
                   AS ner_delivered,
               coalesce(sum(billed_duration) FILTER (WHERE duration > 0), 0) AS billed_seconds,
               coalesce(sum(duration) FILTER (WHERE duration > 0), 0) AS duration_seconds,
               coalesce(sum(customer_amount), 0) AS spend,
               coalesce(sum(extract(epoch FROM connect_time - setup_time))
                   FILTER (WHERE {_RINGS}), 0) AS tta_seconds,
               count(*) FILTER (WHERE {_RINGS}) AS tta_calls,
               count(issue) AS cost_mismatches,
               coalesce(sum(customer_amount - {_RATED}) FILTER (WHERE issue IS NOT NULL), 0)
                   AS cost_difference
        FROM (
            -- the cost check once per CDR (the rated amount again only where it fails);
            -- OFFSET 0 keeps the planner from folding it back into each aggregate
            SELECT date_trunc('hour', {_WHEN}, %(tz)s) AS hour_start, {_KEY}, disconnect_code,
                   duration, billed_duration, customer_amount, connect_time, setup_time,
                   billing_interval_1, billing_price_1, billing_price_n, {_ISSUE} AS issue
            FROM cdr
            WHERE {{cdr}} AND {_WHEN} IS NOT NULL
            OFFSET 0
        ) c
        WHERE {{buckets}}
        GROUP BY 1, 2, 3, 4, 5, 6
    ) h
), {_write("cdr_hourly", "fresh", _HOURLY_KEY, ("day", *_MEASURES), "{hours}")}
SELECT {_written("cdr_hourly")}
"""

# 2. The chosen days of cdr_daily and cdr_daily_cause, summed from cdr_hourly.
_REFRESH_DAYS = f"""
WITH fresh_daily AS (
    SELECT t.day, {", ".join(f"t.{k}" for k in _KEY.split(", "))}, {_sums(_MEASURES)}
    FROM cdr_hourly t WHERE {{hours}} GROUP BY 1, 2, 3, 4, 5
), fresh_cause AS (
    SELECT t.day, {", ".join(f"t.{k}" for k in _KEY.split(", "))}, t.disconnect_code,
           {_sums(_COUNTS)}
    FROM cdr_hourly t WHERE {{hours}} GROUP BY 1, 2, 3, 4, 5, 6
), {_write("cdr_daily", "fresh_daily", f"day, {_KEY}", _MEASURES, "{days}")},
{_write("cdr_daily_cause", "fresh_cause", f"day, {_KEY}, disconnect_code", _COUNTS, "{days}")}
SELECT {_written("cdr_daily", "cdr_daily_cause")}
"""


def refresh_days(
    conn: psycopg.Connection[Any], api_login: str, start: datetime, end: datetime
) -> int:
    """Bring ``api_login``'s rollup up to date for every reporting day overlapping
    ``[start, end]``; return how many rollup rows that wrote (0: it was up to date).

    Call it in the window's transaction, right after the merge (or right after its commit).
    The account's hours overlapping ``[start, end + ANSWER_LAG]`` are recomputed from ``cdr``
    and its days re-summed from ``cdr_hourly``; other accounts' rows are not read.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("refresh_days needs timezone-aware bounds")
    if end < start:
        raise ValueError(f"refresh_days: end {end.isoformat()} is before start {start.isoformat()}")
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", (LOCK_KEY, _REBUILD_LOCK))
        tz = _applied_zone(cur)
        cur.execute(
            "SELECT h.lo, h.hi, (h.lo AT TIME ZONE %(tz)s)::date, (h.hi AT TIME ZONE %(tz)s)::date"
            " FROM (SELECT date_trunc('hour', %(start)s::timestamptz, %(tz)s) AS lo,"
            " date_trunc('hour', %(end)s::timestamptz, %(tz)s) AS hi) h",
            {"start": start, "end": end + ANSWER_LAG, "tz": tz},
        )
        row = cur.fetchone()
        assert row is not None
        first_hour, last_hour, first_day, last_day = row
        cur.execute(
            "SELECT pg_advisory_xact_lock(%s, n) FROM generate_series(%s::integer, %s) n",
            (LOCK_KEY, (first_day - _EPOCH_DAY).days, (last_day - _EPOCH_DAY).days),
        )
        with _settings(cur):
            hourly = _execute(
                cur,
                _REFRESH_HOURS.format(cdr=_CDR_HOURS, buckets=_BUCKETS, hours=_HOURS),
                {"tz": tz, "lo": first_hour, "hi": last_hour, "login": api_login},
            )
            daily = _execute(
                cur,
                _REFRESH_DAYS.format(hours=_HOURS_OF_DAYS, days=_DAYS),
                {"tz": tz, "lo": first_day, "hi": last_day, "login": api_login},
            )
    log.debug(
        "rollup refreshed account=%s hours=%s..%s rows_written=%d",
        api_login,
        first_hour.isoformat(),
        last_hour.isoformat(),
        hourly + daily,
    )
    return hourly + daily


def rebuild_rollup(conn: psycopg.Connection[Any]) -> None:
    """Apply ``reporting_config.time_zone`` and recompute the whole rollup.

    One transaction (the caller commits): readers see the old rollup until then. Waits for
    running refreshes, and holds later ones back until the commit.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_KEY, _REBUILD_LOCK))
        cur.execute("UPDATE reporting_config SET applied_time_zone = time_zone")
        tz = _applied_zone(cur)
        with _settings(cur):
            written = _execute(
                cur, _REFRESH_HOURS.format(cdr="true", buckets="true", hours="true"), {"tz": tz}
            )
            written += _execute(cur, _REFRESH_DAYS.format(hours="true", days="true"), {"tz": tz})
    log.info("rollup rebuilt time_zone=%s rows_written=%d", tz, written)


def _applied_zone(cur: psycopg.Cursor[Any]) -> str:
    cur.execute("SELECT applied_time_zone FROM reporting_config")
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("reporting_config is empty: run `tcxc-etl migrate`")
    return str(row[0])


def _execute(cur: psycopg.Cursor[Any], statement: str, params: dict[str, Any]) -> int:
    cur.execute(statement, params)
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def _settings(cur: psycopg.Cursor[Any]) -> Iterator[None]:
    """SETTINGS for the block only; the caller's transaction gets its own values back."""
    names = list(SETTINGS)
    cur.execute("SELECT " + ", ".join("current_setting(%s)" for _ in names), names)
    saved = cur.fetchone()
    assert saved is not None
    _set(cur, SETTINGS)
    yield
    _set(cur, dict(zip(names, saved, strict=True)))


def _set(cur: psycopg.Cursor[Any], values: dict[str, str]) -> None:
    pairs = [item for pair in values.items() for item in pair]
    cur.execute("SELECT " + ", ".join("set_config(%s, %s, true)" for _ in values), pairs)
