"""Two windows merging the same i_cdr at once (TCXC_WORKERS > 1, windows sharing a boundary
second): a stored row is never overwritten by a row with another call_id.

Each test stages two windows on two connections (two transactions, READ COMMITTED as the
pipeline runs them). A merges and holds its row locks; B's merge, in a thread, blocks on the
i_cdr both staged; A commits; B's merge returns and B commits. Neither merge's snapshot saw the
other's row, so B only meets A's committed row in its upsert's ON CONFLICT path.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from etl import load
from etl.normalize import Normalizer
from etl.simulator.data import generate, icdr_bucket, make_profile
from tests.conftest import wait_until_blocked

LOGIN = "buyer1"
NORMALIZER = Normalizer(LOGIN, ZoneInfo("UTC"))
_TABLE = generate(
    make_profile(LOGIN, 0, icdr_bucket(LOGIN)), 6, datetime(2026, 9, 1), datetime(2026, 9, 2)
)
RECORDS: list[dict[str, Any]] = [_TABLE.record(i) for i in range(len(_TABLE))]
# The i_cdr both windows stage (A's version), a row already stored before either window, and
# rows that only one window holds.
SHARED, STORED, ONLY_A, ONLY_B = RECORDS[0], RECORDS[1], RECORDS[2], RECORDS[3]
OTHER_CALL_ID = "f" * 32


def _stage(conn: psycopg.Connection[Any], records: Sequence[dict[str, Any]]) -> None:
    load.open_stage(conn)
    page = NORMALIZER.normalize_page(records)
    assert not page.rejects
    load.stage_text(conn, page.copy_text)


def _merge_alone(database_url: str, records: Sequence[dict[str, Any]]) -> load.MergeCounts:
    """One window merged and committed with nothing running beside it."""
    with psycopg.connect(database_url) as conn:
        _stage(conn, records)
        return load.merge(conn, None)  # type: ignore[arg-type]  # no run row here


def _race(
    database_url: str, window_a: Sequence[dict[str, Any]], window_b: Sequence[dict[str, Any]]
) -> tuple[load.MergeCounts, load.MergeCounts]:
    """A merges (uncommitted); B merges and blocks on A's row; A commits; B commits."""
    with (
        psycopg.connect(database_url) as a,
        psycopg.connect(database_url) as b,
        psycopg.connect(database_url, autocommit=True) as watcher,
        ThreadPoolExecutor(1) as pool,
    ):
        _stage(a, window_a)
        _stage(b, window_b)
        merged_a = load.merge(a, None)  # type: ignore[arg-type]
        merging = pool.submit(load.merge, b, None)
        wait_until_blocked(watcher, b.info.backend_pid, merging)
        a.commit()
        merged_b = merging.result(timeout=30)
        b.commit()
    return merged_a, merged_b


def _rows(database_url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query).fetchall()


def _counts(merged: load.MergeCounts) -> tuple[int, int, int, int, int]:
    return merged.candidates, merged.inserted, merged.updated, merged.unchanged, merged.conflicts


# Which windows also hold a row stored before the race: none is the append path (every staged
# i_cdr new) for both merges; otherwise that window's merge compares with stored rows.
PRESTORED = {
    "append": (False, False),
    "b_holds_a_stored_row": (False, True),
    "both_hold_a_stored_row": (True, True),
}


