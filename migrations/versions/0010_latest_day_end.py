"""Day bounds in the reporting zone: cdr_day_start(), v_reporting_period.latest_day_end_at

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 07:00:00.000000

Two ways a reporting day's bounds went wrong:

- ``day::timestamp AT TIME ZONE zone`` reads a local time that happens twice as the later
  one. Where the clock goes back at midnight (Atlantic/Azores, America/Havana), a day's
  midnight happens twice and the day begins at the earlier one: ``v_reporting_period``'s
  ``latest_day_start_at`` and ``month_start_at`` and ``v_hourly_kpi``'s first hour were an
  hour late there. ``cdr_day_start(day, zone)`` gives the first instant of the day.
- "The latest day" of a query on timestamps ended at ``latest_day_start_at + interval
  '1 day'``, which PostgreSQL adds in the session's TimeZone: from a session in another zone
  (a BI tool's default, UTC on the embedded server) a day of 25 hours lost its last hour and
  a day of 23 hours took the next day's first. The view now gives ``latest_day_end_at``.

A window's rollup refresh bounded its days the same way (``etl.reporting``, fixed with this
revision): in such a zone a day's first hour was left out of ``cdr_daily`` and
``cdr_daily_cause``, while ``cdr_hourly`` was right. This revision sums both again from
``cdr_hourly`` (a few thousand rows per million CDRs), under the rollup's rebuild lock.

The new column comes last, so ``CREATE OR REPLACE VIEW`` keeps the views and their grants.
The views are 0002's with those bounds replaced (read from 0002, which never changes).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The first instant of a day: its midnight, read (as PostgreSQL does for a local time that
# happens twice) as the later one, or, where the clock went back across midnight, the earlier:
# midnight at one of the UTC offsets the zone had in the day before (every half hour of it;
# steps back in the tz database are 30 minutes to 3 hours, Antarctica/Casey's). A day without
# a midnight (the clock goes forward at midnight) begins where PostgreSQL reads it: at 01:00 of
# the new offset; a day the zone skipped (Pacific/Apia, 2011-12-30) where the next one begins.
_DAY_START = """
CREATE FUNCTION cdr_day_start(day date, zone text) RETURNS timestamptz
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
SELECT least(s, (SELECT min(c)
                 FROM (SELECT (day::timestamp - ((t AT TIME ZONE zone) - (t AT TIME ZONE 'UTC')))
                              AT TIME ZONE 'UTC' AS c
                       FROM generate_series(s - interval '26 hours', s, interval '30 minutes') t
                      ) earlier
                 WHERE c AT TIME ZONE zone = day::timestamp))
FROM (SELECT day::timestamp AT TIME ZONE zone AS s) midnight
$$
"""
_TZ = "(SELECT applied_time_zone FROM reporting_config)"
# 0002's text -> this revision's.
_PERIOD = {
    "date_trunc('month', d.latest_day::timestamp) AT TIME ZONE d.time_zone AS month_start_at": (
        "cdr_day_start(date_trunc('month', d.latest_day::timestamp)::date, d.time_zone)"
        " AS month_start_at"
    ),
    "d.latest_day::timestamp AT TIME ZONE d.time_zone AS latest_day_start_at": (
        "cdr_day_start(d.latest_day, d.time_zone) AS latest_day_start_at,\n"
        "       cdr_day_start(d.latest_day + 1, d.time_zone) AS latest_day_end_at"
    ),
}
_HOURLY = {
    f"""WHERE h.hour_start >= ((SELECT max(day) FROM cdr_daily)
                           - ((SELECT hourly_days FROM reporting_config) - 1))::timestamp
                          AT TIME ZONE {_TZ}""": (
        f"""WHERE h.hour_start >= cdr_day_start((SELECT max(day) FROM cdr_daily)
                                         - ((SELECT hourly_days FROM reporting_config) - 1),
                                         {_TZ})"""
    ),
}


_KEY = "day, api_login, country_name, i_vendor, vendor_name"
_REBUILD_LOCK = "SELECT pg_advisory_xact_lock(31756, -1)"  # etl.reporting: LOCK_KEY, rebuild


def _migration_0002() -> ModuleType:
    """0002's module: its views and measures, which this revision reuses."""
    path = Path(__file__).with_name("0002_reporting.py")
    spec = importlib.util.spec_from_file_location("tcxc_migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resum(table: str, key: str, measures: list[str], sums: str) -> None:
    """``table`` summed again from cdr_hourly (as ``h``)."""
    op.execute(f"DELETE FROM {table}")
    op.execute(
        f"INSERT INTO {table} ({key}, {', '.join(measures)})"
        f" SELECT {key}, {sums} FROM cdr_hourly h GROUP BY {key}"
    )


def _replaced(body: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        if old not in body:
            raise RuntimeError(f"migration 0010: 0002's view text changed: {old!r}")
        body = body.replace(old, new)
    return body


def upgrade() -> None:
    reporting = _migration_0002()
    views = dict(reporting.VIEWS)
    op.execute(_DAY_START)
    op.execute(
        "CREATE OR REPLACE VIEW v_reporting_period AS "
        + _replaced(views["v_reporting_period"], _PERIOD)
    )
    op.execute(
        "CREATE OR REPLACE VIEW v_hourly_kpi AS " + _replaced(views["v_hourly_kpi"], _HOURLY)
    )
    op.execute(_REBUILD_LOCK)
    _resum("cdr_daily", _KEY, list(reporting._MEASURES), reporting._SUMS)
    counts = "sum(h.attempts)::bigint AS attempts, sum(h.answered)::bigint AS answered"
    _resum("cdr_daily_cause", f"{_KEY}, disconnect_code", ["attempts", "answered"], counts)


def downgrade() -> None:
    views = dict(_migration_0002().VIEWS)
    # A view cannot lose a column in place: v_reporting_period is made again.
    op.execute("DROP VIEW v_reporting_period")
    op.execute("CREATE VIEW v_reporting_period AS " + views["v_reporting_period"])
    op.execute("CREATE OR REPLACE VIEW v_hourly_kpi AS " + views["v_hourly_kpi"])
    op.execute("DROP FUNCTION cdr_day_start(date, text)")
