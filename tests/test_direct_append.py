"""Pages of new rows go straight into ``cdr``; anything else is staged and merged, and the
window's result is the same as if every page had been staged."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from etl import load
from etl.client import ApiClient
from etl.simulator import Simulator
from etl.simulator.data import generate, icdr_bucket, make_profile
from etl.state import Counts
from etl.window_sync import Job, load_window
from etl.windows import Window
from tests.conftest import make_job, make_settings, table_rows, wait_until_blocked

LOGIN = "buyer1"
_TABLE = generate(
    make_profile(LOGIN, 0, icdr_bucket(LOGIN)), 12, datetime(2026, 9, 1), datetime(2026, 9, 2)
)
RECORDS: list[dict[str, Any]] = [_TABLE.record(i) for i in range(len(_TABLE))]
WINDOW = Window(datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 9, 2, tzinfo=UTC))


def _with(record: dict[str, Any], **changes: str) -> dict[str, Any]:
    return {**record, **changes}


def _load(conn: psycopg.Connection[Any], job: Job, pages: Sequence[list[Any]]) -> Counts:
    return load_window(conn, job, WINDOW, None, pages)  # type: ignore[arg-type]  # no run row


def _staged(conn: psycopg.Connection[Any]) -> bool:
    """Whether this transaction created the staging table."""
    row = conn.execute("SELECT to_regclass('pg_temp.stage_cdr') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _stored(engine: Engine) -> dict[int, tuple[str, str]]:
    rows = table_rows(engine, "SELECT i_cdr, call_id, customer_amount::text FROM cdr")
    return {i_cdr: (call_id, amount) for i_cdr, call_id, amount in rows}


def _expected(*records: dict[str, Any]) -> dict[int, tuple[str, str]]:
    return {int(r["i_cdr"]): (r["call_id"], r["customer_amount"]) for r in records}


def test_pages_of_new_rows_never_touch_the_staging_table(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    job = make_job(make_settings(sim))
    with psycopg.connect(database_url) as conn:
        counts = _load(conn, job, [RECORDS[:6], RECORDS[6:], []])
        assert not _staged(conn)
    assert (counts.inserted, counts.updated, counts.pages, counts.rows_fetched) == (12, 0, 3, 12)
    assert _stored(engine) == _expected(*RECORDS)


def test_once_a_page_is_staged_the_rest_follow_so_the_last_occurrence_wins(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """Page 1 is new (straight in). Page 2 re-rates a row of page 1 (staged) and brings X.
    Page 3 brings X again, re-rated, and a new row: were it loaded straight in, the merge of
    page 2 would then overwrite X with the older amount."""
    job = make_job(make_settings(sim))
    a, x, y = RECORDS[0], RECORDS[6], RECORDS[7]
    a2 = _with(a, customer_amount="9.000001")
    x3 = _with(x, customer_amount="7.000003")
    with psycopg.connect(database_url) as conn:
        counts = _load(conn, job, [RECORDS[:3], [a2, x], [x3, y], []])
        assert _staged(conn)
    assert _stored(engine) == _expected(a2, RECORDS[1], RECORDS[2], x3, y)
    assert (counts.inserted, counts.updated, counts.conflicts) == (5, 1, 0)


def test_a_page_repeating_an_i_cdr_is_staged_and_deduplicated(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    job = make_job(make_settings(sim))
    b2 = _with(RECORDS[1], customer_amount="3.000002")
    with psycopg.connect(database_url) as conn:
        counts = _load(conn, job, [[RECORDS[0], RECORDS[1], b2], []])
        assert _staged(conn)
    assert _stored(engine) == _expected(RECORDS[0], b2)
    assert counts.inserted == 2


@pytest.mark.parametrize("differs", ["call_id", "login"])
def test_a_row_another_window_holds_uncommitted_is_staged_then_a_conflict(
    sim: Simulator, engine: Engine, database_url: str, differs: str
) -> None:
    """Windows A and B both hold X (a shared boundary second, or two accounts served the same
    CDR), B's with another call_id or under another login. A loaded X straight in and has not
    committed; B's page looks new to B, so B's COPY waits on X's primary key entry, fails when
    A commits, and B stages the page instead: X becomes a conflict in B, and B's other row
    loads."""
    job = make_job(make_settings(sim))
    x, only_b = RECORDS[0], RECORDS[1]
    x_b = _with(x, call_id="f" * 32) if differs == "call_id" else x
    job_b = job if differs == "call_id" else replace(job, client=ApiClient(sim.url, "b2", "k"))
    with (
        psycopg.connect(database_url) as conn_a,
        psycopg.connect(database_url) as conn_b,
        psycopg.connect(database_url, autocommit=True) as watcher,
        ThreadPoolExecutor(1) as pool,
    ):
        counts_a = _load(conn_a, job, [[x], []])
        assert not _staged(conn_a)
        loading = pool.submit(_load, conn_b, job_b, [[x_b, only_b], []])
        wait_until_blocked(watcher, conn_b.info.backend_pid, loading)
        conn_a.commit()
        counts_b = loading.result(timeout=60)
        assert _staged(conn_b)
        conn_b.commit()
    assert counts_a.inserted == 1
    assert (counts_b.inserted, counts_b.updated, counts_b.conflicts) == (1, 0, 1)
    assert _stored(engine) == _expected(x, only_b)
    logins = dict(table_rows(engine, "SELECT i_cdr, api_login FROM cdr"))
    assert logins[int(x["i_cdr"])] == LOGIN, "the row stays with the account that loaded it"
    conflicts = table_rows(engine, "SELECT i_cdr, api_login, incoming_call_id FROM cdr_conflict")
    assert conflicts == [(int(x["i_cdr"]), job_b.api_login, x_b["call_id"])]


def test_distinct_ids_takes_only_pages_of_distinct_digit_ids() -> None:
    assert load.distinct_ids([{"i_cdr": "12"}, {"i_cdr": "3"}]) == [12, 3]
    assert load.distinct_ids([{"i_cdr": "3"}, {"i_cdr": "003"}]) is None  # the same bigint
    assert load.distinct_ids([{"i_cdr": "1.5"}]) is None
    assert load.distinct_ids([{"call_id": "x"}]) is None
    assert load.distinct_ids(["not a record"]) is None
    assert load.distinct_ids([]) is None


def test_with_only_extra_fields_kept_raw_new_pages_still_go_straight_in(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    job = make_job(replace(make_settings(sim), raw_payload="extra"))
    odd = _with(RECORDS[2], x_new_field="kept")
    with psycopg.connect(database_url) as conn:
        counts = _load(conn, job, [[*RECORDS[:2], odd], []])
        assert not _staged(conn)
    assert counts.inserted == 3
    raws = table_rows(engine, "SELECT i_cdr, raw::text FROM cdr ORDER BY i_cdr")
    assert raws == sorted(
        (int(r["i_cdr"]), '{"x_new_field": "kept"}' if r is odd else "{}")
        for r in (*RECORDS[:2], odd)
    )


def test_a_stored_cdr_served_to_another_account_is_a_conflict_not_a_move(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """Another login's window brings an i_cdr this account already holds (same call_id): it
    is recorded as a conflict and the row keeps its account (and its account's rollup)."""
    job = make_job(make_settings(sim))
    other = replace(job, client=ApiClient(sim.url, "buyer2", "k"))
    x = RECORDS[0]
    with psycopg.connect(database_url) as conn:
        _load(conn, job, [[x], []])
        conn.commit()
        counts = _load(conn, other, [[x, RECORDS[1]], []])
        conn.commit()
        again = _load(conn, other, [[x, RECORDS[1]], []])
    assert (counts.inserted, counts.updated, counts.conflicts) == (1, 0, 1)
    assert (again.inserted, again.updated, again.conflicts) == (0, 0, 1)
    logins = dict(table_rows(engine, "SELECT i_cdr, api_login FROM cdr"))
    assert logins == {int(x["i_cdr"]): LOGIN, int(RECORDS[1]["i_cdr"]): "buyer2"}
    conflicts = table_rows(engine, "SELECT i_cdr, api_login FROM cdr_conflict")
    assert conflicts == [(int(x["i_cdr"]), "buyer2")], "recorded once"