def _windows(
    shared_b: dict[str, Any], prestored: tuple[bool, bool], database_url: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """A's and B's windows (B's holding ``shared_b``), the stored row merged beforehand; and
    how many of B's rows are stored and equal (unchanged) before the race."""
    in_a, in_b = prestored
    if in_a or in_b:
        assert _counts(_merge_alone(database_url, [STORED])) == (1, 1, 0, 0, 0)
    window_a = [SHARED, ONLY_A, *([STORED] if in_a else [])]
    window_b = [*([STORED] if in_b else []), shared_b, ONLY_B]
    return window_a, window_b, int(in_b)


@pytest.mark.parametrize("prestored", PRESTORED.values(), ids=PRESTORED.keys())
def test_another_call_id_committed_meanwhile_is_a_conflict(
    database_url: str, prestored: tuple[bool, bool]
) -> None:
    """B's row with another call_id does not overwrite A's: it is recorded as a conflict."""
    theirs = {**SHARED, "call_id": OTHER_CALL_ID, "customer_amount": "9.990000"}
    window_a, window_b, stored_in_b = _windows(theirs, prestored, database_url)
    merged_a, merged_b = _race(database_url, window_a, window_b)
    assert merged_a.inserted == 2 and merged_a.conflicts == 0
    # B: ONLY_B inserted, the shared i_cdr a conflict (not a candidate, as in a merge that sees
    # the stored row from the start), its stored row (if any) unchanged.
    assert _counts(merged_b) == (1 + stored_in_b, 1, 0, stored_in_b, 1)
    shared = int(SHARED["i_cdr"])
    assert _rows(
        database_url, f"SELECT call_id, customer_amount::text FROM cdr WHERE i_cdr = {shared}"
    ) == [(SHARED["call_id"], SHARED["customer_amount"])]
    conflicts = _rows(
        database_url,
        "SELECT i_cdr, api_login, kept_call_id, incoming_call_id, stored_payload->>'call_id',"
        " incoming_payload->>'call_id', incoming_payload->>'customer_amount'"
        " FROM cdr_conflict",
    )
    assert conflicts == [
        (
            shared,
            LOGIN,
            SHARED["call_id"],
            OTHER_CALL_ID,
            SHARED["call_id"],
            OTHER_CALL_ID,
            "9.990000",
        )
    ]
    stored_ids = {int(record["i_cdr"]) for record in (SHARED, ONLY_A, ONLY_B)} | (
        {int(STORED["i_cdr"])} if any(prestored) else set()
    )
    assert {row[0] for row in _rows(database_url, "SELECT i_cdr FROM cdr")} == stored_ids
    # B's window synced again, alone: the same conflict (the same payload digest, so the payload
    # recorded in the race is built as the sequential merge builds it), stored once.
    again = _merge_alone(database_url, window_b)
    assert _counts(again) == (1 + stored_in_b, 0, 0, 1 + stored_in_b, 1)
    assert _rows(database_url, "SELECT count(*) FROM cdr_conflict") == [(1,)]


def test_a_conflict_met_in_the_race_is_the_last_staged_row(database_url: str) -> None:
    """B stages the shared i_cdr twice with its call_id (latest values win), then once more
    with a third call_id: the last of its rows is the race conflict, the third call_id a
    conflict found by the merge's own snapshot; each recorded once, counted once."""
    first = {**SHARED, "call_id": OTHER_CALL_ID, "customer_amount": "1.000000"}
    last = {**first, "customer_amount": "2.000000"}
    third = {**SHARED, "call_id": "e" * 32}
    merged_a, merged_b = _race(database_url, [SHARED], [first, ONLY_B, last, third])
    assert _counts(merged_a) == (1, 1, 0, 0, 0)
    assert _counts(merged_b) == (1, 1, 0, 0, 2)
    conflicts = _rows(
        database_url,
        "SELECT kept_call_id, incoming_call_id, incoming_payload->>'customer_amount'"
        " FROM cdr_conflict ORDER BY incoming_call_id",
    )
    assert conflicts == [
        (OTHER_CALL_ID, "e" * 32, SHARED["customer_amount"]),  # B's kept call_id then
        (SHARED["call_id"], OTHER_CALL_ID, "2.000000"),
    ]
    assert _rows(database_url, f"SELECT call_id FROM cdr WHERE i_cdr = {SHARED['i_cdr']}") == [
        (SHARED["call_id"],)
    ]


@pytest.mark.parametrize("prestored", PRESTORED.values(), ids=PRESTORED.keys())
def test_the_same_row_committed_meanwhile_is_unchanged(
    database_url: str, prestored: tuple[bool, bool]
) -> None:
    """B's row equal to A's committed one: unchanged, no conflict, no write."""
    window_a, window_b, stored_in_b = _windows(SHARED, prestored, database_url)
    _, merged_b = _race(database_url, window_a, window_b)
    assert _counts(merged_b) == (2 + stored_in_b, 1, 0, 1 + stored_in_b, 0)
    assert _rows(database_url, "SELECT count(*) FROM cdr_conflict") == [(0,)]
    assert _rows(
        database_url,
        f"SELECT call_id, updated_at = loaded_at FROM cdr WHERE i_cdr = {SHARED['i_cdr']}",
    ) == [(SHARED["call_id"], True)]


@pytest.mark.parametrize("prestored", PRESTORED.values(), ids=PRESTORED.keys())
def test_new_values_with_the_same_call_id_update_the_row(
    database_url: str, prestored: tuple[bool, bool]
) -> None:
    """B's row with the same call_id and a re-rated amount: B's values win, no conflict."""
    rerated = {**SHARED, "customer_amount": "7.500000"}
    window_a, window_b, stored_in_b = _windows(rerated, prestored, database_url)
    _, merged_b = _race(database_url, window_a, window_b)
    assert _counts(merged_b) == (2 + stored_in_b, 1, 1, stored_in_b, 0)
    assert _rows(database_url, "SELECT count(*) FROM cdr_conflict") == [(0,)]
    assert _rows(
        database_url,
        f"SELECT call_id, customer_amount::text FROM cdr WHERE i_cdr = {SHARED['i_cdr']}",
    ) == [(SHARED["call_id"], "7.500000")]
