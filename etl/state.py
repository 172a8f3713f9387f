"""Sync state and run history: the run log, the per-window ledger and the watermark.

A successful window's ledger row (and, for incremental passes, the watermark) is written on
the same connection and in the same transaction as the window's rows, so sync state can
never claim data that was not committed. A failed window is recorded afterwards in its own
transaction, once the window's work has been rolled back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.sql import func

from etl.config import Settings
from etl.schema import etl_run, sync_state, sync_window
from etl.windows import Window


@dataclass
class Counts:
    """Row and page counts of a window or a run."""

    pages: int = 0
    rows_fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    conflicts: int = 0

    def add(self, other: Counts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def row_settings(settings: Settings) -> str:
    """The settings that decide the rows a sync writes from the same records: the API's time
    zone (what instant each naive time is) and what ``cdr.raw`` keeps. Kept with each run, so
    that a resumed backfill skips only windows read under the same."""
    return f"api_timezone={settings.api_timezone.key} raw_payload={settings.raw_payload}"


def start_run(
    engine: Engine,
    command: str,
    api_login: str | None,
    start: datetime | None,
    end: datetime | None,
    settings: str | None = None,
    prefix: str | None = None,
    finishes_run: int | None = None,
) -> int:
    """Insert a run row with status 'running' and return its id (committed at once);
    ``settings``: its ``row_settings``; ``prefix``: the destination prefix it syncs;
    ``finishes_run``: the unfinished deep pass a deep-sync run finishes."""
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(etl_run)
            .values(
                command=command,
                api_login=api_login,
                range_start=start,
                range_end=end,
                row_settings=settings,
                prefix=prefix,
                finishes_run=finishes_run,
            )
            .returning(etl_run.c.id)
        ).scalar_one()
    return int(run_id)


_ABANDON = text("""
UPDATE etl_run r
SET status = 'abandoned',
    error = 'the run ended without closing this row (its process died, or lost the database);'
            || ' the windows it committed are kept',
    windows = w.windows, pages = w.pages, rows_fetched = w.rows_fetched,
    inserted = w.inserted, updated = w.updated, unchanged = w.unchanged,
    rejected = w.rejected, conflicts = w.conflicts
FROM (
    SELECT r2.id, count(s.id) AS windows, coalesce(sum(s.pages), 0) AS pages,
           coalesce(sum(s.rows_fetched), 0) AS rows_fetched,
           coalesce(sum(s.inserted), 0) AS inserted, coalesce(sum(s.updated), 0) AS updated,
           coalesce(sum(s.unchanged), 0) AS unchanged, coalesce(sum(s.rejected), 0) AS rejected,
           coalesce(sum(s.conflicts), 0) AS conflicts
    FROM etl_run r2 LEFT JOIN sync_window s ON s.run_id = r2.id AND s.status = 'done'
    WHERE r2.api_login = :login AND r2.status = 'running'
    GROUP BY r2.id
) w
WHERE r.id = w.id
""")


def abandon_stale_runs(engine: Engine, api_login: str) -> int:
    """Mark the account's runs still 'running' as 'abandoned' (their process died), with the
    totals of the windows they committed (kept: each committed in its own transaction; a
    joined window counts as one window here, as its ledger row).

    Called by a run that holds the account's lock, so no live process owns them."""
    with engine.begin() as conn:
        result = conn.execute(_ABANDON, {"login": api_login})
    return int(result.rowcount)


def finish_run(
    engine: Engine, run_id: int, status: str, windows: int, counts: Counts, error: str | None
) -> None:
    """Close a run row with its outcome and totals."""
    with engine.begin() as conn:
        conn.execute(
            update(etl_run)
            .where(etl_run.c.id == run_id)
            .values(
                status=status,
                finished_at=func.now(),
                windows=windows,
                error=error,
                **asdict(counts),
            )
        )


_WINDOW_INSERT = """
INSERT INTO sync_window (run_id, api_login, prefix, window_start, window_end, status, pages,
    rows_fetched, inserted, updated, unchanged, rejected, conflicts, duration_s, error, requests)
VALUES (%(run_id)s, %(api_login)s, %(prefix)s, %(start)s, %(end)s, %(status)s, %(pages)s,
    %(rows_fetched)s, %(inserted)s, %(updated)s, %(unchanged)s, %(rejected)s, %(conflicts)s,
    %(duration_s)s, %(error)s, %(requests)s)
"""


def record_window(
    conn: psycopg.Connection[Any],
    run_id: int,
    api_login: str,
    prefix: str,
    window: Window,
    status: str,
    counts: Counts,
    duration_s: float,
    error: str | None = None,
    requests: int | None = None,
) -> None:
    """Write one window's ledger row on ``conn`` (inside the caller's transaction);
    ``requests``: every API request the window made (for the hourly budget)."""
    conn.execute(
        _WINDOW_INSERT,
        {
            "run_id": run_id,
            "api_login": api_login,
            "prefix": prefix,
            "start": window.start,
            "end": window.end,
            "status": status,
            "duration_s": duration_s,
            "error": error,
            "requests": requests,
            **asdict(counts),
        },
    )


