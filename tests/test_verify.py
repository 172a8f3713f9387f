"""verify: re-reads a range from the API, compares it with the warehouse and writes nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text

from etl import pipeline
from etl.budget import RequestBudget
from etl.cli.ops import format_report, what_to_do
from etl.config import Settings
from etl.errors import EtlError
from etl.simulator import Simulator, SimulatorConfig
from etl.verify import WAREHOUSE_ROWS, Example, verify_range
from tests.conftest import make_job, make_settings, run_cli, sim_env, table_rows, write_counters

TABLES = ("cdr", "cdr_reject", "cdr_conflict", "sync_state", "sync_window", "etl_run")
ROLLUPS = ("cdr_hourly", "cdr_daily", "cdr_daily_cause")
FAKE_I_CDR = 9_000_000_001
RANGE = (datetime(2026, 9, 27, tzinfo=UTC), datetime(2026, 9, 30, tzinfo=UTC))  # 3 windows


def _backfill(sim: Simulator, engine: Engine, database_url: str) -> Settings:
    settings = make_settings(sim, database_url)
    assert pipeline.backfill(engine, make_job(settings), *RANGE).ok
    return settings


def _api_ids(sim: Simulator, time_field: str = "setup_time", prefix: str = "") -> set[int]:
    """The simulator's i_cdr whose ``time_field`` is in RANGE and CLD starts with ``prefix``."""
    low, high = (moment.strftime("%Y-%m-%d %H:%M:%S") for moment in RANGE)
    return {
        int(record["i_cdr"])
        for record in sim.records("buyer1")
        if low <= record[time_field] <= high and record["CLD"].startswith(prefix)
    }


def _bad_record(sim: Simulator, i_cdr: str) -> dict[str, Any]:
    """A copy of a record of RANGE that the Normalizer rejects (duration is not a number)."""
    inside = min(_api_ids(sim))
    record = next(r for r in sim.records("buyer1") if int(r["i_cdr"]) == inside)
    return {**record, "i_cdr": i_cdr, "duration": "twelve"}


