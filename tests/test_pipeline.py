"""The whole path: simulator over HTTP -> client -> normalisation -> load, on real PostgreSQL."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, text

from etl import pipeline
from etl.config import Settings
from etl.errors import AuthError, FatalApiError, ResultChangedError
from etl.simulator import Fault, Simulator, SimulatorConfig
from etl.state import Counts
from etl.verify import verify_range
from etl.windows import Window
from tests.conftest import (
    SIM_END,
    FakeClock,
    make_job,
    make_settings,
    sim_range,
    table_rows,
    write_counters,
)


def _backfill(sim: Simulator, engine: Engine, **overrides: Any) -> pipeline.RunSummary:
    settings = make_settings(sim, **overrides)
    start, end = sim_range()
    return pipeline.backfill(engine, make_job(settings), start, end)


def _api_ids(sim: Simulator, login: str = "buyer1") -> list[int]:
    return sorted({int(record["i_cdr"]) for record in sim.records(login)})


def _db_ids(engine: Engine) -> list[int]:
    return [row[0] for row in table_rows(engine, "SELECT i_cdr FROM cdr ORDER BY i_cdr")]


def test_backfill_loads_every_cdr_once(sim: Simulator, engine: Engine) -> None:
    """A backfill of the simulator's range loads exactly the CDRs the API holds."""
    summary = _backfill(sim, engine)
    assert summary.ok and summary.windows == 10
    assert _db_ids(engine) == _api_ids(sim)
    assert summary.counts.inserted == len(_api_ids(sim))
    assert summary.counts.rejected == 0 and summary.counts.conflicts == 0


def test_values_match_the_api_exactly(sim: Simulator, engine: Engine) -> None:
    """Amounts, durations and times stored equal the API's values, field by field."""
    _backfill(sim, engine)
    stored = {
        row[0]: row[1:]
        for row in table_rows(
            engine,
            "SELECT i_cdr, customer_amount::text, duration, call_id,"
            " to_char(connect_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM cdr",
        )
    }
    for record in sim.records("buyer1"):
        amount, duration, call_id, connect = stored[int(record["i_cdr"])]
        assert amount == record["customer_amount"]
        assert duration == int(record["duration"]) and call_id == record["call_id"]
        assert connect == record["connect_time"]


def test_resync_is_a_no_op(sim: Simulator, engine: Engine, database_url: str) -> None:
    """A range synced twice: identical tables, 0 inserted/updated, write counters unmoved."""
    _backfill(sim, engine)
    before = table_rows(engine, "SELECT xmin::text, ctid::text, * FROM cdr ORDER BY i_cdr")
    engine.dispose()  # closing the sessions flushes their statistics
    counters_before = write_counters(engine)
    engine.dispose()
    second = _backfill(sim, engine)
    engine.dispose()
    assert second.counts.inserted == 0 and second.counts.updated == 0
    assert second.counts.unchanged == len(_api_ids(sim))
    assert table_rows(engine, "SELECT xmin::text, ctid::text, * FROM cdr ORDER BY i_cdr") == before
    engine.dispose()
    assert write_counters(engine) == counters_before


def test_a_repair_backfill_rewrites_a_row_changed_behind_its_digest(
    sim: Simulator, engine: Engine
) -> None:
    """A stored row changed outside tcxc-etl (a manual edit, a bad restore) keeps its payload
    digest, so a plain re-sync holds its page alike and leaves the row as it is (`verify`
    lists it). `backfill --repair` compares every row with the API's values: it rewrites
    that row, and only it, with the rollup."""
    _backfill(sim, engine)
    victim = _api_ids(sim)[7]
    api_amount = next(r for r in sim.records("buyer1") if int(r["i_cdr"]) == victim)[
        "customer_amount"
    ]
    amount = f"SELECT customer_amount::text FROM cdr WHERE i_cdr = {victim}"
    spend = "SELECT sum(spend)::text FROM cdr_daily"
    spend_before = table_rows(engine, spend)
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE cdr SET customer_amount = customer_amount + 1 WHERE i_cdr = {victim}")
        )
    assert _backfill(sim, engine).counts.updated == 0  # held alike by its digest
    assert table_rows(engine, amount) != [(api_amount,)]
    engine.dispose()
    counters = write_counters(engine)
    engine.dispose()
    settings = make_settings(sim)
    repaired = pipeline.backfill(engine, make_job(settings), *sim_range(), repair=True)
    engine.dispose()
    assert repaired.ok and repaired.counts.updated == 1 and repaired.counts.inserted == 0
    assert repaired.counts.unchanged == len(_api_ids(sim)) - 1 and repaired.skipped == 0
    assert table_rows(engine, amount) == [(api_amount,)]
    assert table_rows(engine, spend) == spend_before
    inserted, updated, deleted = write_counters(engine)
    assert (inserted, updated - counters[1], deleted) == (counters[0], 1, counters[2])