def advance_watermark(
    conn: psycopg.Connection[Any], api_login: str, prefix: str, watermark: datetime
) -> None:
    """Move the account's watermark to ``watermark``, never backwards."""
    conn.execute(
        "INSERT INTO sync_state (api_login, prefix, watermark) VALUES (%s, %s, %s)"
        " ON CONFLICT (api_login, prefix) DO UPDATE"
        " SET watermark = EXCLUDED.watermark, updated_at = now()"
        " WHERE sync_state.watermark < EXCLUDED.watermark",
        (api_login, prefix, watermark),
    )


def read_watermark(engine: Engine, api_login: str, prefix: str) -> datetime | None:
    """The account's watermark, or None before its first incremental pass."""
    with engine.connect() as conn:
        value = conn.execute(
            select(sync_state.c.watermark).where(
                sync_state.c.api_login == api_login, sync_state.c.prefix == prefix
            )
        ).scalar_one_or_none()
    return value


_RESUMABLE = """
SELECT w.window_start, w.window_end
FROM sync_window w
JOIN etl_run r ON r.id = w.run_id
WHERE r.command = 'backfill' AND r.api_login = %(login)s
  AND r.range_start = %(start)s AND r.range_end = %(end)s
  AND r.status <> 'succeeded' AND r.row_settings = %(row_settings)s
  AND r.id > coalesce((
      SELECT max(ok.id) FROM etl_run ok
      WHERE ok.command = 'backfill' AND ok.api_login = %(login)s
        AND ok.range_start = %(start)s AND ok.range_end = %(end)s AND ok.status = 'succeeded'
  ), 0)
  AND w.status = 'done' AND w.prefix = %(prefix)s
  AND w.window_end <= w.finished_at - %(settle)s
"""


def backfill_windows_done(
    engine: Engine,
    api_login: str,
    prefix: str,
    start: datetime,
    end: datetime,
    settings: Settings,
) -> set[tuple[datetime, datetime]]:
    """Windows that unfinished backfills of this exact request (since the last one that
    succeeded) already committed under the same ``row_settings``: a resumed backfill skips
    them. Only windows that had settled when they committed (ended TCXC_SETTLE_LAG or more
    before) count: a window at or past "now" was committed before all its calls had shown,
    and is synced again."""
    params = {
        "login": api_login,
        "prefix": prefix,
        "start": start,
        "end": end,
        "row_settings": row_settings(settings),
        "settle": settings.settle_lag,
    }
    with engine.connect() as sa_conn:
        conn = sa_conn.connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        rows = conn.execute(_RESUMABLE, params).fetchall()
    return {(row[0], row[1]) for row in rows}


def database_now(engine: Engine, *, minute: bool = False) -> datetime:
    """The database's clock (what the ledger's times are written by); with ``minute``, the
    start of its minute (a cron tick: when a scheduled job fired)."""
    clock = "date_trunc('minute', clock_timestamp())" if minute else "clock_timestamp()"
    with engine.connect() as conn:
        moment: datetime = conn.execute(text(f"SELECT {clock}")).scalar_one()
    return moment


# Two processes' deep passes of one cron tick start within a minute of each other; one that
# started earlier read its first windows before the other was due, and does not cover it;
# nor does one that ended before the other was due (a `sync --deep` run again right after
# one: what changed in between is what it is run for). One with no end (its process died) ends
# only when the next run of the account marks it abandoned, after the other was due.
_SAME_TICK = text("""
SELECT EXISTS (
    SELECT FROM etl_run r
    WHERE r.command = 'deep-sync' AND r.api_login = :login AND r.prefix = :prefix
      AND r.finishes_run IS NULL
      AND r.started_at >= CAST(:since AS timestamptz) - interval '1 minute'
      AND (r.finished_at IS NULL OR r.finished_at >= CAST(:since AS timestamptz))
      AND (:running OR r.status <> 'running')
)""")
# A deep pass that ended without converging its period: failed windows, a spent request
# budget, a stop, or a process that died (marked 'abandoned' by the account's next run).
DEEP_INCOMPLETE = ("failed", "paused", "stopped", "abandoned")
# The last deep-sync run decides whether the deep pass completed; the last whole one (not
# the finishing of another) is what a finishing run re-plans, and windows committed since it
# began need no re-sync. (Those committed before it, by an older unfinished pass, were read
# before the late CDRs and re-rates it is there to find.) A run of no prefix (from before
# migration 0009, with no window or windows of several prefixes) counts for each prefix.
_LAST_DEEP = text("""
WITH deep AS (
    SELECT * FROM etl_run
    WHERE command = 'deep-sync' AND api_login = :login AND (prefix = :prefix OR prefix IS NULL)
), whole AS (
    SELECT id, range_start, range_end, started_at FROM deep
    WHERE finishes_run IS NULL ORDER BY id DESC LIMIT 1
)
SELECT d.id, d.status, coalesce(d.finished_at, d.started_at),
       w.id, w.range_start, w.range_end, w.started_at
FROM deep d LEFT JOIN whole w ON true ORDER BY d.id DESC LIMIT 1
""")
_COMMITTED_SINCE = text("""
SELECT window_start, window_end FROM sync_window
WHERE api_login = :login AND prefix = :prefix AND status = 'done' AND finished_at >= :since
  AND window_end > :lo AND window_start < :hi
""")


