"""A re-sync recognises pages it already holds by their records' digests (etl.rowdigest):
they are counted unchanged without being normalised, staged or merged; anything else goes
the usual way."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from etl import rowdigest
from etl.simulator import Simulator
from tests.conftest import make_job, make_settings, table_rows, write_counters
from tests.test_direct_append import RECORDS, _expected, _load, _staged, _stored, _with

PAGES = [RECORDS[:6], RECORDS[6:], []]


def _first_load(sim: Simulator, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert _load(conn, make_job(make_settings(sim)), PAGES).inserted == len(RECORDS)


def test_pages_held_alike_are_skipped(sim: Simulator, engine: Engine, database_url: str) -> None:
    _first_load(sim, database_url)
    before = write_counters(engine)
    with psycopg.connect(database_url) as conn:
        counts = _load(conn, make_job(make_settings(sim)), PAGES)
        assert not _staged(conn)  # nothing was staged, so nothing was merged
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, len(RECORDS))
    assert (counts.pages, counts.rows_fetched) == (3, len(RECORDS))
    assert write_counters(engine) == before


def test_a_changed_record_sends_its_page_through_the_merge(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    _first_load(sim, database_url)
    rerated = _with(RECORDS[7], customer_amount="5.123456")
    pages = [RECORDS[:6], [RECORDS[6], rerated, *RECORDS[8:]], []]
    with psycopg.connect(database_url) as conn:
        counts = _load(conn, make_job(make_settings(sim)), pages)
        assert _staged(conn)
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 1, len(RECORDS) - 1)
    assert _stored(engine) == _expected(*RECORDS[:7], rerated, *RECORDS[8:])


def test_rows_without_their_digest_get_it_and_stay_as_they_were(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """Rows loaded before digests existed (or by another version of the code) are merged once:
    their digest is written, their values and updated_at stay, they count as unchanged."""
    _first_load(sim, database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE cdr SET payload_digest = NULL")
    query = "SELECT i_cdr, updated_at, raw::text FROM cdr ORDER BY i_cdr"
    before = table_rows(engine, query)
    job = make_job(make_settings(sim))
    with psycopg.connect(database_url) as conn:
        counts = _load(conn, job, PAGES)
        assert _staged(conn)
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, len(RECORDS))
    assert table_rows(engine, query) == before
    assert table_rows(engine, "SELECT count(*) FROM cdr WHERE payload_digest IS NULL") == [(0,)]
    with psycopg.connect(database_url) as conn:
        assert _load(conn, job, PAGES).unchanged == len(RECORDS)
        assert not _staged(conn)


@pytest.mark.parametrize(
    "other",
    [
        ("buyer2", "UTC", "compact"),
        ("buyer1", "Europe/London", "compact"),
        ("buyer1", "UTC", "full"),
    ],
)
def test_the_digest_covers_the_account_and_the_settings(other: tuple[str, str, str]) -> None:
    record = RECORDS[0]
    mine = rowdigest.Digester("buyer1", "UTC", "compact")
    assert mine.digests([record]) == [mine.digest(record)]
    assert len(mine.digest(record)) == 16
    assert rowdigest.Digester(*other).digest(record) != mine.digest(record)


def test_the_digest_covers_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another version of the normalising code gives other digests (a stand-in version)."""
    record = RECORDS[0]
    mine = rowdigest.Digester("buyer1", "UTC", "compact").digest(record)
    monkeypatch.setattr(rowdigest, "CODE_VERSION", b"another version")
    assert rowdigest.Digester("buyer1", "UTC", "compact").digest(record) != mine


def test_records_orjson_refuses_still_get_distinct_digests() -> None:
    digester = rowdigest.Digester("buyer1", "UTC", "compact")
    big: list[Any] = [{"x": 2**70}, {"x": 2**70 + 1}, {"x": "1"}]
    digests = digester.digests(big)
    assert len(set(digests)) == 3 and digests == list(map(digester.digest, big))
