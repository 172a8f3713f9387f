"""Fetch-ahead: pages are fetched while the window's transaction stages, merges and commits."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine

from etl import pipeline, prefetch, reporting
from etl.db import sqlalchemy_url
from etl.errors import ApiError, TransientDatabaseError
from etl.simulator import Simulator, SimulatorConfig
from etl.windows import plan_windows
from tests.conftest import make_job, make_settings, sim_range, table_rows


def _page(n: int) -> list[Any]:
    return [{"i_cdr": str(n)}]


def _setup(record: dict[str, Any]) -> datetime:
    return datetime.strptime(record["setup_time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def _blocked(target: threading.Thread) -> bool:
    """Whether ``target`` is still waiting a moment after it started."""
    target.join(timeout=0.3)
    return target.is_alive()


def test_stream_holds_at_most_depth_pages_then_hands_them_over_in_order() -> None:
    stream = prefetch.PageStream(depth=2)
    stream.put(_page(1))
    stream.put(_page(2))
    third = threading.Thread(target=stream.put, args=(_page(3),))
    third.start()
    assert _blocked(third), "a third page waits until the loader takes one"
    pages = iter(stream)
    assert int(next(pages)[0]["i_cdr"]) == 1
    third.join(timeout=10)
    assert not third.is_alive()
    stream.finish()
    assert [int(page[0]["i_cdr"]) for page in pages] == [2, 3]


def test_a_fetch_error_reaches_the_loader_after_the_pages_before_it() -> None:
    stream = prefetch.PageStream()
    error = ApiError("the API said no")
    stream.put(_page(7))
    stream.finish(error)
    received = []
    with pytest.raises(ApiError) as raised:
        for page in stream:
            received.append(int(page[0]["i_cdr"]))
    assert received == [7] and raised.value is error


def test_a_loader_that_goes_away_releases_its_fetcher() -> None:
    stream = prefetch.PageStream(depth=1)
    stream.put(_page(1))
    outcome: list[str] = []

    def fetcher() -> None:
        try:
            stream.put(_page(2))
            outcome.append("put")
        except prefetch.StreamClosedError:
            outcome.append("closed")

    blocked = threading.Thread(target=fetcher)
    blocked.start()
    assert _blocked(blocked)
    stream.close()
    blocked.join(timeout=10)
    assert outcome == ["closed"]


def test_a_slot_fetches_its_next_window_while_the_previous_one_waits_to_merge(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """One worker, three windows. A session holds the rollup lock of the third day, which the
    second window's rollup refresh needs (its hours reach into that day), so the second window
    waits to commit. The third window's pages are fetched all the same (fetch-ahead), and
    everything commits once the lock goes."""
    start, _ = sim_range()
    end = start + timedelta(days=3)
    settings = replace(make_settings(sim), workers=1, window=timedelta(days=1))
    job = make_job(settings)
    _w1, _w2, w3 = plan_windows(start, end, settings.window)
    third = w3.api_params(settings.api_timezone)["date_from"]
    blocker = psycopg.connect(database_url)
    day = (w3.start.date() - reporting._EPOCH_DAY).days
    blocker.execute("SELECT pg_advisory_xact_lock(%s, %s)", (reporting.LOCK_KEY, day))
    outcome: list[pipeline.RunSummary] = []
    run = threading.Thread(
        target=lambda: outcome.append(pipeline.backfill(engine, job, start, end))
    )
    run.start()
    try:
        deadline = time.monotonic() + 60
        while not sim.date_froms()[third] and time.monotonic() < deadline and run.is_alive():
            time.sleep(0.05)
        assert sim.date_froms()[third], "the third window was not fetched while the second waited"
        assert table_rows(engine, "SELECT count(*) FROM sync_window WHERE status = 'done'") == [
            (1,)
        ], "only the first window has committed so far"
    finally:
        blocker.commit()
        run.join(timeout=120)
        blocker.close()
    (summary,) = outcome
    assert summary.ok and summary.windows == 3
    in_range = [r for r in sim.records("buyer1") if _setup(r) >= start and _setup(r) <= end]
    stored = [i for (i,) in table_rows(engine, "SELECT i_cdr FROM cdr ORDER BY i_cdr")]
    assert stored == sorted(int(r["i_cdr"]) for r in in_range)


def test_concurrent_requests_never_exceed_the_workers(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    with Simulator(replace(sim_config, latency=0.03)) as sim:
        start, end = sim_range()
        settings = replace(make_settings(sim), workers=3, window=timedelta(hours=12))
        summary = pipeline.backfill(engine, make_job(settings), start, end)
        in_flight = sim.stats()["max_in_flight"]
        truth = sorted(int(r["i_cdr"]) for r in sim.records("buyer1"))
    assert summary.ok and summary.windows == 20
    assert 2 <= in_flight <= 3, f"{in_flight} requests at once with 3 workers"
    assert [i for (i,) in table_rows(engine, "SELECT i_cdr FROM cdr ORDER BY i_cdr")] == truth


def test_a_failing_loader_releases_its_fetcher_and_the_run_ends(
    sim: Simulator, database_url: str
) -> None:
    """The window's transaction cannot take its lock on ``cdr`` (lock_timeout) while its
    fetch slot has more pages to hand over: the window fails with a database error, the slot
    stops at its next page instead of fetching the whole window, and the run ends."""
    start, _ = sim_range()
    settings = replace(make_settings(sim), workers=2, page_size=20, window=timedelta(days=1))
    engine = create_engine(
        sqlalchemy_url(database_url), connect_args={"options": "-c lock_timeout=300"}
    )
    outcome: list[pipeline.RunSummary] = []
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE cdr IN ACCESS EXCLUSIVE MODE")
        run = threading.Thread(
            target=lambda: outcome.append(
                pipeline.backfill(engine, make_job(settings), start, start + timedelta(days=3))
            )
        )
        run.start()
        run.join(timeout=60)
        assert not run.is_alive(), "the run hung on a failed loader"
    engine.dispose()
    (summary,) = outcome
    # The first window's first page started the second slot; no window started after that.
    assert {type(error) for _, error in summary.failures} == {TransientDatabaseError}
    assert len(summary.failures) <= 2 and summary.windows == 0
    assert sim.requests_served <= 8, "the fetch slots stopped a page or two after the failure"