@dataclass(frozen=True)
class DeepPass:
    """The last deep pass of an account and prefix."""

    run_id: int  # the last deep-sync run: a whole pass, or the finishing of one
    status: str
    at: datetime  # when it ended (when it started, while running)
    # The last whole deep pass (the one to finish if the last run did not complete): its id,
    # the bounds of its planned windows, and when it began (windows committed since then
    # need no re-sync).
    whole_run_id: int | None
    range_start: datetime | None
    range_end: datetime | None
    unfinished_since: datetime | None

    @property
    def incomplete(self) -> bool:
        return self.status in DEEP_INCOMPLETE


def last_deep_pass(engine: Engine, api_login: str, prefix: str) -> DeepPass | None:
    """The last deep pass of the account and prefix (None: none yet)."""
    with engine.connect() as conn:
        row = conn.execute(_LAST_DEEP, {"login": api_login, "prefix": prefix}).first()
    return DeepPass(*row) if row else None


def committed_since(
    engine: Engine, api_login: str, prefix: str, since: datetime, lo: datetime, hi: datetime
) -> set[tuple[datetime, datetime]]:
    """The windows of the account and prefix committed at or after ``since`` (by any run)
    that overlap [lo, hi)."""
    params = {"login": api_login, "prefix": prefix, "since": since, "lo": lo, "hi": hi}
    with engine.connect() as conn:
        return {(row[0], row[1]) for row in conn.execute(_COMMITTED_SINCE, params)}


def deep_pass_of_the_same_tick(
    engine: Engine, api_login: str, prefix: str, since: datetime, *, running: bool
) -> bool:
    """Whether a whole deep pass of the account and prefix (not the finishing of an older one)
    of the same tick as one due at ``since`` (started at most a minute before it) has ended
    since, whatever its outcome, or, with ``running``, runs now. One that did not complete is
    finished by the account's next incremental pass, so a second whole pass would read the
    period twice; one that started earlier read its first windows before ``since``: it does
    not count."""
    params = {"login": api_login, "prefix": prefix, "since": since, "running": running}
    with engine.connect() as conn:
        return bool(conn.execute(_SAME_TICK, params).scalar_one())


def record_unstarted_run(
    engine: Engine,
    command: str,
    api_login: str,
    prefix: str,
    windows: list[Window],
    status: str,
    error: str,
) -> None:
    """A run row for a pass that ended before its first window (stopped while it waited for
    the account's lock), so that it shows as not completed."""
    run_id = start_run(engine, command, api_login, windows[0].start, windows[-1].end, None, prefix)
    finish_run(engine, run_id, status, 0, Counts(), error)


_RECENT_DENSITY = text("""
SELECT coalesce(sum(rows_fetched), 0),
       coalesce(sum(extract(epoch FROM window_end - window_start)), 0)::float8
FROM (SELECT rows_fetched, window_start, window_end FROM sync_window
      WHERE api_login = :login AND prefix = :prefix AND status = 'done'
      ORDER BY id DESC LIMIT 50) recent
""")


def recent_density(engine: Engine, api_login: str, prefix: str) -> float | None:
    """Rows per second of the account's last 50 committed windows (None: none yet)."""
    with engine.connect() as conn:
        rows, seconds = conn.execute(_RECENT_DENSITY, {"login": api_login, "prefix": prefix}).one()
    return float(rows) / seconds if seconds else None


def requests_last_hour(engine: Engine, api_login: str) -> int:
    """API requests the ledger records for the account in the last hour (every request of
    each window, failed ones and retries included; the pages of rows from before 0008)."""
    requests = func.coalesce(sync_window.c.requests, sync_window.c.pages)
    with engine.connect() as conn:
        value = conn.execute(
            select(func.coalesce(func.sum(requests), 0)).where(
                sync_window.c.api_login == api_login,
                sync_window.c.finished_at > func.now() - text("interval '1 hour'"),
            )
        ).scalar_one()
    return int(value)
