"""Incremental and deep passes: windows, watermark, late and re-rated CDRs, locks."""

from __future__ import annotations

import itertools
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from etl import state
from etl.config import Account, Secret, Settings
from etl.locks import account_lock
from etl.passes import DEEP, INCREMENTAL, plan_deep, plan_incremental, run_pass
from etl.pipeline import backfill
from etl.simulator import Fault, Simulator, SimulatorConfig
from etl.status import account_status
from etl.windows import Window
from tests.conftest import SIM_END, FakeClock, make_job, make_settings, table_rows

NOW = datetime(2026, 10, 1, 0, 10, tzinfo=UTC)  # settle lag 10 min: passes end at 2026-10-01
START = datetime(2026, 9, 21, tzinfo=UTC)


def _settings(sim: Simulator, **overrides: Any) -> Settings:
    base = make_settings(sim, start_date=datetime(2026, 9, 21), window=timedelta(days=1))
    return replace(base, **overrides)


def _ids(engine: Engine) -> set[int]:
    return {row[0] for row in table_rows(engine, "SELECT i_cdr FROM cdr")}


def _api_ids(sim: Simulator) -> set[int]:
    return {int(r["i_cdr"]) for r in sim.records("buyer1")}


@given(
    watermark=st.none()
    | st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 1), timezones=st.just(UTC)
    ),
    hours=st.integers(1, 48),
)
def test_incremental_plan_covers_from_lookback_to_lag(
    watermark: datetime | None, hours: int
) -> None:
    """Windows run contiguously from watermark - lookback (not before the start date; the start
    date without a watermark) to now - lag."""
    settings = Settings(start_date=datetime(2026, 1, 1), window=timedelta(hours=hours))
    now = datetime(2026, 12, 2, tzinfo=UTC)
    windows = plan_incremental(watermark, now, settings)
    start_date = datetime(2026, 1, 1, tzinfo=UTC)
    first = max(watermark - settings.lookback, start_date) if watermark else start_date
    assert first - timedelta(seconds=1) < windows[0].start <= first
    assert windows[-1].end == now - settings.settle_lag
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))


def test_deep_plan_reaches_back_to_the_deep_lookback() -> None:
    """The deep pass covers [now - deep lookback, watermark] and nothing without a watermark."""
    settings = Settings()
    now = datetime(2026, 10, 1, tzinfo=UTC)
    assert plan_deep(None, now, settings) == []
    windows = plan_deep(now - timedelta(hours=1), now, settings)
    assert windows[0].start == now - timedelta(days=7)
    assert windows[-1].end == now - timedelta(hours=1)


def test_no_pass_reaches_back_before_the_start_date() -> None:
    """TCXC_START_DATE bounds every pass: the deep pass's look back and the incremental pass's
    lookback stop at it (history before it is for an explicit backfill)."""
    now = datetime(2026, 10, 1, 12, tzinfo=UTC)
    settings = Settings(start_date=datetime(2026, 9, 29), window=timedelta(hours=6))
    start = datetime(2026, 9, 29, tzinfo=UTC)
    deep = plan_deep(now - timedelta(hours=1), now, settings)
    assert deep[0].start == start and deep[-1].end == now - timedelta(hours=1)
    assert plan_incremental(start + timedelta(hours=1), now, settings)[0].start == start
    late = replace(settings, start_date=datetime(2026, 10, 1, 11))  # after the watermark
    assert plan_deep(now - timedelta(hours=2), now, late) == []


def test_first_pass_loads_everything_and_sets_the_watermark(sim: Simulator, engine: Engine) -> None:
    """From the start date to now - lag: every CDR, and the watermark at the last window's end."""
    result = run_pass(engine, make_job(_settings(sim)), INCREMENTAL, NOW)
    assert result.ok and result.summary is not None
    assert _ids(engine) == _api_ids(sim)
    assert state.read_watermark(engine, "buyer1", "") == NOW - timedelta(minutes=10)


def test_failed_window_keeps_the_watermark_and_is_retried(sim: Simulator, engine: Engine) -> None:
    """A window that fails leaves the watermark at the last committed window; the next pass
    retries from there and converges."""
    settings = _settings(sim, page_size=100)
    sim.inject(*[Fault("error_envelope")])
    first = run_pass(engine, make_job(settings), INCREMENTAL, NOW)
    assert first.summary is not None and len(first.summary.failures) == 1
    assert first.summary.windows == 0, "the very first window failed: the pass stops there"
    assert state.read_watermark(engine, "buyer1", "") is None
    assert _ids(engine) == set()
    second = run_pass(engine, make_job(settings), INCREMENTAL, NOW)
    assert second.ok
    assert _ids(engine) == _api_ids(sim)


