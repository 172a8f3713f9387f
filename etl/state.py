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
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.sql import func

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


def start_run(
    engine: Engine, command: str, api_login: str | None, start: datetime, end: datetime
) -> int:
    """Insert a run row with status 'running' and return its id (committed at once)."""
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(etl_run)
            .values(command=command, api_login=api_login, range_start=start, range_end=end)
            .returning(etl_run.c.id)
        ).scalar_one()
    return int(run_id)


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
    rows_fetched, inserted, updated, unchanged, rejected, conflicts, duration_s, error)
VALUES (%(run_id)s, %(api_login)s, %(prefix)s, %(start)s, %(end)s, %(status)s, %(pages)s,
    %(rows_fetched)s, %(inserted)s, %(updated)s, %(unchanged)s, %(rejected)s, %(conflicts)s,
    %(duration_s)s, %(error)s)
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
) -> None:
    """Write one window's ledger row on ``conn`` (inside the caller's transaction)."""
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


def windows_done(engine: Engine, run_ids: list[int]) -> set[tuple[datetime, datetime]]:
    """Bounds of the windows that these runs committed."""
    if not run_ids:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_window.c.window_start, sync_window.c.window_end).where(
                sync_window.c.run_id.in_(run_ids), sync_window.c.status == "done"
            )
        ).all()
    return {(row[0], row[1]) for row in rows}
