"""The proactive request budget."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from etl import state
from etl.budget import RequestBudget
from etl.passes import INCREMENTAL, run_pass
from etl.simulator import Simulator
from tests.conftest import make_job, make_settings, table_rows


class FakeClock:
    """A clock that only moves when something waits on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_per_second_budget_paces_requests() -> None:
    """At 5 requests/s, 15 requests take at least 2 s of (fake) time after the burst."""
    clock = FakeClock()
    budget = RequestBudget(per_second=5, per_hour=0, clock=clock)
    for _ in range(15):
        budget.acquire(clock.wait)
    assert clock.now - 1000.0 >= 2.0 - 1e-9
    assert clock.now - 1000.0 <= 2.0 + 0.2


def test_hourly_budget_is_a_rolling_hour() -> None:
    """The hourly budget is spent after N requests and comes back an hour later."""
    clock = FakeClock()
    budget = RequestBudget(per_second=0, per_hour=3, clock=clock)
    for _ in range(3):
        budget.acquire(clock.wait)
    assert budget.hour_exhausted()
    clock.now += 3601
    assert not budget.hour_exhausted()


def test_seeded_requests_count_against_the_hour() -> None:
    """Requests other processes made (from the ledger) count toward the hourly budget."""
    budget = RequestBudget(per_second=0, per_hour=10)
    budget.seed(10)
    assert budget.hour_exhausted()


def test_spent_budget_pauses_the_pass_and_a_later_pass_resumes(
    sim: Simulator, engine: Engine
) -> None:
    """When the hour is spent the pass ends after its window; the next one resumes."""
    settings = replace(
        make_settings(sim), start_date=datetime(2026, 9, 21), window=timedelta(days=1)
    )
    now = datetime(2026, 10, 1, 0, 10, tzinfo=UTC)
    clock = FakeClock()
    budget = RequestBudget(per_second=0, per_hour=5, clock=clock)
    job = replace(make_job(settings), budget=budget)
    first = run_pass(engine, job, INCREMENTAL, now)
    assert first.summary is not None and first.summary.status == "paused" and first.ok
    done = first.summary.windows
    assert 1 <= done < 10
    assert state.read_watermark(engine, "buyer1", "") == datetime(2026, 9, 21 + done, tzinfo=UTC)
    clock.now += 3601
    rest = run_pass(engine, replace(job, budget=RequestBudget(0, 0)), INCREMENTAL, now)
    assert rest.ok and rest.summary is not None and rest.summary.status == "succeeded"
    count = table_rows(engine, "SELECT count(*) FROM cdr")[0][0]
    assert count == len({r["i_cdr"] for r in sim.records("buyer1")})


def test_joined_windows_stay_within_the_hourly_budget(sim: Simulator, engine: Engine) -> None:
    """A window joins no more planned windows than the requests left this hour can fetch (by
    the density seen so far): the hour is overrun by at most what a planned window asks
    (2 requests: ~200 rows a day, pages of 250, the empty page), as with unjoined windows.
    Unbounded, the second window would join the 9 days left: 2 + 9 requests."""
    settings = replace(
        make_settings(sim),
        start_date=datetime(2026, 9, 21),
        window=timedelta(days=1),
        window_rows=10_000,  # the whole range at once, were it not for the budget
        workers=1,
    )
    now = datetime(2026, 10, 1, 0, 10, tzinfo=UTC)
    budget = RequestBudget(per_second=0, per_hour=7, clock=FakeClock())
    result = run_pass(engine, replace(make_job(settings), budget=budget), INCREMENTAL, now)
    assert result.summary is not None and result.summary.status == "paused"
    assert 1 < result.summary.windows < 10
    assert sim.requests_served <= 7 + 2


def test_failed_requests_count_against_the_hour_across_runs(sim: Simulator, engine: Engine) -> None:
    """An API answering every request with 429 (rate limited): each pass's window
    fails after its retries. Those requests count against the hour for the next pass (of
    this process or another: seeded from the ledger), so passes run from cron stop asking
    once the hour is spent; the ledger counted only the pages of loaded windows, so every
    pass sent its retries again."""
    settings = replace(
        make_settings(sim), start_date=datetime(2026, 9, 21), window=timedelta(days=1)
    )
    now = datetime(2026, 10, 1, 0, 10, tzinfo=UTC)
    sim.set_fault_rate(1.0, ["429"], retry_after=0.0)
    for _ in range(3):  # each pass a new process: a fresh budget seeded from the ledger
        job = replace(make_job(settings), budget=RequestBudget(per_second=0, per_hour=4))
        job.seed_budget(engine)
        run_pass(engine, job, INCREMENTAL, now)
    first_pass = 6  # the retry policy's attempts at the first window (NO_WAIT)
    assert sim.requests_served == first_pass
    ledger = table_rows(engine, "SELECT status, requests FROM sync_window")
    assert ledger == [("failed", first_pass)]


def test_requests_of_windows_abandoned_by_a_stop_count_against_the_hour(
    sim: Simulator, engine: Engine
) -> None:
    """A window abandoned by a stop (SIGTERM of a deploy, Ctrl-C) wrote no ledger row, so the
    requests it made were not counted by the next process's budget. It now leaves a row with
    status `stopped` (no rows: they rolled back) and its requests."""
    from etl import pipeline

    settings = make_settings(sim, page_size=100)
    job = make_job(settings)

    def stop_at_first_answer(event: str, _kind: str) -> None:
        if event == "api_request":
            job.stop.set()

    job = replace(job, observe=stop_at_first_answer)
    start, end = datetime(2026, 9, 21, tzinfo=UTC), datetime(2026, 9, 23, tzinfo=UTC)
    summary = pipeline.backfill(engine, job, start, end)
    assert summary.stopped and summary.windows == 0
    ledger = table_rows(engine, "SELECT status, requests, inserted FROM sync_window")
    assert [(status, inserted) for status, _n, inserted in ledger] == [("stopped", 0)]
    assert sim.requests_served > 0
    assert state.requests_last_hour(engine, "buyer1") == sim.requests_served


def test_a_stop_ends_a_pacing_wait_without_taking_a_request() -> None:
    """At a slow pace (one request per 100 s) a stop set during the wait ends it: acquire
    answers False at once and takes no request. (It used to call the stop event's wait again
    and again, which returned at once: the process spun until the token came, then sent the
    request anyway.)"""
    budget = RequestBudget(per_second=0.01, per_hour=0)
    stop = threading.Event()
    assert budget.acquire(stop.wait) is True  # the burst: at once
    stop.set()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        assert len(waits) < 3, "acquire kept waiting after the stop"
        return stop.wait(seconds)

    assert budget.acquire(wait) is False
    assert waits and waits[0] > 90  # it did wait for the pace, once
    assert budget.spent_this_hour() == 1