def test_failure_mid_pass_stops_the_watermark_before_it(sim: Simulator, engine: Engine) -> None:
    """Windows after a failed one are not run, so the watermark cannot jump past it."""
    settings = _settings(sim)
    job = make_job(settings)
    ok = run_pass(engine, job, INCREMENTAL, datetime(2026, 9, 24, 0, 10, tzinfo=UTC))
    assert ok.ok
    mark = state.read_watermark(engine, "buyer1", "")
    assert mark == datetime(2026, 9, 24, tzinfo=UTC)
    sim.inject(Fault("error_envelope"))
    failed = run_pass(engine, job, INCREMENTAL, NOW)
    assert failed.summary is not None and failed.summary.failures
    assert state.read_watermark(engine, "buyer1", "") == mark
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    assert _ids(engine) == _api_ids(sim)


def _late(sim: Simulator, when: datetime, i_cdr: str) -> dict[str, Any]:
    record = dict(sim.records("buyer1")[0])
    text_time = when.strftime("%Y-%m-%d %H:%M:%S")
    record.update(
        i_cdr=i_cdr,
        call_id="a" * 32,
        setup_time=text_time,
        connect_time=text_time,
        disconnect_time=text_time,
    )
    sim.publish("buyer1", record)
    return record


def test_late_cdr_within_lookback_is_loaded_by_the_next_pass(
    sim: Simulator, engine: Engine
) -> None:
    """A CDR published late into an already-synced period within the lookback is caught."""
    settings = _settings(sim)
    assert run_pass(engine, make_job(settings), INCREMENTAL, NOW).ok
    _late(sim, NOW - timedelta(hours=1), "990000000001")
    assert 990000000001 not in _ids(engine)
    assert run_pass(engine, make_job(settings), INCREMENTAL, NOW + timedelta(minutes=15)).ok
    assert 990000000001 in _ids(engine)


def test_late_cdr_beyond_lookback_waits_for_the_deep_pass(sim: Simulator, engine: Engine) -> None:
    """Beyond the lookback only the deep pass finds a late CDR; a re-rate converges too."""
    settings = _settings(sim)
    job = make_job(settings)
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    _late(sim, NOW - timedelta(days=3), "990000000002")
    rerated = sim.records("buyer1")[-5]
    sim.rerate("buyer1", rerated["i_cdr"], "7.777777")
    assert run_pass(engine, job, INCREMENTAL, NOW + timedelta(minutes=15)).ok
    assert 990000000002 not in _ids(engine)
    watermark = state.read_watermark(engine, "buyer1", "")
    deep = run_pass(engine, job, DEEP, NOW + timedelta(minutes=20))
    assert deep.ok and deep.summary is not None
    assert 990000000002 in _ids(engine)
    amount = table_rows(
        engine, f"SELECT customer_amount::text FROM cdr WHERE i_cdr = {rerated['i_cdr']}"
    )
    assert amount == [("7.777777",)]
    assert state.read_watermark(engine, "buyer1", "") == watermark, "deep passes never move it"


def test_a_locked_account_is_skipped(sim: Simulator, engine: Engine) -> None:
    """While another run holds the account's lock, a pass skips the account."""
    with account_lock(engine, "buyer1", wait=False) as got:
        assert got
        result = run_pass(engine, make_job(_settings(sim)), INCREMENTAL, NOW)
    assert result.summary is None and result.skipped == "locked by another run"
    assert _ids(engine) == set()


def _deep_pass_in_a_thread(engine: Engine, job: Any) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(run_pass(engine, job, DEEP, NOW + timedelta(hours=1)))
    )
    thread.start()
    return thread, results


def test_a_deep_pass_waits_for_the_lock_instead_of_skipping_the_night(
    sim: Simulator, engine: Engine
) -> None:
    """The deep pass runs once a day: if it met an incremental pass holding the account's lock
    (both jobs fire at the same minute when the daemon started on a quarter hour), skipping
    would leave re-rates beyond the lookback unapplied for another day. It waits for the lock,
    then runs; a stop request ends the wait."""
    job = make_job(_settings(sim))
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    with account_lock(engine, "buyer1", wait=False) as got:  # an incremental pass, say
        assert got
        thread, results = _deep_pass_in_a_thread(engine, job)
        thread.join(timeout=3)
        assert thread.is_alive() and not results  # waiting, not skipped
    thread.join(timeout=60)
    (deep,) = results
    assert deep.ok and deep.summary is not None and deep.summary.windows > 0

    stopping = replace(job, stop=threading.Event())
    with account_lock(engine, "buyer1", wait=False):
        thread, results = _deep_pass_in_a_thread(engine, stopping)
        stopping.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and results[0].summary is None


