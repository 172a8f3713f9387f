"""Several windows at once: the watermark follows only the chain of committed windows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import Engine

from etl import pipeline, state
from etl.pipeline import WatermarkChain
from etl.simulator import Simulator
from etl.windows import Window, plan_windows
from tests.conftest import make_job, make_settings, sim_range, table_rows

START = datetime(2026, 9, 21, tzinfo=UTC)


def _commit(engine: Engine, chain: WatermarkChain, window: Window, ok: bool = True) -> None:
    with engine.begin() as sa_conn:
        conn = sa_conn.connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        chain.before_commit(conn, window)
        if not ok:
            sa_conn.rollback()
    chain.after_commit(window, ok)


def test_out_of_order_commits_advance_only_over_a_chain(sim: Simulator, engine: Engine) -> None:
    """Window 2 committing before window 1 does not move the watermark; window 1 then moves
    it over both; a failed window 4 keeps it before window 4 even after window 5 commits."""
    w1, w2, w3, w4, w5 = plan_windows(START, START + timedelta(hours=5), timedelta(hours=1))
    chain = WatermarkChain(make_job(make_settings(sim)), START)
    _commit(engine, chain, w2)
    assert state.read_watermark(engine, "buyer1", "") is None
    _commit(engine, chain, w1)
    assert state.read_watermark(engine, "buyer1", "") == w2.end
    _commit(engine, chain, w3)
    _commit(engine, chain, w4, ok=False)
    _commit(engine, chain, w5)
    assert state.read_watermark(engine, "buyer1", "") == w3.end


def test_concurrent_backfill_equals_sequential(sim: Simulator, engine: Engine) -> None:
    """Four workers load exactly what one worker loads."""
    start, end = sim_range()
    settings = replace(make_settings(sim), workers=4, window=timedelta(hours=12))
    summary = pipeline.backfill(engine, make_job(settings), start, end)
    assert summary.ok and summary.windows == 20
    stored = table_rows(engine, "SELECT i_cdr, customer_amount::text FROM cdr ORDER BY i_cdr")
    truth = sorted({(int(r["i_cdr"]), r["customer_amount"]) for r in sim.records("buyer1")})
    assert stored == truth
