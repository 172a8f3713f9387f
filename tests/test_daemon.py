"""Processes: concurrent syncs, the daemon and its signals, killed backfills, status, metrics;
the daemon's scheduled jobs."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
import requests
from prometheus_client import generate_latest
from sqlalchemy import Engine

from etl import state
from etl.cli.sync import daemon_passes
from etl.metrics import Metrics
from etl.passes import DEEP, INCREMENTAL
from etl.scheduler import build_scheduler
from etl.simulator import Fault, Simulator, SimulatorConfig
from tests.conftest import (
    backfill_args,
    free_port,
    make_job,
    make_settings,
    run_cli,
    sim_env,
    start_cli,
    table_rows,
)

# This file's CLI settings, on top of sim_env's.
DAEMON_ENV = {"TCXC_START_DATE": "2026-09-21", "TCXC_WINDOW": "1d"}


def _query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql).fetchall()


def _wait_for(database_url: str, sql: str, minimum: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _query(database_url, sql)[0][0] >= minimum:
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {sql} >= {minimum}")


def _truth(sim: Simulator) -> list[tuple[int, str]]:
    return sorted({(int(r["i_cdr"]), r["customer_amount"]) for r in sim.records("buyer1")})


def _table(database_url: str) -> list[tuple[Any, ...]]:
    return _query(database_url, "SELECT i_cdr, customer_amount::text FROM cdr ORDER BY i_cdr")


@pytest.fixture
def slow_sim(sim_config: SimulatorConfig) -> Iterator[Simulator]:
    """The simulator answering every request after 50 ms."""
    with Simulator(replace(sim_config, latency=0.05)) as server:
        yield server


def test_two_sync_processes_load_everything_once(sim: Simulator, database_url: str) -> None:
    """Two `sync` processes started together: both exit 0 and every CDR is loaded once."""
    env = sim_env(sim, database_url, DAEMON_ENV, TCXC_WINDOW="7d")
    first, second = start_cli("sync", env=env), start_cli("sync", env=env)
    outputs = [proc.communicate(timeout=120) for proc in (first, second)]
    assert first.returncode == 0, outputs[0][1]
    assert second.returncode == 0, outputs[1][1]
    assert _table(database_url) == _truth(sim)
    runs = _query(database_url, "SELECT status FROM etl_run WHERE command = 'sync'")
    assert all(status == "succeeded" for (status,) in runs)


def test_backfill_killed_halfway_resumes_without_refetching(
    slow_sim: Simulator, database_url: str
) -> None:
    """SIGKILL mid-backfill, run it again: finished windows are skipped, the watermark untouched."""
    env = sim_env(slow_sim, database_url, DAEMON_ENV, TCXC_PAGE_SIZE="100")
    args = ("backfill", "--from", "2026-09-21", "--to", "2026-10-01")
    proc = start_cli(*args, env=env)
    _wait_for(database_url, "SELECT count(*) FROM sync_window WHERE status = 'done'", 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    done_before = set(
        _query(database_url, "SELECT window_start FROM sync_window WHERE status = 'done'")
    )
    assert 3 <= len(done_before) < 10
    plan = run_cli(*args, "--dry-run", env=env).stdout
    assert plan.count("done ") == len(done_before) and "already done" in plan
    repair_plan = run_cli(*args, "--dry-run", "--repair", env=env).stdout
    assert repair_plan.count("todo ") == 10  # a repair resumes nothing
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert f"({len(done_before)} already done by an interrupted run)" in result.stdout
    second_run = set(
        _query(
            database_url,
            "SELECT window_start FROM sync_window WHERE run_id = (SELECT max(id) FROM etl_run)",
        )
    )
    assert second_run.isdisjoint(done_before)
    assert len(second_run) + len(done_before) == 10
    assert _table(database_url) == _truth(slow_sim)
    assert _query(database_url, "SELECT count(*) FROM sync_state") == [(0,)]


@pytest.mark.parametrize(
    "args", [("daemon",), ("backfill", "--from", "2026-09-21", "--to", "2026-09-23")]
)
def test_a_command_stuck_in_a_request_exits_1_at_the_stop_timeout(
    sim_config: SimulatorConfig, database_url: str, args: tuple[str, ...]
) -> None:
    """SIGTERM while a request hangs: the daemon (or a backfill) exits 1 once
    TCXC_STOP_TIMEOUT has passed, naming the setting, without waiting for the request (it
    could wait TCXC_READ_TIMEOUT); the open window is rolled back (nothing loaded, no window
    done, no watermark)."""
    with Simulator(replace(sim_config, latency=20.0)) as slow:
        env = sim_env(slow, database_url, DAEMON_ENV, TCXC_STOP_TIMEOUT="1s")
        proc = start_cli(*args, env=env)
        deadline = time.monotonic() + 30
        while slow.requests_served == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.requests_served > 0, "the command never sent a request"
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        waited = time.monotonic() - started
    assert proc.returncode == 1, err
    assert "TCXC_STOP_TIMEOUT" in err
    assert waited < 8, f"exited {waited:.1f} s after SIGTERM: it waited for the request"
    assert _query(database_url, "SELECT count(*) FROM cdr") == [(0,)]
    assert _query(database_url, "SELECT count(*) FROM sync_window WHERE status = 'done'") == [(0,)]
    assert _query(database_url, "SELECT count(*) FROM sync_state WHERE watermark IS NOT NULL") == [
        (0,)
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_backfill_at_a_page_boundary(
    slow_sim: Simulator, database_url: str, signum: signal.Signals
) -> None:
    """SIGTERM or SIGINT (Ctrl-C) mid-backfill: the open windows roll back, no new one
    starts, exit 1 saying to run the backfill again; run again, it resumes and loads the
    rest, every CDR once."""
    env = sim_env(slow_sim, database_url, DAEMON_ENV, TCXC_PAGE_SIZE="100")
    args = ("backfill", "--from", "2026-09-21", "--to", "2026-10-01")
    proc = start_cli(*args, env=env)
    _wait_for(database_url, "SELECT count(*) FROM sync_window WHERE status = 'done'", 1)
    started = time.monotonic()
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "backfill stopped; run the same backfill again to resume it" in err
    assert time.monotonic() - started < 15
    assert _query(database_url, "SELECT status FROM etl_run") == [("stopped",)]
    assert _query(database_url, "SELECT count(*) FROM sync_window WHERE status = 'done'")[0][0] < 10
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert _table(database_url) == _truth(slow_sim)


def test_dry_run_fetches_nothing(sim: Simulator, database_url: str) -> None:
    """`backfill --dry-run` prints the plan and sends no request."""
    before = sim.requests_served
    result = run_cli(
        *backfill_args("2026-09-21", "2026-09-24", "--dry-run"),
        env=sim_env(sim, database_url, DAEMON_ENV),
    )
    assert result.returncode == 0, result.stderr
    assert "3 window(s)" in result.stdout and result.stdout.count("todo") == 3
    assert sim.requests_served == before


def test_sigterm_stops_the_daemon_cleanly(slow_sim: Simulator, database_url: str) -> None:
    """SIGTERM mid-pass: exit 0 within the bound, and state stays consistent."""
    port = free_port()
    env = sim_env(
        slow_sim, database_url, DAEMON_ENV, TCXC_PAGE_SIZE="100", TCXC_METRICS_PORT=str(port)
    )
    proc = start_cli("daemon", env=env)
    _wait_for(database_url, "SELECT count(*) FROM sync_window WHERE status = 'done'", 2)
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "tcxc_rows_total" in metrics and "tcxc_api_requests_total" in metrics
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 15
    watermark = _query(database_url, "SELECT watermark FROM sync_state")
    done = _query(
        database_url,
        "SELECT window_start, window_end FROM sync_window WHERE status = 'done'"
        " ORDER BY window_start",
    )
    # Windows load two at a time (TCXC_WORKERS=2): one may commit after a later one did not.
    chain_end = datetime(2026, 9, 21, tzinfo=UTC)
    for start, end in done:
        if start == chain_end:
            chain_end = end
    assert watermark == [(chain_end,)], "the watermark is the end of the committed chain"
    loaded = _query(database_url, "SELECT count(*) FROM cdr")[0][0]
    inserted = _query(database_url, "SELECT sum(inserted) FROM sync_window WHERE status = 'done'")
    assert inserted == [(loaded,)], "no row outside a committed window"


def test_status_reports_and_exits_1_when_lagging(sim: Simulator, database_url: str) -> None:
    """`status --json` shows the watermark and rows; a tight lag threshold gives exit code 1."""
    env = sim_env(sim, database_url, DAEMON_ENV, TCXC_WINDOW="7d")
    assert run_cli("sync", env=env).returncode == 0
    ok = run_cli("status", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    (account,) = orjson.loads(ok.stdout)
    assert account["api_login"] == "buyer1" and account["watermark"]
    assert account["rows_loaded_24h"] == len(_truth(sim))
    assert account["failed_windows_pending"] == 0
    # (the lag alert must exceed the settle lag; the sync's watermark is 10m old)
    lagging = run_cli("status", env={**env, "TCXC_LAG_ALERT": "2s", "TCXC_SETTLE_LAG": "1s"})
    assert lagging.returncode == 1 and "buyer1" in lagging.stderr


def test_health_fails_when_lagging(sim: Simulator, database_url: str) -> None:
    """/healthz answers 503 naming the account when its lag passes the threshold."""
    port = free_port()
    env = sim_env(
        sim,
        database_url,
        DAEMON_ENV,
        TCXC_METRICS_PORT=str(port),
        TCXC_LAG_ALERT="2s",  # (more than the settle lag: lagging a second after a pass)
        TCXC_SETTLE_LAG="1s",
        TCXC_WINDOW="7d",
    )
    proc = start_cli("daemon", env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                if answer.status_code == 503:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        assert answer.status_code == 503 and answer.json()["lagging"] == ["buyer1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_a_daemon_pass_is_counted_in_metrics_without_an_error(
    sim: Simulator, database_url: str
) -> None:
    """Each pass of the daemon counts its run by kind and status in /metrics, and the job logs
    no error (the pass's result is recorded, not raised)."""
    port = free_port()
    env = sim_env(sim, database_url, DAEMON_ENV, TCXC_METRICS_PORT=str(port), TCXC_WINDOW="7d")
    proc = start_cli("daemon", env=env)
    counted = 'tcxc_runs_total{kind="sync",status="succeeded"} 1.0'
    try:
        _wait_for(database_url, "SELECT count(*) FROM etl_run WHERE status = 'succeeded'", 1)
        deadline = time.monotonic() + 30
        while counted not in (text := requests.get(f"http://127.0.0.1:{port}/metrics").text):
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "raised an exception" not in err, err


def test_a_daemon_stops_writing_once_the_database_is_migrated_past_it(
    sim: Simulator, database_url: str
) -> None:
    """An old daemon still running while a newer tcxc-etl migrates the database (it checked
    the revision only when it started) kept syncing into the newer schema. Each pass now reads
    the revision first: on a change it writes nothing and the daemon exits 1, saying why."""
    env = sim_env(sim, database_url, DAEMON_ENV, TCXC_WINDOW="7d", TCXC_SYNC_INTERVAL="1s")
    proc = start_cli("daemon", env=env)
    try:
        _wait_for(database_url, "SELECT count(*) FROM etl_run WHERE status = 'succeeded'", 1)
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
        runs = _query(database_url, "SELECT count(*) FROM etl_run")[0][0]
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "revision 9999, newer than this tcxc-etl knows" in err, err
    assert "the daemon stops" in err and "Traceback" not in err, err
    # at most the pass running at the change ends after it; none starts afterwards
    assert _query(database_url, "SELECT count(*) FROM etl_run")[0][0] <= runs + 1


def test_the_deep_cron_job_runs_a_deep_pass(sim: Simulator, engine: Engine) -> None:
    """The daemon's cron job (TCXC_DEEP_SYNC_CRON) runs a deep pass: it fires when the expression
    says, re-syncs beyond the incremental lookback (a re-rate only it finds) and is counted as
    kind deep-sync. Its callable is run here as the scheduler runs it: a cron fires on minute
    boundaries at best, too slow for the suite; the daemon process tests cover the rest."""
    settings = make_settings(
        sim,
        start_date=datetime(2026, 9, 21),
        window=timedelta(days=5),
        deep_lookback=timedelta(days=400),  # the simulator's calls are weeks old
        deep_sync_cron="17 3 * * *",
    )
    metrics = Metrics()
    scheduler = build_scheduler(settings, *daemon_passes(engine, [make_job(settings)], metrics))
    incremental, deep = scheduler.get_job("incremental"), scheduler.get_job("deep")
    after = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert deep.trigger.get_next_fire_time(None, after) == datetime(2026, 12, 1, 3, 17, tzinfo=UTC)

    incremental.func()
    records = sim.records("buyer1")
    rerated = records[len(records) // 2]
    sim.rerate("buyer1", rerated["i_cdr"], "7.777777")
    amount = f"SELECT customer_amount::text FROM cdr WHERE i_cdr = {rerated['i_cdr']}"
    incremental.func()
    assert table_rows(engine, amount) != [("7.777777",)]
    deep.func()
    assert table_rows(engine, amount) == [("7.777777",)]

    text = generate_latest(metrics.registry).decode()
    assert f'tcxc_runs_total{{kind="{INCREMENTAL}",status="succeeded"}} 2.0' in text, text
    assert f'tcxc_runs_total{{kind="{DEEP}",status="succeeded"}} 1.0' in text, text


def test_a_pass_that_cannot_reach_the_database_counts_as_failed(sim: Simulator) -> None:
    """A daemon pass (incremental or deep) whose database is down is counted in
    tcxc_runs_total as failed (the run row cannot be written, but the failure must still show
    on a dashboard), and /metrics still serves the counters while /healthz says 503."""
    from etl import db
    from etl.metrics import serve

    settings = make_settings(sim, start_date=datetime(2026, 9, 21))
    metrics = Metrics()
    down = db.make_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    try:
        incremental, deep = daemon_passes(down, [make_job(settings)], metrics)
        incremental()
        deep()
    finally:
        down.dispose()
    text = generate_latest(metrics.registry).decode()
    for kind in (INCREMENTAL, DEEP):
        assert f'tcxc_runs_total{{kind="{kind}",status="failed"}} 1.0' in text, text

    def unreadable() -> list[Any]:
        raise ConnectionError("the database is down")

    server = serve(metrics, "127.0.0.1", free_port(), unreadable)
    try:
        port = server.server_address[1]
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "tcxc_runs_total" in scraped.text
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 503 and health.json()["healthy"] is False
    finally:
        server.shutdown()
        server.server_close()


def test_a_deep_sync_stopped_while_it_waits_for_the_lock_exits_1(
    slow_sim: Simulator, database_url: str
) -> None:
    """`sync --deep` waits for an account a backfill holds; SIGTERM ends the wait, and the
    account did not complete: exit 1 naming it (it was counted as a skip, exit 0)."""
    env = sim_env(slow_sim, database_url, DAEMON_ENV, TCXC_PAGE_SIZE="100")
    slow = {**env, "TCXC_WINDOW": "1h", "TCXC_WINDOW_ROWS": "0"}  # 240 windows: a while
    backfill = start_cli("backfill", "--from", "2026-09-21", "--to", "2026-10-01", env=slow)
    try:
        _wait_for(database_url, "SELECT count(*) FROM sync_window WHERE status = 'done'", 1)
        deep = start_cli("sync", "--deep", env=env)
        assert deep.stderr is not None and deep.stdout is not None
        lines: list[str] = []  # its log, read as it comes: signal it once it waits, not before
        reader = threading.Thread(target=lambda: lines.extend(iter(deep.stderr.readline, "")))
        reader.start()
        deadline = time.monotonic() + 60
        while not any("waiting for account=buyer1" in line for line in lines):
            assert time.monotonic() < deadline and deep.poll() is None, "".join(lines)
            time.sleep(0.05)
        deep.send_signal(signal.SIGTERM)
        deep.wait(timeout=60)
        reader.join(timeout=10)
        out, err = deep.stdout.read(), "".join(lines)
        deep.stdout.close()
        deep.stderr.close()
    finally:
        backfill.terminate()
        backfill.communicate(timeout=60)
    assert deep.returncode == 1, out + err
    assert "stopped while waiting for the account's lock" in out + err


def test_status_and_health_show_a_deep_pass_that_did_not_complete(
    sim: Simulator, database_url: str, engine: Engine
) -> None:
    """A NOC relying on `status` (or /healthz) saw nothing when the nightly deep pass failed:
    `status` exits 1 naming the account and /healthz answers 503 until a deep pass completes;
    the next `sync` finishes it."""
    from etl.config import Account, Secret
    from etl.metrics import serve
    from etl.status import account_status

    env = sim_env(sim, database_url, DAEMON_ENV, TCXC_WINDOW="7d", TCXC_DEEP_LOOKBACK="400d")
    assert run_cli("sync", env=env).returncode == 0
    sim.inject(Fault("error_envelope"))
    assert run_cli("sync", "--deep", env=env).returncode == 1
    shown = run_cli("status", env=env)
    assert shown.returncode == 1, shown.stdout
    assert "deep pass" in shown.stderr and "buyer1" in shown.stderr, shown.stderr
    (account,) = orjson.loads(run_cli("status", "--json", env=env).stdout)
    assert account["deep_pass_status"] == "failed" and account["deep_pass_incomplete"]

    def statuses() -> list[Any]:
        now = datetime.now(UTC)
        return [account_status(engine, Account("buyer1", Secret("k")), now, timedelta(days=999))]

    server = serve(Metrics(), "127.0.0.1", free_port(), statuses)
    try:
        health = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        answer = requests.get(health, timeout=10)
        assert answer.status_code == 503, answer.text
        assert answer.json()["deep_pass_incomplete"] == ["buyer1"]
        assert run_cli("sync", env=env).returncode == 0
        assert requests.get(health, timeout=10).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    assert run_cli("status", env=env).returncode == 0


def test_the_daemons_deep_job_is_due_at_its_cron_tick(sim: Simulator, engine: Engine) -> None:
    """Another daemon's whole deep pass of this minute's tick ended before this daemon's deep
    job ran (it fired a few seconds late): the job is due at the tick, so it skips instead of
    reading the deep period again."""
    settings = make_settings(
        sim, start_date=datetime(2026, 9, 21), window=timedelta(days=5),
        deep_lookback=timedelta(days=400),
    )  # fmt: skip
    incremental, deep = daemon_passes(engine, [make_job(settings)], Metrics())
    incremental()
    while state.database_now(engine).second >= 50:  # (not across a minute boundary)
        time.sleep(1)
    other = state.start_run(engine, DEEP, "buyer1", None, None, prefix="")
    state.finish_run(engine, other, "succeeded", 0, state.Counts(), None)
    deep()
    deep_runs = "SELECT count(*) FROM etl_run WHERE command = 'deep-sync'"
    assert table_rows(engine, deep_runs) == [(1,)]


def test_the_daemon_counts_the_deep_pass_an_incremental_pass_finishes(
    sim: Simulator, engine: Engine
) -> None:
    """The deep pass's failure and the incremental pass's finishing of it both show in
    tcxc_runs_total under kind deep-sync (a dashboard sees the night's pass converge)."""
    settings = make_settings(
        sim, start_date=datetime(2026, 9, 21), window=timedelta(days=5),
        deep_lookback=timedelta(days=400),
    )  # fmt: skip
    metrics = Metrics()
    incremental, deep = daemon_passes(engine, [make_job(settings)], metrics)
    incremental()
    sim.inject(Fault("error_envelope"))
    deep()
    incremental()
    text = generate_latest(metrics.registry).decode()
    assert f'tcxc_runs_total{{kind="{DEEP}",status="failed"}} 1.0' in text, text
    assert f'tcxc_runs_total{{kind="{DEEP}",status="succeeded"}} 1.0' in text, text
    assert f'tcxc_runs_total{{kind="{INCREMENTAL}",status="succeeded"}} 2.0' in text, text