def test_a_deep_pass_another_process_ran_meanwhile_is_not_run_twice(
    sim: Simulator, engine: Engine
) -> None:
    """Two daemons sharing the accounts fire the deep pass at the same minute: the one that
    waited for the lock finds that the other's deep pass of that account finished after it
    was due, and does not run the same re-sync again."""
    job = make_job(_settings(sim))
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    with account_lock(engine, "buyer1", wait=False):
        thread, results = _deep_pass_in_a_thread(engine, job)
        thread.join(timeout=2)
        # meanwhile the other daemon's deep pass of this account runs to its end
        other = state.start_run(engine, DEEP, "buyer1", START, NOW, prefix="")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO sync_window (run_id, api_login, prefix, window_start, window_end,"
                    " status) VALUES (:r, 'buyer1', '', :s, :e, 'done')"
                ),
                {"r": other, "s": START, "e": NOW},
            )
            conn.execute(
                text("UPDATE etl_run SET status = 'succeeded', finished_at = now() WHERE id = :r"),
                {"r": other},
            )
    thread.join(timeout=60)
    (deep,) = results
    assert deep.summary is None and deep.skipped == "done by another run since it was due"


def test_a_deep_pass_right_after_another_one_ended_runs(sim: Simulator, engine: Engine) -> None:
    """`sync --deep` run again a few seconds after one ended (say, after a re-rate was
    announced): the earlier pass ended before this one was due, it read the period before the
    re-rate, and does not cover it. (It skipped as "done by another run since it was due",
    exit 0, and the re-rate stayed unread.)"""
    job = make_job(_settings(sim))
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    later = NOW + timedelta(hours=1)
    first = run_pass(engine, job, DEEP, later)
    assert first.ok and first.summary is not None
    record = sim.records("buyer1")[-500]
    sim.rerate("buyer1", record["i_cdr"], "7.777777")
    again = run_pass(engine, job, DEEP, later)
    assert again.ok and again.summary is not None and again.summary.windows > 0, again
    amount = table_rows(engine, f"SELECT customer_amount FROM cdr WHERE i_cdr = {record['i_cdr']}")
    assert [str(value) for (value,) in amount] == ["7.777777"]


def test_a_daemon_deep_pass_firing_late_is_covered_by_its_ticks_pass(
    sim: Simulator, engine: Engine
) -> None:
    """Two daemons' deep jobs fire at the same cron tick, one a few seconds late (a paused VM,
    a clock behind): the other's whole pass began after the tick and ended before the late one
    started. Due at the tick (what the daemon passes), the late one skips; a pass due when it
    starts (`sync --deep`) runs."""
    job = make_job(_settings(sim))
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    tick = state.database_now(engine)
    other = state.start_run(engine, DEEP, "buyer1", START, NOW, prefix="")
    state.finish_run(engine, other, "succeeded", 0, state.Counts(), None)
    later = NOW + timedelta(hours=1)
    late = run_pass(engine, job, DEEP, later, due=tick)
    assert late.summary is None and late.skipped == "done by another run since it was due"
    manual = run_pass(engine, job, DEEP, later)
    assert manual.ok and manual.summary is not None and manual.summary.windows > 0


def test_watermark_never_moves_backwards(sim: Simulator, engine: Engine) -> None:
    """A pass run with an earlier clock leaves a later watermark alone."""
    settings = _settings(sim)
    assert run_pass(engine, make_job(settings), INCREMENTAL, NOW).ok
    state_before = state.read_watermark(engine, "buyer1", "")
    settings_back = replace(settings, lookback=timedelta(days=5))
    assert (
        run_pass(engine, make_job(settings_back), INCREMENTAL, NOW - timedelta(days=2)).ok is True
    )
    assert state.read_watermark(engine, "buyer1", "") == state_before
    assert START < NOW