def test_a_range_moved_on_by_a_day_loads_only_the_new_day(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """The API a day later (the demo run again tomorrow): the days both ranges hold come back
    unchanged, the new day is inserted, nothing is updated or in conflict."""
    with Simulator(sim_config) as sim:
        assert _backfill(sim, engine).ok
        before = set(_db_ids(engine))
    day = timedelta(days=1)
    later = replace(sim_config, end=SIM_END + day)
    with Simulator(later) as sim:
        settings = make_settings(sim)
        start, end = (moment + day for moment in sim_range())
        summary = pipeline.backfill(engine, make_job(settings), start, end)
        new = set(_api_ids(sim)) - before
    assert summary.ok and summary.counts.updated == summary.counts.conflicts == 0
    assert summary.counts.inserted == len(new) > 0
    assert _db_ids(engine) == sorted(before | new)


@pytest.mark.parametrize("order", ["asc", "desc", "shuffled"])
def test_capped_pages_and_any_order_still_yield_every_row(
    sim_config: SimulatorConfig, engine: Engine, order: str
) -> None:
    """A server returning fewer rows per page than asked, in any order, loses nothing."""
    config = replace(sim_config, max_page_size=37, order=order)
    with Simulator(config) as sim:
        summary = _backfill(sim, engine, page_size=100)
        assert summary.ok
        assert _db_ids(engine) == _api_ids(sim)


def test_records_on_window_boundaries_load_whatever_the_api_bounds(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """Calls set up exactly on a window boundary load even from an API whose date bounds are
    both exclusive (date_from < t < date_to): each window asks up to a second past its end,
    so the boundary second is inside one window's request whatever the bounds."""
    with Simulator(replace(sim_config, exclusive_bounds=True)) as sim:
        base = dict(sim.records("buyer1")[0])
        for k, day in enumerate(range(22, 26)):
            at = f"2026-09-{day} 00:00:00"
            sim.publish(
                "buyer1",
                {
                    **base,
                    "i_cdr": str(990000001 + k),
                    "call_id": f"b{k}",
                    "setup_time": at,
                    "connect_time": at,
                    "disconnect_time": at,
                },
            )
        summary = _backfill(sim, engine, window=timedelta(days=1), window_rows=0)
        assert summary.ok
        assert _db_ids(engine) == _api_ids(sim)


def test_pages_in_an_order_no_field_sorts_are_read_twice(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """A server whose pages no time field nor i_cdr sorts gives no tie to guard: a window of
    several pages is read a second time. A stable order reads the same records twice and
    loads them all (the test above); one that changes per request (ordered by the hour only,
    say) reads other records the second time, and the window fails loudly instead of
    loading what one pass happened to see."""
    with Simulator(replace(sim_config, order="unstable")) as sim:
        summary = _backfill(sim, engine, page_size=50)
        assert not summary.ok and summary.failures
        message = str(summary.failures[0][1])
        assert "not by a time field or i_cdr" in message, message
        assert _db_ids(engine) == [] or set(_db_ids(engine)) <= set(_api_ids(sim))
    with Simulator(replace(sim_config, order="shuffled")) as stable:
        before = stable.requests_served
        assert _backfill(stable, engine, page_size=50).ok
        assert _db_ids(engine) == _api_ids(stable)
        pages = stable.requests_served - before
    with Simulator(replace(sim_config, order="asc")) as ordered:
        assert _backfill(ordered, engine, page_size=50).ok
        assert ordered.requests_served < pages, "only pages no known field sorts are read twice"


@pytest.mark.parametrize(("page_size", "cap"), [(10, None), (97, None), (100, 37)])
def test_ties_cut_differently_per_request_lose_nothing(
    sim_config: SimulatorConfig, engine: Engine, page_size: int, cap: int | None
) -> None:
    """Dense traffic (several calls a second) from a server whose order leaves ties free: each
    request may cut a second shared across a page boundary differently (and may cap pages
    below what was asked). Every row loads, once, and the records re-read at the boundaries
    are not counted as rows."""
    dense = replace(
        sim_config,
        order="ties",
        cdrs=1200,  # two a second: ties everywhere, none as long as a page of 10
        start=SIM_END - timedelta(minutes=10),
        max_page_size=cap,
    )
    with Simulator(dense) as sim:
        summary = _backfill(sim, engine, page_size=page_size)
        assert summary.ok
        assert _db_ids(engine) == _api_ids(sim)
        assert summary.counts.inserted == summary.counts.rows_fetched == len(_api_ids(sim))


def test_records_gone_while_a_window_is_paged_page_it_again(
    sim: Simulator, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Two records removed before the offset while a window is paged would move one record
    past it unread: the window is paged again from its first page, in its transaction, and
    ends exact (the removed records, loaded before they went, stay: nothing is deleted)."""
    before = {int(record["i_cdr"]) for record in sim.records("buyer1")}
    sim.withdraw_while_paging(requests=1, records=2)
    with caplog.at_level(logging.WARNING, logger="etl.window_sync"):
        summary = _backfill(sim, engine, page_size=50)
    assert summary.ok
    gone = before - set(_api_ids(sim))
    assert len(gone) == 2
    assert _db_ids(engine) == sorted(before)
    assert "paging again from the first page" in caplog.text
    assert "changed while it was paged" in caplog.text
    assert summary.counts.unchanged > 0  # the pages loaded before the restart came again


def test_a_window_whose_result_keeps_changing_fails_loudly(sim: Simulator, engine: Engine) -> None:
    """Records keep going while the window is paged: after RESULT_RESTARTS restarts the
    window fails (rolled back) instead of committing as complete."""
    sim.withdraw_while_paging(requests=1000, records=2)
    summary = _backfill(sim, engine, page_size=50)
    assert not summary.ok and summary.failures and summary.windows == 0
    for window, error in summary.failures:
        assert isinstance(error, ResultChangedError)
        assert "changed while it was paged" in str(error)
        assert window.start.isoformat() in str(error)
    assert _db_ids(engine) == []  # every window rolled back


def test_an_api_that_serves_nothing_past_an_offset_fails_the_window(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """An offset limit (nothing served from offset 120 on) would end a window of 200 rows
    on an empty page after a full one: the window fails, naming the limit, instead of
    committing 120 rows as complete."""
    with Simulator(replace(sim_config, max_offset=120)) as sim:
        summary = _backfill(sim, engine, page_size=50)
    assert summary.failures and summary.windows == 0
    for _window, error in summary.failures:
        assert isinstance(error, ResultChangedError) and "offset limit" in str(error)
    assert _db_ids(engine) == []


def test_rows_repeated_within_and_across_pages_load_once(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """Duplicates inside a page and on shared window boundaries are loaded once."""
    with Simulator(replace(sim_config, duplicate_every=5)) as sim:
        summary = _backfill(sim, engine, page_size=50)
        assert summary.counts.rows_fetched > len(_api_ids(sim))
        assert _db_ids(engine) == _api_ids(sim)
        assert summary.counts.inserted == len(_api_ids(sim))


def test_malformed_record_is_rejected_and_its_page_loads(sim: Simulator, engine: Engine) -> None:
    """A bad record goes to cdr_reject with reason and payload; the good rows load."""
    good = dict(sim.records("buyer1")[0])
    bad = {**good, "i_cdr": "999000001", "duration": "twelve"}
    sim.publish("buyer1", bad)
    summary = _backfill(sim, engine)
    assert summary.ok and summary.counts.rejected == 1
    rejects = table_rows(engine, "SELECT i_cdr, reason, raw FROM cdr_reject")
    assert len(rejects) == 1
    assert rejects[0][0] == "999000001" and rejects[0][1].startswith("duration is not an integer")
    assert '"twelve"' in rejects[0][2]
    assert 999000001 not in _db_ids(engine)
    assert len(_db_ids(engine)) == len(_api_ids(sim)) - 1
    _backfill(sim, engine)
    assert len(table_rows(engine, "SELECT 1 FROM cdr_reject")) == 1, "rejects stay unique"


def test_conflicting_call_id_is_recorded_not_applied(sim: Simulator, engine: Engine) -> None:
    """A stored i_cdr arriving with another call_id is kept aside; the stored row stays."""
    _backfill(sim, engine)
    original = sim.records("buyer1")[3]
    impostor = {**original, "call_id": "f" * 32, "customer_amount": "99.000000"}
    sim.publish("buyer1", impostor)
    summary = _backfill(sim, engine)
    assert summary.counts.conflicts == 1 and summary.counts.updated == 0
    i_cdr = int(original["i_cdr"])
    stored = table_rows(
        engine, f"SELECT call_id, customer_amount::text FROM cdr WHERE i_cdr = {i_cdr}"
    )
    assert stored == [(original["call_id"], original["customer_amount"])]
    conflicts = table_rows(
        engine,
        "SELECT i_cdr, kept_call_id, incoming_call_id, stored_payload IS NOT NULL"
        " FROM cdr_conflict",
    )
    assert conflicts == [(i_cdr, original["call_id"], "f" * 32, True)]


@pytest.mark.parametrize("first_mode, second_mode", [("compact", "full"), ("full", "extra")])
def test_a_conflict_is_recorded_once_whatever_raw_payload_mode_met_it(
    sim: Simulator, engine: Engine, first_mode: str, second_mode: str
) -> None:
    """The same conflicting record met again after TCXC_RAW_PAYLOAD changed (which changes
    what ``raw`` holds, not the record) is the conflict already recorded, not a second one."""
    _backfill(sim, engine, raw_payload=first_mode)
    original = sim.records("buyer1")[3]
    impostor = {**original, "call_id": "f" * 32, "customer_amount": "99.000000"}
    sim.publish("buyer1", impostor)
    assert _backfill(sim, engine, raw_payload=first_mode).counts.conflicts == 1
    again = _backfill(sim, engine, raw_payload=second_mode)
    assert again.ok and again.counts.conflicts == 1, "met again: counted by the run"
    conflicts = table_rows(engine, "SELECT i_cdr, incoming_call_id FROM cdr_conflict")
    assert conflicts == [(int(original["i_cdr"]), "f" * 32)]


def test_a_conflict_within_one_window_keeps_both_payloads(sim: Simulator, engine: Engine) -> None:
    """Both records of a conflict arrive in the same window (nothing stored yet): the one
    kept is the stored payload of the conflict, not NULL."""
    original = sim.records("buyer1")[3]
    impostor = {**original, "call_id": "f" * 32, "customer_amount": "99.000000"}
    sim.publish("buyer1", impostor)  # served after the original, in its window
    summary = _backfill(sim, engine)
    assert summary.counts.conflicts == 1
    conflicts = table_rows(
        engine,
        "SELECT kept_call_id, incoming_call_id, stored_payload ->> 'call_id',"
        " incoming_payload ->> 'call_id' FROM cdr_conflict",
    )
    assert conflicts == [(original["call_id"], "f" * 32, original["call_id"], "f" * 32)]


def test_rerated_cdr_replaces_the_old_amount(sim: Simulator, engine: Engine) -> None:
    """A re-rated CDR (same call_id) updates the stored amount: one update, no insert."""
    _backfill(sim, engine)
    record = sim.records("buyer1")[10]
    sim.rerate("buyer1", record["i_cdr"], "1.234567")
    summary = _backfill(sim, engine)
    assert summary.counts.updated == 1 and summary.counts.inserted == 0
    amount = table_rows(
        engine, f"SELECT customer_amount::text FROM cdr WHERE i_cdr = {record['i_cdr']}"
    )
    assert amount == [("1.234567",)]


def test_wrong_key_is_an_auth_error_and_writes_nothing(sim: Simulator, engine: Engine) -> None:
    """A wrong API key stops the run with AuthError and no CDR is written."""
    from etl.config import Secret

    summary = _backfill(sim, engine, api_key=Secret("wrong"))
    assert len(summary.failures) == 1, "auth errors stop the run at the first window"
    assert isinstance(summary.failures[0][1], AuthError)
    assert "TCXC_API_KEY" in str(summary.failures[0][1])
    assert _db_ids(engine) == []
    status = table_rows(engine, "SELECT status FROM etl_run")
    assert status == [("failed",)]


def test_unrecognised_envelope_fails_the_window(sim: Simulator, engine: Engine) -> None:
    """An answer that is not the success envelope is an error, never zero rows."""
    sim.set_envelope(b'{"status": "success", "data": []}')
    summary = _backfill(sim, engine)
    assert summary.windows == 0 and len(summary.failures) == 10
    assert all(isinstance(err, FatalApiError) for _w, err in summary.failures)
    assert "unrecognised" in str(summary.failures[0][1])
    assert _db_ids(engine) == []


def test_failed_window_rolls_back_and_is_recorded(sim: Simulator, engine: Engine) -> None:
    """A window failing mid-way leaves none of its rows; the ledger says which failed."""
    sim.inject(*[Fault("error_envelope")] * 1)
    summary = _backfill(sim, engine, page_size=50)
    assert len(summary.failures) == 1 and summary.windows == 9
    failed = table_rows(
        engine, "SELECT window_start, window_end, error FROM sync_window WHERE status = 'failed'"
    )
    assert len(failed) == 1 and "There was an error" in failed[0][2]
    start, end = failed[0][0], failed[0][1]
    inside = table_rows(
        engine,
        "SELECT count(*) FROM cdr WHERE setup_time > :s AND setup_time < :e".replace(
            ":s", f"'{start.isoformat()}'"
        ).replace(":e", f"'{end.isoformat()}'"),
    )
    assert inside == [(0,)]


@pytest.mark.parametrize(
    "kinds",
    [("429", "500", "truncated", "html", "503"), ("reset", "temporary_error", "502", "slow")],
)
def test_retriable_faults_are_retried_to_completion(
    sim: Simulator, engine: Engine, kinds: tuple[str, ...]
) -> None:
    """429, 5xx, resets, truncated and HTML answers are retried; the load ends complete."""
    sim.inject(*[Fault(kind, retry_after=0, delay=0.05) for kind in kinds])
    summary = _backfill(sim, engine)
    assert summary.ok
    assert _db_ids(engine) == _api_ids(sim)


def test_exhausted_retries_fail_only_that_window(sim: Simulator, engine: Engine) -> None:
    """Past the retry budget the window fails; the other windows still load."""
    sim.inject(*[Fault("503")] * 6)
    summary = _backfill(sim, engine)
    assert len(summary.failures) == 1 and summary.windows == 9
    assert "gave up after 6 attempts" in str(summary.failures[0][1])


def test_window_and_ledger_commit_together(sim: Simulator, engine: Engine) -> None:
    """Every committed window has a 'done' ledger row, with counts that add up to the table."""
    _backfill(sim, engine)
    done = table_rows(
        engine, "SELECT count(*), sum(inserted) FROM sync_window WHERE status = 'done'"
    )
    assert done == [(10, len(_api_ids(sim)))]
    runs = table_rows(engine, "SELECT status, windows, inserted FROM etl_run")
    assert runs == [("succeeded", 10, len(_api_ids(sim)))]


def test_sim_end_is_the_range_end() -> None:
    """The fixtures agree on the simulated range (a guard for the tests above)."""
    assert sim_range()[1].replace(tzinfo=None) == SIM_END


def test_reject_with_nul_in_its_i_cdr_is_stored(sim: Simulator, engine: Engine) -> None:
    """A record whose i_cdr holds a NUL byte is rejected (escaped), not a database error."""
    sim.publish("buyer1", {**sim.records("buyer1")[0], "i_cdr": "12\x0034"})
    summary = _backfill(sim, engine)
    assert summary.ok and summary.counts.rejected == 1
    assert table_rows(engine, "SELECT i_cdr FROM cdr_reject") == [("12\\x0034",)]


JOINING = {"window": timedelta(hours=12), "window_rows": 400, "page_size": 50, "workers": 1}


def test_an_api_that_cuts_long_date_ranges_fails_joined_windows_loudly(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """An API that silently serves at most a day after date_from: a joined window of several
    days would end on its empty page with the later days never read. When a joined window's
    records stop well before its end, one request for the rest shows whether the API holds
    more there: it does, so the window fails naming the settings to change; with windows of
    a planned day and no joining, everything loads."""
    with Simulator(replace(sim_config, max_span=86_400)) as sim:
        joined = _backfill(
            sim, engine, **{**JOINING, "window": timedelta(days=1), "window_rows": 1000}
        )
        assert not joined.ok, "joined windows of several days were taken as complete"
        assert "TCXC_WINDOW_ROWS=0" in str(joined.failures[0][1])
        plain = _backfill(sim, engine, **{**JOINING, "window": timedelta(days=1), "window_rows": 0})
        assert plain.ok
        assert _db_ids(engine) == _api_ids(sim)


def test_sparse_windows_are_joined_and_still_load_every_cdr_once(
    sim: Simulator, engine: Engine
) -> None:
    """With TCXC_WINDOW_ROWS, planned windows are joined once the run has seen how many rows
    they hold: fewer windows and requests, the same rows, a ledger that tiles the range."""
    summary = _backfill(sim, engine, **JOINING)
    joined_requests = sim.requests_served
    assert summary.ok and summary.windows == 20, "windows count the planned windows covered"
    assert summary.counts.inserted == len(_api_ids(sim)) and _db_ids(engine) == _api_ids(sim)
    ledger = table_rows(
        engine, "SELECT window_start, window_end FROM sync_window WHERE status = 'done' ORDER BY 1"
    )
    assert 1 < len(ledger) < 20
    assert (ledger[0][0], ledger[-1][1]) == sim_range()
    assert all(before[1] == after[0] for before, after in pairwise(ledger))
    assert max(end - start for start, end in ledger) > JOINING["window"]
    again = _backfill(sim, engine, **{**JOINING, "window_rows": 0})
    assert again.ok and again.counts.unchanged == len(_api_ids(sim))
    assert sim.requests_served - joined_requests > joined_requests, "the fixed grid asks more"


def test_a_resumed_backfill_skips_what_joined_windows_committed(
    sim: Simulator, engine: Engine
) -> None:
    """A backfill stopped after two joined windows resumes after them: the planned windows
    they cover are skipped, the rest loaded, every CDR once."""
    settings = make_settings(sim, **JOINING)
    job, (start, end) = make_job(settings), sim_range()
    committed: list[int] = []

    def stop_after_two(_window: Window, counts: Counts | None, covers: int) -> None:
        if counts is not None:
            committed.append(covers)
        if len(committed) == 2:
            job.stop.set()

    first = pipeline.backfill(engine, job, start, end, stop_after_two)
    assert first.stopped and first.windows == sum(committed) > 2
    second = pipeline.backfill(engine, make_job(settings), start, end)
    assert second.ok and second.skipped == first.windows
    assert second.windows + second.skipped == 20
    assert first.counts.inserted + second.counts.inserted == len(_api_ids(sim))
    assert _db_ids(engine) == _api_ids(sim)


@pytest.mark.parametrize(
    "changed", [{"api_timezone": ZoneInfo("Europe/London")}, {"raw_payload": "full"}]
)
def test_a_backfill_resumed_with_other_row_settings_syncs_everything_again(
    sim: Simulator, engine: Engine, changed: dict[str, Any]
) -> None:
    """A backfill stopped, then run again with another TCXC_API_TIMEZONE (or
    TCXC_RAW_PAYLOAD): the windows the first run committed were read under the old setting
    (times an hour off, say), so none counts as done: every window is synced again."""
    settings = make_settings(sim, **JOINING)
    job, (start, end) = make_job(settings), sim_range()

    def stop_after_one(_window: Window, counts: Counts | None, _covers: int) -> None:
        if counts is not None:
            job.stop.set()

    first = pipeline.backfill(engine, job, start, end, stop_after_one)
    assert first.stopped and first.windows > 0
    again = make_job(replace(settings, **changed))
    second = pipeline.backfill(engine, again, start, end)
    assert second.ok and second.skipped == 0 and second.windows == 20
    assert _db_ids(engine) == _api_ids(sim)


def test_a_resumed_backfill_syncs_again_the_windows_it_synced_before_they_settled(
    engine: Engine,
) -> None:
    """A backfill reaching past "now" commits its last windows before their calls are all in
    (calls show once they end; later ones are still to come). Resumed later, after it did not
    finish, it must read those windows again, not skip them as done: only windows that had
    settled (TCXC_SETTLE_LAG) when they committed count as done."""
    now = datetime.now(UTC).replace(microsecond=0)  # the database's clock, for the ledger
    clock = FakeClock(now)
    live = SimulatorConfig(
        accounts={"buyer1": "key-one"}, cdrs=2000, days=2, live=True, clock=clock
    )
    with Simulator(live) as sim:
        settings = make_settings(sim, window=timedelta(hours=1))
        start, end = now - timedelta(hours=2), now + timedelta(hours=2)
        first = pipeline.backfill(engine, make_job(settings), start, end)
        assert first.ok and first.windows == 4
        with engine.begin() as conn:  # it did not finish (a window failed, say)
            conn.execute(text(f"UPDATE etl_run SET status = 'failed' WHERE id = {first.run_id}"))
        clock.now += 2 * 3600  # two hours on: the calls of its last windows have been served
        second = pipeline.backfill(engine, make_job(settings), start, end)
        low, high = (moment.strftime("%Y-%m-%d %H:%M:%S") for moment in (start, end))
        served = {int(r["i_cdr"]) for r in sim.records("buyer1") if low <= r["setup_time"] <= high}
    # the first window had settled when it committed; the second ended at "now"
    assert second.ok and second.skipped == 1 and second.counts.inserted > 0
    assert set(_db_ids(engine)) == served


def test_a_later_run_joins_windows_from_its_first_by_the_ledger_density(
    sim: Simulator, engine: Engine
) -> None:
    """The account's last committed windows say how dense it is: a later run need not sync a
    lone planned window first to find out."""
    settings = make_settings(sim, **JOINING)
    start, end = sim_range()
    middle = start + (end - start) / 2
    pipeline.backfill(engine, make_job(settings), start, middle)
    later = pipeline.backfill(engine, make_job(settings), middle, end)
    assert later.ok and later.windows == 10
    first_start, first_end = table_rows(
        engine,
        "SELECT window_start, window_end FROM sync_window WHERE status = 'done'"
        f" AND run_id = {later.run_id} ORDER BY window_start LIMIT 1",
    )[0]
    assert first_start == middle and first_end - first_start > JOINING["window"]
    assert _db_ids(engine) == _api_ids(sim)


LONDON = ZoneInfo("Europe/London")


def _calls_between(start: datetime, end: datetime, cdrs: int) -> SimulatorConfig:
    """buyer1's calls set up between two API wall-clock times."""
    return SimulatorConfig(accounts={"buyer1": "key-one"}, start=start, end=end, cdrs=cdrs)


def _hourly_in_london(sim: Simulator) -> Settings:
    """An API whose times are Europe/London's wall clock, synced in hourly windows."""
    return make_settings(sim, api_timezone=LONDON, window=timedelta(hours=1))


@pytest.mark.parametrize("exclusive", [False, True])
def test_a_backfill_across_an_autumn_change_loads_every_call_of_the_range(
    engine: Engine, exclusive: bool
) -> None:
    """An API in Europe/London, hourly windows through the night the clock goes back: the
    window ending at 01:59:59 BST must not ask only up to 01:00:00 (GMT, a second later),
    which left the repeated hour's texts unread and the run "succeeded"."""
    config = _calls_between(datetime(2025, 10, 25, 22), datetime(2025, 10, 26, 5), 3000)
    with Simulator(replace(config, exclusive_bounds=exclusive)) as sim:
        settings = _hourly_in_london(sim)
        start = datetime(2025, 10, 25, 23, 59, 59, tzinfo=LONDON)
        end = datetime(2025, 10, 26, 3, 59, 59, tzinfo=LONDON)
        summary = pipeline.backfill(engine, make_job(settings), start, end)
        low, high = "2025-10-25 23:59:59", "2025-10-26 03:59:59"
        served = {int(r["i_cdr"]) for r in sim.records("buyer1") if low <= r["setup_time"] <= high}
        report = verify_range(engine, make_job(settings), start, end)
    assert summary.ok
    assert served and served <= set(_db_ids(engine))
    assert report.clean, report
    assert report.time_field.name == "setup_time", report.time_field.note


def test_a_backfill_from_a_time_the_spring_change_skips_resumes(engine: Engine) -> None:
    """``--from`` 01:30 on the night London's clock skips 01:00-02:00: the run starts at the
    first real instant after the gap (02:00 BST) and records that; resumed, it must find its
    committed windows (it looked them up by 01:30 read as GMT, and redid everything)."""
    with Simulator(_calls_between(datetime(2026, 3, 29), datetime(2026, 3, 29, 12), 1000)) as sim:
        settings = _hourly_in_london(sim)
        job = make_job(settings)
        start = datetime(2026, 3, 29, 1, 30, tzinfo=LONDON)
        end = datetime(2026, 3, 29, 10, tzinfo=LONDON)

        def stop_midway(window: Window, counts: Counts | None, _covers: int) -> None:
            if counts is not None and window.end.hour >= 4:
                job.stop.set()

        first = pipeline.backfill(engine, job, start, end, stop_midway)
        assert first.stopped and first.windows >= 2
        second = pipeline.backfill(engine, make_job(settings), start, end)
    assert second.ok and second.skipped == first.windows
