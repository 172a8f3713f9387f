"""Verification: re-read a range from the API and compare it with the warehouse, writing nothing.

Each window of the range is fetched by the pipeline's own ``etl.window_fetch.fetch_window``
(same paging, loop guards, retries), normalised by the same Normalizer, and COPYed into the
transaction's temporary staging table, so memory does not grow with the range. The comparison
is set-based SQL. The whole check runs in one transaction that is always rolled back: nothing
is ever written.

Which time field the API filters on is undocumented, so it is detected from the fetched rows:
the first of setup_time, connect_time, disconnect_time whose values all lie inside the window
each row was fetched for. That field selects the warehouse's rows of the period and gives each
row its day (in the API time zone). Repeats of an i_cdr in the API's answer count once, the
last one winning, as the loader does.

Kinds of difference: ``missing`` (in the API, not in ``cdr``), ``extra`` (in ``cdr`` for the
account, prefix and period, not in the API), ``different`` (same i_cdr, another value in a typed
column, the call_id or the account). Records the Normalizer rejects are ``unloadable``.

The reporting rollups of the account's period are checked too (what BI tools read): the
rollup refresh runs in the same rolled-back transaction, and the rows it would have written
are rollup rows that differ from a fresh aggregation of ``cdr``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from etl import load, reporting, window_fetch, window_sync
from etl.db import database_errors
from etl.errors import EtlError
from etl.fields import FIELDS, TIME_FIELDS
from etl.normalize import Normalizer
from etl.windows import Window, plan_windows

FALLBACK_FIELD = "connect_time"
KINDS = ("missing", "extra", "different")
EXAMPLES = 20
COMPARED = (*FIELDS, "api_login")
_TIME_INDEX = {name: FIELDS.index(name) for name in TIME_FIELDS}


@dataclass(frozen=True)
class DayCounts:
    """One day's line: rows in the API, in the warehouse, and each kind of difference."""

    day: date | None
    api: int = 0
    warehouse: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0


@dataclass(frozen=True)
class Example:
    """One i_cdr that differs, its day, and (for ``different``) the columns that differ."""

    i_cdr: int
    day: date | None
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unloadable:
    """A record the API returned that cannot be normalised (so cannot be in ``cdr``)."""

    i_cdr: str | None
    reason: str


@dataclass
class FieldFit:
    """Per time field: how many fetched values fell inside / outside their window."""

    inside: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIME_FIELDS, 0))
    outside: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIME_FIELDS, 0))

    def observe(self, rows: Sequence[Sequence[Any]], window: Window, tz: tzinfo) -> None:
        """Count each time inside or outside the range requested for ``window`` (its wall-clock
        times in the API's zone ``tz``, ``Window.api_range``: an inclusive API returns calls
        on the second past the window's end too)."""
        low, high = window.api_range(tz)
        for row in rows:
            for name, index in _TIME_INDEX.items():
                value = row[index]
                if value is None:
                    continue
                if low <= value.astimezone(tz).replace(tzinfo=None) <= high:
                    self.inside[name] += 1
                else:
                    self.outside[name] += 1

    def choose(self) -> TimeField:
        """The field the API filters on (setup_time preferred, then connect_time)."""
        fits = tuple(n for n in TIME_FIELDS if self.inside[n] > 0 and self.outside[n] == 0)
        if fits:
            note = f"detected: every fetched {fits[0]} lies inside its window"
            if fits[1:]:
                note += f"; {' and '.join(fits[1:])} too, so {fits[0]} is preferred"
            return TimeField(fits[0], fits[1:], note)
        if not any(self.inside.values()):
            note = "fallback: no timed rows were fetched to detect it from"
            return TimeField(FALLBACK_FIELD, (), note)
        counts = ", ".join(f"{n} {self.outside[n]}" for n in TIME_FIELDS)
        note = (
            f"fallback: no field's values all lie inside their windows (rows outside: {counts});"
            " the warehouse's period and days may not match the API's"
        )
        return TimeField(FALLBACK_FIELD, (), note)


@dataclass(frozen=True)
class TimeField:
    """The field the API is taken to filter on, the other fields that fit too, and why."""

    name: str
    also: tuple[str, ...]
    note: str