def test_incremental_passes_follow_a_live_api(engine: Engine) -> None:
    """Against a live API (calls keep coming, each served once it ends), each incremental pass
    loads every call served by then and set up before now - settle lag; a call that was still
    going during one pass is loaded by the next, through the lookback."""
    accounts = {"buyer1": "key-one"}
    # 20 days at the live simulator's rate (2,000 calls in its 10 days of history).
    ahead = SimulatorConfig(accounts=accounts, cdrs=4000, start=SIM_END - timedelta(days=10))
    ahead = replace(ahead, end=SIM_END + timedelta(days=10))
    talking = next(
        r
        for r in Simulator(ahead).records("buyer1")
        if r["setup_time"] >= str(SIM_END) and int(r["duration"]) > 700
    )
    # The first pass runs 650 s after that call was set up: it is going, and older than the lag.
    now = datetime.fromisoformat(talking["setup_time"]).replace(tzinfo=UTC) + timedelta(seconds=650)
    clock = FakeClock(now)
    live = SimulatorConfig(accounts=accounts, cdrs=2000, days=10, live=True, clock=clock)
    with Simulator(live) as sim:
        settings = _settings(sim)
        for step in (0, 2):  # a pass now, another two hours later
            moment = now + timedelta(hours=step)
            clock.now = moment.timestamp()
            assert run_pass(engine, make_job(settings), INCREMENTAL, moment).ok
            cut = (moment - settings.settle_lag).strftime("%Y-%m-%d %H:%M:%S")
            served = {int(r["i_cdr"]) for r in sim.records("buyer1") if r["setup_time"] <= cut}
            assert _ids(engine) == served
            assert (int(talking["i_cdr"]) in served) == (step == 2)


def test_an_error_inside_the_lock_is_not_hidden_by_the_lock_connection_dying(
    engine: Engine,
) -> None:
    """The database restarting mid-window kills the lock's connection too: the error that
    ended the work (naming the account and window) is the one raised, not the failed unlock
    ("database error during locking account ...")."""

    class WindowFailed(Exception):
        pass

    with pytest.raises(WindowFailed), account_lock(engine, "buyer1", wait=False) as got:
        assert got
        with engine.begin() as other:
            other.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            )
        raise WindowFailed("database error during account buyer1, window W: connection lost")


def test_a_deep_pass_that_did_not_complete_is_finished_by_the_next_incremental_pass(
    sim: Simulator, engine: Engine
) -> None:
    """A deep window that fails (one error answer) was retried only by the next deep pass, a
    day later, and `status` said nothing. `status` now shows the deep pass as failed, and the
    next incremental pass re-syncs the deep pass's windows that nothing committed since it
    began (here: the failed one alone), which settles it."""
    settings = _settings(sim, deep_lookback=timedelta(days=7))
    job = make_job(settings)
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    later = NOW + timedelta(minutes=20)
    first_deep = plan_deep(state.read_watermark(engine, "buyer1", ""), later, settings)[0]
    _late(sim, first_deep.start + timedelta(hours=1), "990000000003")
    sim.inject(Fault("error_envelope"))  # the deep pass's first window fails
    deep = run_pass(engine, job, DEEP, later)
    assert deep.summary is not None and len(deep.summary.failures) == 1
    assert 990000000003 not in _ids(engine)
    account = Account("buyer1", Secret("k"))
    failed = account_status(engine, account, later, timedelta(days=1))
    assert failed.deep_pass_status == "failed" and failed.deep_pass_incomplete

    before = sim.stats()["requests"]
    retried = run_pass(engine, job, INCREMENTAL, later + timedelta(minutes=5))
    assert retried.ok and retried.deep_retry is not None
    assert retried.deep_retry.windows == 1, "only the window nothing re-synced since"
    assert 990000000003 in _ids(engine)
    windows = "SELECT window_start, window_end, requests FROM sync_window WHERE run_id = {}"
    (again,) = table_rows(engine, windows.format(retried.deep_retry.run_id))
    assert again[:2] == (deep.summary.failures[0][0].start, deep.summary.failures[0][0].end)
    assert retried.summary is not None
    (incremental,) = table_rows(engine, windows.format(retried.summary.run_id))
    assert sim.stats()["requests"] - before == incremental[2] + again[2], "nothing else"
    settled = account_status(engine, account, later, timedelta(days=1))
    assert settled.deep_pass_status == "succeeded" and not settled.deep_pass_incomplete
    assert run_pass(engine, job, INCREMENTAL, later + timedelta(minutes=10)).deep_retry is None


