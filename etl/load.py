"""Loading: set-based, never row by row.

Within one window's transaction:
1. ``open_stage`` creates a temporary staging table that drops at commit;
2. ``stage_rows`` COPYs each page's normalised rows into it (with a sequence number);
3. ``save_rejects`` stores records that failed normalisation (reason + raw payload);
4. ``merge`` deduplicates by i_cdr (the last occurrence wins), records i_cdr whose call_id
   differs from the one already held as conflicts (not applied), and upserts the rest with one
   ``INSERT ... ON CONFLICT (i_cdr) DO UPDATE ... WHERE`` the stored values differ. Rows equal
   to the stored ones are filtered out before the upsert, so a re-sync writes no row versions.
Rejects and conflicts are idempotent (unique digests), so re-syncing never duplicates them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from etl.normalize import FIELDS, ROW_COLUMNS

STAGE = "stage_cdr"
DATA_COLUMNS: tuple[str, ...] = ROW_COLUMNS  # fields + api_login + raw
_COMPARED = DATA_COLUMNS


@dataclass(frozen=True)
class MergeCounts:
    """What one merge did."""

    candidates: int
    inserted: int
    updated: int
    unchanged: int
    conflicts: int


@dataclass(frozen=True)
class Reject:
    """A record that could not be normalised."""

    api_login: str
    i_cdr: str | None
    reason: str
    raw: str


def open_stage(conn: psycopg.Connection[Any]) -> None:
    """Create this transaction's staging table (dropped at commit or rollback)."""
    conn.execute(
        f"CREATE TEMP TABLE {STAGE} (seq bigint NOT NULL, "
        f"LIKE cdr INCLUDING DEFAULTS) ON COMMIT DROP"
    )


def stage_rows(conn: psycopg.Connection[Any], rows: Iterable[Sequence[Any]], first_seq: int) -> int:
    """COPY rows of ROW_COLUMNS into the staging table; return how many were written."""
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in ("seq", *DATA_COLUMNS))
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(STAGE), columns)
    seq = first_seq
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row((seq, *row))
            seq += 1
    return seq - first_seq


def save_rejects(
    conn: psycopg.Connection[Any],
    rejects: Sequence[Reject],
    run_id: int,
    window: tuple[datetime, datetime],
) -> int:
    """Store rejected records once each (by account and payload digest)."""
    if not rejects:
        return 0
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO cdr_reject (api_login, i_cdr, reason, raw, raw_digest, run_id,"
            " window_start, window_end) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (api_login, raw_digest) DO NOTHING",
            [
                (
                    r.api_login,
                    r.i_cdr,
                    r.reason,
                    r.raw,
                    hashlib.sha256(r.raw.encode("utf-8", "surrogatepass")).hexdigest(),
                    run_id,
                    *window,
                )
                for r in rejects
            ],
        )
    return len(rejects)


def _columns(prefix: str = "", names: Sequence[str] = DATA_COLUMNS) -> str:
    return ", ".join(f"{prefix}{name}" for name in names)


_REFERENCE = f"""
CREATE TEMP TABLE stage_ref ON COMMIT DROP AS
SELECT DISTINCT ON (s.i_cdr) s.i_cdr,
       CASE WHEN c.i_cdr IS NULL THEN s.call_id ELSE c.call_id END AS call_id
FROM {STAGE} s LEFT JOIN cdr c ON c.i_cdr = s.i_cdr
ORDER BY s.i_cdr, s.seq
"""

_CONFLICTS = f"""
WITH incoming AS (
    SELECT s.i_cdr, s.seq, s.api_login, r.call_id AS kept_call_id, s.call_id AS incoming_call_id,
           to_jsonb(s) - 'seq' - 'loaded_at' - 'updated_at' AS payload
    FROM {STAGE} s JOIN stage_ref r ON r.i_cdr = s.i_cdr
    WHERE s.call_id IS DISTINCT FROM r.call_id
), bad AS (
    SELECT DISTINCT ON (i.i_cdr, md5(i.payload::text))
           i.i_cdr, i.api_login, i.kept_call_id, i.incoming_call_id,
           to_jsonb(c) AS stored_payload, i.payload AS incoming_payload,
           md5(i.payload::text) AS payload_digest
    FROM incoming i LEFT JOIN cdr c ON c.i_cdr = i.i_cdr
    ORDER BY i.i_cdr, md5(i.payload::text), i.seq
), saved AS (
    INSERT INTO cdr_conflict (i_cdr, api_login, kept_call_id, incoming_call_id,
                              stored_payload, incoming_payload, payload_digest, run_id)
    SELECT i_cdr, api_login, kept_call_id, incoming_call_id,
           stored_payload, incoming_payload, payload_digest, %(run_id)s FROM bad
    ON CONFLICT (i_cdr, payload_digest) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM bad
"""

_UPSERT = f"""
WITH latest AS (
    SELECT DISTINCT ON (s.i_cdr) s.*
    FROM {STAGE} s JOIN stage_ref r ON r.i_cdr = s.i_cdr
    WHERE s.call_id IS NOT DISTINCT FROM r.call_id
    ORDER BY s.i_cdr, s.seq DESC
), changed AS (
    SELECT l.* FROM latest l LEFT JOIN cdr c ON c.i_cdr = l.i_cdr
    WHERE c.i_cdr IS NULL
       OR ({_columns("c.", _COMPARED)}) IS DISTINCT FROM ({_columns("l.", _COMPARED)})
), upserted AS (
    INSERT INTO cdr ({_columns()})
    SELECT {_columns()} FROM changed
    ON CONFLICT (i_cdr) DO UPDATE SET
        {", ".join(f"{name} = EXCLUDED.{name}" for name in DATA_COLUMNS if name != "i_cdr")},
        updated_at = now()
    WHERE ({_columns("cdr.", _COMPARED)}) IS DISTINCT FROM ({_columns("EXCLUDED.", _COMPARED)})
    RETURNING (xmax = 0) AS inserted
)
SELECT (SELECT count(*) FROM latest),
       count(*) FILTER (WHERE inserted),
       count(*) FILTER (WHERE NOT inserted)
FROM upserted
"""


def merge(conn: psycopg.Connection[Any], run_id: int) -> MergeCounts:
    """Merge the staging table into ``cdr``; see the module docstring."""
    with conn.cursor() as cur:
        cur.execute(_REFERENCE)
        cur.execute(_CONFLICTS, {"run_id": run_id})
        conflicts = _scalar(cur.fetchone())
        cur.execute(_UPSERT)
        row = cur.fetchone()
        assert row is not None
        candidates, inserted, updated = (int(value) for value in row)
        cur.execute("DROP TABLE stage_ref")
    return MergeCounts(
        candidates=candidates,
        inserted=inserted,
        updated=updated,
        unchanged=candidates - inserted - updated,
        conflicts=conflicts,
    )


def _scalar(row: Any) -> int:
    assert row is not None
    return int(row[0])


assert FIELDS[0] == "i_cdr"