@dataclass
class Tally:
    """What was fetched."""

    windows: int = 0
    pages: int = 0
    rows_fetched: int = 0
    rejected: int = 0  # records the Normalizer rejected, repeats included


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``verify_range``."""

    api_login: str
    prefix: str
    start: datetime
    end: datetime
    time_field: TimeField
    tally: Tally
    days: tuple[DayCounts, ...]
    examples: dict[str, tuple[Example, ...]]
    unloadable_count: int
    unloadable: tuple[Unloadable, ...]
    boundary_extra: int = 0  # extra rows outside the period by a field in ``time_field.also``
    # Unloadable records whose i_cdr the account holds in cdr: an earlier row (loaded before
    # the API sent it in this form, or under an older version's rules) that no sync replaces.
    unloadable_stored: tuple[int, ...] = ()
    # Rollup rows (cdr_hourly, cdr_daily, cdr_daily_cause) of the account's period that differ
    # from a fresh aggregation of cdr: BI figures that `rebuild-rollup` would correct.
    stale_rollup_rows: int = 0

    def total(self, kind: str) -> int:
        return sum(int(getattr(day, kind)) for day in self.days)

    @property
    def clean(self) -> bool:
        return (
            not self.unloadable_count
            and not self.stale_rollup_rows
            and not any(self.total(kind) for kind in KINDS)
        )

    def summary(self) -> str:
        """One line: the totals of each kind."""
        parts = [f"{self.total(kind)} {kind}" for kind in KINDS]
        held = f" ({len(self.unloadable_stored)} held in cdr)" if self.unloadable_stored else ""
        parts.append(f"{self.unloadable_count} unloadable{held}")
        if self.stale_rollup_rows:
            parts.append(f"{self.stale_rollup_rows} stale rollup rows")
        return ", ".join(parts)


_OPEN_REJECTS = (
    "CREATE TEMP TABLE verify_reject (seq bigint NOT NULL, i_cdr text, reason text NOT NULL,"
    " digest text NOT NULL) ON COMMIT DROP"
)


def _stage_window(
    conn: psycopg.Connection[Any],
    job: window_sync.Job,
    window: Window,
    normalizer: Normalizer,
    state: tuple[FieldFit, Tally],
) -> None:
    fit, tally = state
    for records in window_fetch.fetch_window(job, window):  # the pipeline's paging and retries
        job.check_stop(f"account {job.api_login}, window {window}")
        rows, rejects = window_sync.normalise_page(normalizer, records, job.api_login)
        load.stage_rows(conn, rows, tally.rows_fetched)
        fit.observe(rows, window, job.settings.api_timezone)
        if rejects:
            with conn.cursor() as cur, cur.copy("COPY verify_reject FROM STDIN") as copy:
                for n, reject in enumerate(rejects, tally.rejected):
                    copy.write_row((n, reject.i_cdr, reject.reason, _digest(reject.raw)))
        tally.rows_fetched += len(records)
        tally.rejected += len(rejects)
        tally.pages += 1
    tally.windows += 1


def verify_range(
    engine: Engine, job: window_sync.Job, start: datetime, end: datetime
) -> VerifyReport:
    """Compare the API's rows of ``[start, end]`` with the warehouse's; writes nothing."""
    windows = list(plan_windows(start, end, job.settings.window))
    settings = job.settings
    normalizer = job.normalizer()
    fit, tally = FieldFit(), Tally()
    with database_errors(f"verify of account {job.api_login}"), engine.connect() as sa_conn:
        transaction = sa_conn.begin()
        try:
            conn = sa_conn.connection.driver_connection
            assert isinstance(conn, psycopg.Connection)
            load.open_stage(conn)
            conn.execute(_OPEN_REJECTS)
            job.seed_budget(engine)  # (verify's own requests are not recorded: it writes nothing)
            for done, window in enumerate(windows):
                _check_budget(job, done, len(windows))
                _stage_window(conn, job, window, normalizer, (fit, tally))
            time_field = fit.choose()
            period = Period(job.api_login, job.prefix, windows[0].start, windows[-1].end)
            compare(conn, time_field, settings.api_timezone.key, period)
            return VerifyReport(
                api_login=job.api_login,
                prefix=job.prefix,
                start=period.start,
                end=period.end,
                time_field=time_field,
                tally=tally,
                days=read_days(conn),
                examples=read_examples(conn),
                unloadable_count=_count(conn, "SELECT count(DISTINCT digest) FROM verify_reject"),
                unloadable=read_unloadable(conn),
                unloadable_stored=read_unloadable_stored(conn, job.api_login),
                boundary_extra=_count(conn, _BOUNDARY_EXTRA),
                # (last: it takes the rollup's day locks, released by the rollback below)
                stale_rollup_rows=reporting.refresh_days(
                    conn, job.api_login, period.start, period.end
                ),
            )
        finally:
            transaction.rollback()  # verify never writes: even its temp tables go


def _check_budget(job: window_sync.Job, done: int, planned: int) -> None:
    """Start no window once the hourly budget is spent (the API's own limit would refuse the
    requests, or count them against the account's syncs)."""
    if job.budget is not None and job.budget.hour_exhausted():
        raise EtlError(
            f"verify stopped after {done} of {planned} window(s): the hourly request budget "
            f"(TCXC_REQUESTS_PER_HOUR={job.budget.per_hour}) is spent; run it again later, "
            "or over a shorter range"
        )


@dataclass(frozen=True)
class Period:
    """The warehouse rows to compare with: one account, one prefix, a closed time range."""

    api_login: str
    prefix: str
    start: datetime
    end: datetime

    def like_pattern(self) -> str:
        escaped = self.prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return escaped + "%"


_LATEST = f"""
CREATE TEMP TABLE verify_api ON COMMIT DROP AS
SELECT DISTINCT ON (i_cdr) * FROM {load.STAGE} ORDER BY i_cdr, seq DESC
"""

_DIFFERING = ", ".join(
    f"CASE WHEN a.{name} IS DISTINCT FROM c.{name} THEN '{name}' END" for name in COMPARED
)

# The warehouse's rows of the period. ``cdr`` has no index on setup_time or disconnect_time
# (each index costs every row loaded): a call's connect time lies within NEAR of both (its
# ring and its duration), so the rows are found through the (connect_time, api_login) index
# and then filtered exactly, instead of by reading the whole table. Only the per-day
# warehouse count and the extra rows come from here (missing and different rows are looked up
# by i_cdr). Normalisation rejects a record whose times lie more than MAX_SPREAD (2 days)
# apart, so every row loaded since is found here; a row loaded before that rule by an older
# tcxc-etl would be left out of that count.
NEAR = "interval '2 days'"
WAREHOUSE_ROWS = f"""
    FROM cdr c
    WHERE c.api_login = %(login)s AND c.{{field}} BETWEEN %(start)s AND %(end)s
      AND (c.connect_time IS NULL
           OR c.connect_time BETWEEN %(start)s - {NEAR} AND %(end)s + {NEAR})
      AND (%(prefix)s = '' OR c.cld LIKE %(pattern)s)"""

_OUTCOME = f"""
CREATE TEMP TABLE verify_outcome ON COMMIT DROP AS
WITH api AS (
    SELECT a.*, (a.{{field}} AT TIME ZONE %(tz)s)::date AS day FROM verify_api a
), wh AS (
    SELECT c.i_cdr, c.setup_time, c.connect_time, c.disconnect_time,
           (c.{{field}} AT TIME ZONE %(tz)s)::date AS day
    {WAREHOUSE_ROWS}
)
SELECT 'api' AS kind, day, NULL::bigint AS i_cdr, count(*) AS n, NULL::text[] AS columns
FROM api WHERE {{field}} IS NULL OR {{field}} BETWEEN %(start)s AND %(end)s GROUP BY day
UNION ALL
SELECT 'warehouse', day, NULL, count(*), NULL FROM wh GROUP BY day
UNION ALL
SELECT 'missing', a.day, a.i_cdr, 1, NULL FROM api a
WHERE NOT EXISTS (SELECT 1 FROM cdr c WHERE c.i_cdr = a.i_cdr)
UNION ALL
SELECT 'different', day, i_cdr, 1, columns FROM (
    SELECT a.day, a.i_cdr, array_remove(ARRAY[{_DIFFERING}], NULL) AS columns
    FROM api a JOIN cdr c ON c.i_cdr = a.i_cdr
) d WHERE cardinality(columns) > 0
UNION ALL
SELECT 'extra', w.day, w.i_cdr, 1, array_remove(ARRAY[{{outside}}]::text[], NULL) FROM wh w
WHERE NOT EXISTS (SELECT 1 FROM verify_api a WHERE a.i_cdr = w.i_cdr)
  AND NOT EXISTS (SELECT 1 FROM verify_reject r WHERE btrim(r.i_cdr) = w.i_cdr::text)
"""


_OUTSIDE = (
    "CASE WHEN w.{field} IS NULL OR w.{field} NOT BETWEEN %(start)s AND %(end)s THEN {name} END"
)
_BOUNDARY_EXTRA = "SELECT count(*) FROM verify_outcome WHERE kind = 'extra' AND columns <> '{}'"


def compare(conn: psycopg.Connection[Any], time_field: TimeField, tz: str, period: Period) -> None:
    """Fill ``verify_outcome`` from the staged API rows and ``cdr``, in one statement.

    The API's count per day is of its rows inside the period (the last request asks for a
    second past it); every row it sent is looked up in ``cdr`` (missing, different).

    An extra row's ``columns`` name the other fitting time fields by which it lies outside
    the period: it is extra only if the API filters on ``time_field.name``.
    """
    conn.execute(_LATEST)
    conn.execute("ALTER TABLE verify_api ADD PRIMARY KEY (i_cdr)")
    conn.execute("ANALYZE verify_api")
    outside = [
        sql.SQL(_OUTSIDE).format(field=sql.Identifier(name), name=sql.Literal(name))
        for name in time_field.also
    ]
    outcome = sql.SQL(_OUTCOME).format(
        field=sql.Identifier(time_field.name), outside=sql.SQL(", ").join(outside)
    )
    conn.execute(
        outcome,
        {
            "tz": tz,
            "login": period.api_login,
            "start": period.start,
            "end": period.end,
            "prefix": period.prefix,
            "pattern": period.like_pattern(),
        },
    )


_DAYS = """
SELECT day,
       coalesce(sum(n) FILTER (WHERE kind = 'api'), 0),
       coalesce(sum(n) FILTER (WHERE kind = 'warehouse'), 0),
       count(*) FILTER (WHERE kind = 'missing'),
       count(*) FILTER (WHERE kind = 'extra'),
       count(*) FILTER (WHERE kind = 'different')
FROM verify_outcome GROUP BY day ORDER BY day NULLS LAST
"""

_EXAMPLES = """
SELECT kind, i_cdr, day, columns FROM (
    SELECT *, row_number() OVER (PARTITION BY kind ORDER BY i_cdr) AS rank
    FROM verify_outcome WHERE i_cdr IS NOT NULL
) ranked WHERE rank <= %s ORDER BY kind, i_cdr
"""


def read_days(conn: psycopg.Connection[Any]) -> tuple[DayCounts, ...]:
    rows = conn.execute(_DAYS).fetchall()
    return tuple(DayCounts(row[0], *(int(value) for value in row[1:])) for row in rows)


def read_examples(conn: psycopg.Connection[Any]) -> dict[str, tuple[Example, ...]]:
    found: dict[str, list[Example]] = {kind: [] for kind in KINDS}
    for kind, i_cdr, day, columns in conn.execute(_EXAMPLES, (EXAMPLES,)):
        found[kind].append(Example(int(i_cdr), day, tuple(columns or ())))
    return {kind: tuple(examples) for kind, examples in found.items()}


_UNLOADABLE = """
SELECT i_cdr, reason FROM (
    SELECT DISTINCT ON (digest) seq, i_cdr, reason FROM verify_reject ORDER BY digest, seq
) first_seen ORDER BY seq LIMIT %s
"""


def read_unloadable(conn: psycopg.Connection[Any]) -> tuple[Unloadable, ...]:
    """The first unloadable records, each payload once (as cdr_reject stores them)."""
    rows = conn.execute(_UNLOADABLE, (EXAMPLES,)).fetchall()
    return tuple(Unloadable(i_cdr, reason) for i_cdr, reason in rows)


# (CASE: the cast only where the text is a number, whatever order the planner picks)
_UNLOADABLE_STORED = """
SELECT DISTINCT c.i_cdr FROM (
    SELECT CASE WHEN btrim(i_cdr) ~ '^[0-9]{1,18}$' THEN btrim(i_cdr)::bigint END AS i_cdr
    FROM verify_reject
) r JOIN cdr c ON c.i_cdr = r.i_cdr AND c.api_login = %s
ORDER BY c.i_cdr
"""


def read_unloadable_stored(conn: psycopg.Connection[Any], api_login: str) -> tuple[int, ...]:
    """The i_cdr of unloadable records that the account holds in cdr."""
    return tuple(int(row[0]) for row in conn.execute(_UNLOADABLE_STORED, (api_login,)))


def _count(conn: psycopg.Connection[Any], query: LiteralString) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