def _deep_pass_failing_its_first_window(
    sim: Simulator, engine: Engine
) -> tuple[Settings, Any, Window]:
    """An incremental pass at NOW, then a deep pass (7 days back) at NOW + 20 min whose first
    window fails (one error answer) while the others commit: the settings, the job and the
    failed window."""
    settings = _settings(sim, deep_lookback=timedelta(days=7))
    job = make_job(settings)
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    sim.inject(Fault("error_envelope"))
    deep = run_pass(engine, job, DEEP, NOW + timedelta(minutes=20))
    assert deep.summary is not None and len(deep.summary.failures) == 1
    return settings, job, deep.summary.failures[0][0]


def test_an_unfinished_deep_pass_whose_windows_were_all_synced_since_is_settled_for_free(
    sim: Simulator, engine: Engine
) -> None:
    """After an operator backfilled the failed deep window's period, the incremental pass
    records the deep pass as finished without a request of its own."""
    _, job, failed = _deep_pass_failing_its_first_window(sim, engine)
    assert backfill(engine, job, failed.start, failed.end).ok
    before = sim.stats()["requests"]
    settled = run_pass(engine, job, INCREMENTAL, NOW + timedelta(minutes=25))
    assert settled.deep_retry is not None and settled.deep_retry.status == "succeeded"
    assert settled.deep_retry.windows == 0 and settled.deep_retry.skipped == 7
    assert settled.summary is not None
    (made,) = table_rows(
        engine, f"SELECT sum(requests) FROM sync_window WHERE run_id = {settled.summary.run_id}"
    )
    assert sim.stats()["requests"] - before == made[0], "the deep retry made no request"
    assert not state.last_deep_pass(engine, "buyer1", "").incomplete