def _execute(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def _one_per_day(engine: Engine, days: int) -> list[tuple[int, date]]:
    """The lowest i_cdr of each of the first ``days`` days (by setup_time, UTC)."""
    rows = table_rows(
        engine,
        "SELECT min(i_cdr), (setup_time AT TIME ZONE 'UTC')::date FROM cdr "
        "GROUP BY 2 ORDER BY 2 LIMIT " + str(days),
    )
    return [(int(i_cdr), day) for i_cdr, day in rows]


def _plant(engine: Engine) -> tuple[tuple[int, date], tuple[int, date], tuple[int, date]]:
    """Delete one row, insert a fake one, re-rate a third: (missing, extra, different)."""
    (gone, gone_day), (changed, changed_day) = _one_per_day(engine, 2)
    _execute(engine, "DELETE FROM cdr WHERE i_cdr = :i", i=gone)
    _execute(
        engine,
        "UPDATE cdr SET customer_amount = customer_amount + 1 WHERE i_cdr = :i",
        i=changed,
    )
    _execute(
        engine,
        "INSERT INTO cdr (i_cdr, api_login, raw, cld, setup_time, connect_time, disconnect_time)"
        " VALUES (:i, 'buyer1', '{}', '4412345', '2026-09-28 12:00:00+00',"
        " '2026-09-28 12:00:05+00', '2026-09-28 12:01:00+00')",
        i=FAKE_I_CDR,
    )
    return (gone, gone_day), (FAKE_I_CDR, date(2026, 9, 28)), (changed, changed_day)


def test_clean_range_after_backfill(sim: Simulator, engine: Engine, database_url: str) -> None:
    """After a backfill every day matches, the filter field is detected, the report is clean."""
    settings = _backfill(sim, engine, database_url)
    report = verify_range(engine, make_job(settings), *RANGE)
    assert report.clean, report.summary()
    assert report.time_field.name == "setup_time"
    assert report.time_field.note.startswith("detected")
    assert report.total("api") == report.total("warehouse") == len(_api_ids(sim))
    assert len(report.days) == 3 and all(d.api == d.warehouse for d in report.days)
    assert report.tally.windows == 3


def test_planted_differences_are_named_on_their_day(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """A deleted row is missing, a fake row extra, a re-rated row different, each on its day."""
    settings = _backfill(sim, engine, database_url)
    missing, extra, different = _plant(engine)
    report = verify_range(engine, make_job(settings), *RANGE)
    assert not report.clean
    assert report.examples["missing"] == (Example(*missing),)
    assert report.examples["extra"] == (Example(*extra),)
    assert report.examples["different"] == (Example(*different, ("customer_amount",)),)
    by_day = {d.day: d for d in report.days}
    assert (
        by_day[missing[1]].missing == 1
        and by_day[missing[1]].api == by_day[missing[1]].warehouse + 1
    )
    assert by_day[extra[1]].extra == 1
    assert by_day[different[1]].different == 1
    # (the planted rows bypassed the rollup refresh: its rows for them are stale too)
    assert report.stale_rollup_rows > 0
    assert report.summary() == (
        "1 missing, 1 extra, 1 different, 0 unloadable, "
        f"{report.stale_rollup_rows} stale rollup rows"
    )
    lines = format_report(report).splitlines()
    assert f"missing 1: {missing[0]} ({missing[1]})" in lines
    assert f"extra 1: {extra[0]} ({extra[1]})" in lines
    assert f"different 1: {different[0]} ({different[1]}; customer_amount)" in lines


def test_repeats_and_a_changed_call_id(
    sim_config: SimulatorConfig, engine: Engine, database_url: str
) -> None:
    """Repeated records in the answer count once; a stored row with another call_id differs."""
    with Simulator(replace(sim_config, duplicate_every=5)) as sim:
        settings = _backfill(sim, engine, database_url)
        ((i_cdr, day),) = _one_per_day(engine, 1)
        _execute(engine, "UPDATE cdr SET call_id = 'other' WHERE i_cdr = :i", i=i_cdr)
        report = verify_range(engine, make_job(settings), *RANGE)
    assert report.tally.rows_fetched > report.total("api") == len(_api_ids(sim))
    assert report.examples["different"] == (Example(i_cdr, day, ("call_id",)),)
    assert report.total("missing") == report.total("extra") == 0
    assert "cdr_conflict" in what_to_do(report)  # a repair backfill would not apply it


def test_detects_connect_time_and_checks_a_prefix(
    sim_config: SimulatorConfig, engine: Engine, database_url: str
) -> None:
    """An API filtering on connect_time is detected; --prefix compares only matching CLDs."""
    with Simulator(replace(sim_config, filter_field="connect_time")) as sim:
        crossing = {
            **sim.records("buyer1")[0],
            "i_cdr": "999000003",
            "setup_time": "2026-09-27 23:59:58",
            "connect_time": "2026-09-28 00:00:02",
            "disconnect_time": "2026-09-28 00:01:02",
        }
        sim.publish("buyer1", crossing)  # served in the window of its connect_time only
        settings = _backfill(sim, engine, database_url)
        whole = verify_range(engine, make_job(settings), *RANGE)
        uk = verify_range(engine, make_job(settings, prefix="44"), *RANGE)
    assert whole.clean, whole.summary()
    assert whole.time_field.name == "connect_time", whole.time_field.note
    assert whole.time_field.note.startswith("detected")
    assert {d.day: d.api for d in whole.days}[date(2026, 9, 28)] > 0
    assert uk.clean, uk.summary()
    expected = _api_ids(sim, time_field="connect_time", prefix="44")
    assert 0 < uk.total("api") == uk.total("warehouse") == len(expected)


def test_extra_row_crossing_the_end_names_the_other_field(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """An extra row inside the period by setup_time only is flagged as depending on that choice."""
    settings = _backfill(sim, engine, database_url)
    _execute(
        engine,
        "INSERT INTO cdr (i_cdr, api_login, raw, setup_time, connect_time, disconnect_time)"
        " VALUES (:i, 'buyer1', '{}', '2026-09-29 23:59:59+00', '2026-09-30 00:00:09+00',"
        " '2026-09-30 00:01:00+00')",
        i=FAKE_I_CDR,
    )
    report = verify_range(engine, make_job(settings), *RANGE)
    assert report.time_field.also == ("connect_time",)
    assert report.examples["extra"] == (Example(FAKE_I_CDR, date(2026, 9, 29), ("connect_time",)),)
    assert report.boundary_extra == 1


def test_extra_rows_are_found_whatever_their_connect_time(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """The warehouse's rows of the period are found through the connect_time index, yet a row
    without a connect time, or answered long after its setup, is still counted and listed."""
    settings = _backfill(sim, engine, database_url)
    rows = {FAKE_I_CDR: None, FAKE_I_CDR + 1: "2026-09-29 22:00:00+00"}  # 34 h after its setup
    for i_cdr, connect_time in rows.items():
        _execute(
            engine,
            "INSERT INTO cdr (i_cdr, api_login, raw, setup_time, connect_time)"
            " VALUES (:i, 'buyer1', '{}', '2026-09-28 12:00:00+00', :c)",
            i=i_cdr,
            c=connect_time,
        )
    report = verify_range(engine, make_job(settings), *RANGE)
    extra = {example.i_cdr for example in report.examples["extra"]}
    assert extra == set(rows)
    assert report.total("warehouse") == report.total("api") + 2


def test_the_warehouse_rows_of_a_period_are_read_through_an_index(engine: Engine) -> None:
    """verify's warehouse side bounds the period's rows by connect_time, which the
    (connect_time, api_login) index answers: a day of a year of CDRs is read without reading
    the year (cdr has no index on setup_time, the field the API filters on here)."""
    _execute(
        engine,
        "INSERT INTO cdr (i_cdr, api_login, raw, setup_time, connect_time)"
        " SELECT g, 'buyer1', '{}', t, t + interval '5 seconds' FROM generate_series(1, 20000) g,"
        " LATERAL (SELECT timestamptz '2026-01-01' + g * interval '26 minutes' AS t) moment",
    )
    query = "EXPLAIN SELECT c.i_cdr " + WAREHOUSE_ROWS.format(field="setup_time")
    day = datetime(2026, 9, 28, tzinfo=UTC)
    params = {
        "login": "buyer1",
        "start": day,
        "end": day.replace(hour=23),
        "prefix": "",
        "pattern": "%",
    }
    with engine.begin() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("ANALYZE cdr")
        plan = [row[0] for row in driver.execute(query, params)]
    bounded = [line for line in plan if "Index Cond" in line and "connect_time >=" in line]
    assert bounded and "Seq Scan" not in "\n".join(plan), plan


def test_unloadable_records_are_listed_and_fail_the_check(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """A record the Normalizer rejects is listed once as unloadable and makes the range unclean."""
    settings = _backfill(sim, engine, database_url)
    sim.publish("buyer1", _bad_record(sim, "999000001"))
    report = verify_range(engine, make_job(settings), *RANGE)
    assert report.unloadable_count == 1 and not report.clean
    assert report.unloadable[0].i_cdr == "999000001"
    assert report.unloadable[0].reason.startswith("duration is not an integer")
    assert report.total("missing") == report.total("extra") == report.total("different") == 0


def test_verify_never_writes(sim: Simulator, engine: Engine, database_url: str) -> None:
    """Write counters and contents of every table are unchanged by a verify with differences."""
    settings = _backfill(sim, engine, database_url)
    _plant(engine)
    sim.publish("buyer1", _bad_record(sim, "999000002"))
    snapshot = "SELECT xmin::text, ctid::text, * FROM cdr ORDER BY i_cdr"
    before, rollups = table_rows(engine, snapshot), _rollups(engine)
    engine.dispose()  # closing the sessions flushes their statistics
    counters = {table: write_counters(engine, table) for table in TABLES}
    engine.dispose()
    report = verify_range(engine, make_job(settings), *RANGE)
    engine.dispose()
    assert not report.clean and report.unloadable_count == 1
    assert table_rows(engine, snapshot) == before
    engine.dispose()
    assert {table: write_counters(engine, table) for table in TABLES} == counters
    assert report.stale_rollup_rows > 0  # the planted rows bypassed the refresh...
    assert _rollups(engine) == rollups  # ...and the check of the rollup wrote nothing


def _rollups(engine: Engine) -> list[Any]:
    return [table_rows(engine, f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4, 5") for t in ROLLUPS]


def test_stale_rollup_rows_are_found_and_rebuild_rollup_clears_them(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """The rollups BI tools read are checked against a fresh aggregation of the period's
    CDRs: a changed daily figure fails verify, naming `rebuild-rollup`, which clears it."""
    _backfill(sim, engine, database_url)
    env = sim_env(sim, database_url, TCXC_WINDOW="1d")
    period = ("--from", "2026-09-27", "--to", "2026-09-30")
    assert run_cli("verify", *period, env=env).returncode == 0
    _execute(
        engine,
        "UPDATE cdr_daily SET attempts = attempts + 1"
        " WHERE ctid = (SELECT ctid FROM cdr_daily WHERE day = '2026-09-28' LIMIT 1)",
    )
    stale = run_cli("verify", *period, "--json", env=env)
    assert stale.returncode == 1 and "rebuild-rollup" in stale.stderr, stale.stderr
    assert orjson.loads(stale.stdout)["stale_rollup_rows"] == 1
    assert run_cli("rebuild-rollup", env=env).returncode == 0
    assert run_cli("verify", *period, env=env).returncode == 0


def test_cli_exit_codes_and_json(sim: Simulator, engine: Engine, database_url: str) -> None:
    """`verify` exits 0 on a clean range, 1 naming the differences; --json lists them."""
    _backfill(sim, engine, database_url)
    env = sim_env(sim, database_url, TCXC_WINDOW="1d")
    args = ("verify", "--from", "2026-09-27", "--to", "2026-09-30")
    clean = run_cli(*args, env=env)
    assert clean.returncode == 0, clean.stderr
    assert "result: clean" in clean.stdout and "setup_time" in clean.stdout
    ((missing, _day),) = _one_per_day(engine, 1)
    _execute(engine, "DELETE FROM cdr WHERE i_cdr = :i", i=missing)
    dirty = run_cli(*args, "--json", env=env)
    assert dirty.returncode == 1
    assert "1 missing, 0 extra, 0 different, 0 unloadable" in dirty.stderr
    assert len(dirty.stderr.strip().splitlines()) == 1
    data = orjson.loads(dirty.stdout)
    assert [e["i_cdr"] for e in data["examples"]["missing"]] == [missing]
    assert data["totals"]["missing"] == 1 and data["clean"] is False
    for output in (clean.stdout, clean.stderr, dirty.stdout, dirty.stderr):
        assert "key-one" not in output and "signature" not in output


def test_following_verify_advice_repairs_what_a_sync_can(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """verify's one-line advice works when followed: `backfill --repair` over the range loads
    the missing row and rewrites the changed one (which a plain backfill leaves: its digest
    still matches); the extra row stays, and the advice then names only it."""
    _backfill(sim, engine, database_url)
    _plant(engine)
    env = sim_env(sim, database_url, TCXC_WINDOW="1d")
    period = ("--from", "2026-09-27", "--to", "2026-09-30")
    dirty = run_cli("verify", *period, env=env)
    assert dirty.returncode == 1
    assert "1 missing, 1 extra, 1 different" in dirty.stderr
    assert "backfill --repair" in dirty.stderr and "delete them by hand" in dirty.stderr
    plain = run_cli("backfill", *period, env=env)
    assert plain.returncode == 0 and "inserted 1, updated 0" in plain.stdout, plain.stdout
    repair = run_cli("backfill", *period, "--repair", env=env)
    assert repair.returncode == 0 and "inserted 0, updated 1" in repair.stdout, repair.stdout
    after = run_cli("verify", *period, env=env)
    assert after.returncode == 1
    assert "0 missing, 1 extra, 0 different" in after.stderr
    assert "--repair" not in after.stderr and "delete them by hand" in after.stderr


def test_a_call_a_second_past_a_window_end_keeps_the_detection(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """Each request asks for a second past its window's end (the API's bounds may be
    exclusive): on an API whose bounds are inclusive, a call on that second comes back with
    the earlier window too, and must not be taken for a sign that no field fits."""
    base = sim.records("buyer1")[0]
    for i_cdr, day in (("999000004", "2026-09-28"), ("999000005", "2026-09-30")):  # the 2nd: past
        sim.publish(  # the range's end, read by its last request (and outside the period)
            "buyer1",
            {
                **base,
                "i_cdr": i_cdr,
                "setup_time": f"{day} 00:00:01",
                "connect_time": f"{day} 00:00:05",
                "disconnect_time": f"{day} 00:01:05",
            },
        )
    settings = _backfill(sim, engine, database_url)
    report = verify_range(engine, make_job(settings), *RANGE)
    assert report.time_field.name == "setup_time"
    assert report.time_field.note.startswith("detected"), report.time_field.note
    assert report.clean, report.summary()
    assert report.total("api") == report.total("warehouse") == len(_api_ids(sim))


def test_verify_stops_when_the_hourly_request_budget_is_spent(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """verify counts the requests the ledger holds for the last hour (a backfill's) and starts
    no window once TCXC_REQUESTS_PER_HOUR is spent: one line naming the setting, exit 1."""
    settings = _backfill(sim, engine, database_url)
    (spent,) = table_rows(engine, "SELECT sum(pages) FROM sync_window")[0]
    tight = replace(make_job(settings), budget=RequestBudget(0, int(spent) + 1))  # 1 request
    before = sim.requests_served
    with pytest.raises(EtlError, match="TCXC_REQUESTS_PER_HOUR") as caught:
        verify_range(engine, tight, *RANGE)
    assert "verify stopped after 1 of 3 window(s)" in str(caught.value)
    assert sim.requests_served - before <= 3  # the first window's pages only
    roomy = replace(make_job(settings), budget=RequestBudget(0, int(spent) + 100))
    assert verify_range(engine, roomy, *RANGE).clean


def test_an_unloadable_record_whose_i_cdr_is_stored_is_named(
    sim: Simulator, engine: Engine, database_url: str
) -> None:
    """A stored CDR that the API now sends in a form that cannot be loaded (or that an older
    version loaded under looser rules) keeps its earlier row in cdr: verify says it is held
    there, and that no sync replaces or removes it."""
    settings = _backfill(sim, engine, database_url)
    inside = str(min(_api_ids(sim)))
    sim.rerate("buyer1", inside, "not-a-number")
    sim.publish("buyer1", _bad_record(sim, "x1"))  # an i_cdr that is no number: none held
    report = verify_range(engine, make_job(settings), *RANGE)
    assert report.unloadable_count == 2 and report.unloadable_stored == (int(inside),)
    assert "1 held in cdr" in report.summary()
    assert "held in cdr" in what_to_do(report) and inside in what_to_do(report)