def _a_day_earlier(engine: Engine) -> None:
    """Move the runs recorded so far a day back (their start and end)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE etl_run SET started_at = started_at - interval '1 day',"
                " finished_at = finished_at - interval '1 day'"
            )
        )


def test_a_deep_pass_stopped_while_it_waits_for_the_lock_is_finished_later(
    sim: Simulator, engine: Engine
) -> None:
    """A daemon stopped while its deep pass waited for the account's lock left no run row:
    status showed the previous deep pass (succeeded) and nothing ran that night's. A stopped
    run row now shows it, and the next incremental pass syncs its windows."""
    settings = _settings(sim, deep_lookback=timedelta(days=3))
    job = make_job(settings)
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    assert run_pass(engine, job, DEEP, NOW + timedelta(minutes=5)).ok
    _a_day_earlier(engine)  # last night's (a pass of the same minute would cover the next)
    stopping = replace(job, stop=threading.Event())
    with account_lock(engine, "buyer1", wait=False):
        thread, results = _deep_pass_in_a_thread(engine, stopping)
        thread.join(timeout=2)
        stopping.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and results[0].summary is None
    last = state.last_deep_pass(engine, "buyer1", "")
    assert last is not None and last.status == "stopped" and last.incomplete
    late = _late(sim, NOW - timedelta(days=2), "990000000004")  # beyond the lookback
    finished = run_pass(engine, job, INCREMENTAL, NOW + timedelta(minutes=20))
    assert finished.deep_retry is not None and finished.deep_retry.ok
    assert int(late["i_cdr"]) in _ids(engine)
    assert not state.last_deep_pass(engine, "buyer1", "").incomplete  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("finishes_run", "status", "started_minutes_before", "skips"),
    [
        (None, "failed", 0, True),
        (None, "succeeded", 0, True),
        (None, "abandoned", 0, True),
        (1, "succeeded", 0, False),
        (None, "succeeded", 10, False),
    ],
)
def test_a_deep_pass_due_skips_only_for_a_whole_deep_pass_of_the_same_tick(
    sim: Simulator,
    engine: Engine,
    finishes_run: int | None,
    status: str,
    started_minutes_before: int,
    skips: bool,
) -> None:
    """Another daemon's deep pass of the same cron minute ended while this one waited: even
    if it failed or died, the next incremental pass finishes it, so a second whole pass would
    read the period again. But an incremental pass finishing an older deep pass (finishes_run)
    re-read only that pass's leftovers, and a deep pass that started well before this one was
    due (a `sync --deep` run while the night's pass ran) read its first windows before: the
    deep pass due now must still run (it was skipped, and status said succeeded)."""
    job = make_job(_settings(sim))
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    with account_lock(engine, "buyer1", wait=False):
        thread, results = _deep_pass_in_a_thread(engine, job)
        thread.join(timeout=2)
        other = state.start_run(
            engine, DEEP, "buyer1", START, NOW, prefix="", finishes_run=finishes_run
        )
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE etl_run SET status = :s, started_at = now() - make_interval("
                    "mins => :m), finished_at = CASE WHEN :s = 'abandoned' THEN NULL"
                    " ELSE now() END WHERE id = :r"
                ),
                {"s": status, "r": other, "m": started_minutes_before},
            )
    thread.join(timeout=60)
    (deep,) = results
    if skips:
        assert deep.summary is None and deep.skipped == "done by another run since it was due"
    else:
        assert deep.ok and deep.summary is not None and deep.summary.windows > 0


def test_finishing_a_deep_pass_reaches_back_no_further_than_a_deep_pass_would(
    sim: Simulator, engine: Engine
) -> None:
    """The windows of an unfinished deep pass that are now wholly before TCXC_START_DATE (or
    the deep lookback) are not re-synced: no pass reaches back there. With none left the
    deep pass is recorded as finished."""
    settings, _, failed = _deep_pass_failing_its_first_window(sim, engine)
    later = replace(settings, start_date=failed.end.replace(tzinfo=None))
    before = sim.stats()["requests"]
    finished = run_pass(engine, make_job(later), INCREMENTAL, NOW + timedelta(minutes=25))
    assert finished.deep_retry is not None and finished.deep_retry.status == "succeeded"
    assert finished.deep_retry.windows == 0
    assert finished.summary is not None
    windows = "SELECT window_start FROM sync_window WHERE run_id = {}"
    assert table_rows(engine, windows.format(finished.deep_retry.run_id)) == []
    incremental = f"SELECT sum(requests) FROM sync_window WHERE run_id = {finished.summary.run_id}"
    assert sim.stats()["requests"] - before == table_rows(engine, incremental)[0][0]
    assert not state.last_deep_pass(engine, "buyer1", "").incomplete  # type: ignore[union-attr]


def test_finishing_a_newer_deep_pass_rereads_what_an_older_unfinished_one_committed(
    sim: Simulator, engine: Engine
) -> None:
    """Deep pass A fails one window and commits the others; a late CDR and a re-rate then
    land in a window A committed; the next night's deep pass B is stopped before its first
    window. Finishing B skipped every window committed since A began, so neither was ever
    read (status green). It now skips only what was committed since B began."""
    _, job, _ = _deep_pass_failing_its_first_window(sim, engine)
    _a_day_earlier(engine)  # A was last night's
    late = _late(sim, NOW - timedelta(days=2), "990000000005")  # in a window A committed
    rerated = sim.records("buyer1")[-150]
    sim.rerate("buyer1", rerated["i_cdr"], "6.666666")
    stopping = replace(job, stop=threading.Event())
    stopping.stop.set()  # B: stopped before its first window (a SIGTERM, say)
    second = run_pass(engine, stopping, DEEP, NOW + timedelta(minutes=25))
    assert second.summary is not None and second.summary.stopped
    finished = run_pass(engine, job, INCREMENTAL, NOW + timedelta(minutes=30))
    assert finished.deep_retry is not None and finished.deep_retry.ok
    assert int(late["i_cdr"]) in _ids(engine)
    amount = f"SELECT customer_amount::text FROM cdr WHERE i_cdr = {rerated['i_cdr']}"
    assert table_rows(engine, amount) == [("6.666666",)]


@pytest.mark.parametrize("other_status", ["running", "succeeded", "failed"])
def test_a_deep_pass_stopped_while_another_covers_it_records_nothing(
    sim: Simulator, engine: Engine, other_status: str
) -> None:
    """Two daemons' deep passes due at the same minute: one runs, the other waits for the
    lock and is stopped (a rolling deploy). Recording the waiting one as stopped made status
    red after the running one succeeded, and the next incremental pass read its period
    again. Nothing is recorded while another whole deep pass runs or has ended since."""
    job = make_job(_settings(sim))
    assert run_pass(engine, job, INCREMENTAL, NOW).ok
    stopping = replace(job, stop=threading.Event())
    with account_lock(engine, "buyer1", wait=False):
        thread, results = _deep_pass_in_a_thread(engine, stopping)
        thread.join(timeout=2)
        other = state.start_run(engine, DEEP, "buyer1", START, NOW, prefix="")
        if other_status != "running":
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE etl_run SET status = :s, finished_at = now() WHERE id = :r"),
                    {"s": other_status, "r": other},
                )
        stopping.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive() and results[0].summary is None
    last = state.last_deep_pass(engine, "buyer1", "")
    assert last is not None and last.run_id == other, "no stopped row after the other's"
