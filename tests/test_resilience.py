"""Faults and hostile input: SIGKILL at random moments, database restarts, failing requests,
arbitrary records, and secrets that must never leak."""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from etl import db, jsonparse, pipeline
from etl.embedded import EmbeddedPostgres
from etl.errors import InvalidRecordError
from etl.normalize import ROW_COLUMNS, Normalizer
from etl.retry import RetryPolicy
from etl.signing import compute_signature
from etl.simulator import FAULT_KINDS, Simulator, SimulatorConfig
from tests.conftest import (
    backfill_args,
    free_port,
    make_job,
    make_settings,
    run_cli,
    sim_env,
    sim_range,
    start_cli,
)

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _recent_sim(cdrs: int, latency: float = 0.0) -> Simulator:
    """CDRs over the three days before today, so `sync` (real clock) reaches all of them."""
    return Simulator(
        SimulatorConfig(
            accounts={"buyer1": "key-one"},
            cdrs=cdrs,
            days=3,
            end=TODAY.replace(tzinfo=None),
            latency=latency,
        )
    )


RESILIENCE_ENV = {  # this file's settings on top of sim_env's
    "TCXC_START_DATE": (TODAY - timedelta(days=3)).strftime("%Y-%m-%d"),
    "TCXC_WINDOW": "3h",
    "TCXC_PAGE_SIZE": "100",
    "TCXC_DEEP_LOOKBACK": "5d",
    "TCXC_WINDOW_ROWS": "500",  # 3-hour windows of ~250 rows, joined by about two
}


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _truth(sim: Simulator) -> list[tuple[int, str]]:
    return sorted({(int(r["i_cdr"]), r["customer_amount"]) for r in sim.records("buyer1")})


def _table(url: str) -> list[tuple[Any, ...]]:
    return _query(url, "SELECT i_cdr, customer_amount::text FROM cdr ORDER BY i_cdr")


def _assert_watermark_not_ahead(sim: Simulator, url: str) -> None:
    """Every CDR the API holds up to the watermark is in the table, and the watermark is the
    end of a window the ledger says committed."""
    rows = _query(url, "SELECT watermark FROM sync_state")
    if not rows:
        return
    (watermark,) = rows[0]
    done = _query(
        url,
        "SELECT count(*) FROM sync_window WHERE status = 'done' AND window_end = "
        f"'{watermark.isoformat()}'",
    )
    assert done[0][0] >= 1, "watermark without a committed window ending there"
    loaded = {row[0] for row in _query(url, "SELECT i_cdr FROM cdr")}
    for record in sim.records("buyer1"):
        setup = datetime.strptime(record["setup_time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        if setup < watermark:
            assert int(record["i_cdr"]) in loaded, f"{record['i_cdr']} is behind the watermark"


def _wait_for_new_run(url: str, after: int, proc: Any, timeout: float = 60) -> bool:
    """Wait until the process has opened a run (it is working); False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _query(url, "SELECT coalesce(max(id), 0) FROM etl_run")[0][0] > after:
            return True
        time.sleep(0.02)
    return False


def _run_status(url: str, after: int) -> str | None:
    """The status of the first run opened after run ``after`` (None if none is)."""
    rows = _query(url, f"SELECT status FROM etl_run WHERE id > {int(after)} ORDER BY id LIMIT 1")
    return str(rows[0][0]) if rows else None


def test_sigkill_at_random_moments_converges_exactly(database_url: str) -> None:
    """`sync` killed with SIGKILL at 20+ random moments of its work, restarted each time: the
    table ends equal to the API's ground truth, and the watermark was never ahead of committed
    data. The lookback spans the whole range, so every run re-reads all of it and each kill
    lands in real work (mid-fetch, mid-COPY, mid-merge or mid-commit)."""
    rng = random.Random(20261125)
    with _recent_sim(6000, latency=0.01) as sim:
        env = sim_env(sim, database_url, RESILIENCE_ENV, TCXC_LOOKBACK="4d")
        kills = attempts = 0
        while kills < 20:
            attempts += 1
            assert attempts <= 40, f"only {kills} kills landed in {attempts} runs"
            last_run = _query(database_url, "SELECT coalesce(max(id), 0) FROM etl_run")[0][0]
            proc = start_cli("sync", env=env)
            if _wait_for_new_run(database_url, last_run, proc):
                # (a run re-reading the range takes 0.5-0.7 s here, a first one longer)
                time.sleep(rng.uniform(0.0, 0.5))
            # Only a kill that lands while the run is still working counts (a run that has
            # finished is left to exit by itself).
            if proc.poll() is None and _run_status(database_url, last_run) == "running":
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=60)
            _assert_watermark_not_ahead(sim, database_url)
            if kills == 10:  # re-rate a CDR the first runs already loaded
                first = sim.records("buyer1")[5]
                sim.rerate("buyer1", first["i_cdr"], "3.141592")
        final = run_cli("sync", env=env)
        assert final.returncode == 0, final.stderr
        deep = run_cli("sync", "--deep", env=env)
        assert deep.returncode == 0, deep.stderr
        _assert_watermark_not_ahead(sim, database_url)
        assert _table(database_url) == _truth(sim)
        statuses = dict(_query(database_url, "SELECT status, count(*) FROM etl_run GROUP BY 1"))
        assert "running" not in statuses, "killed runs are marked abandoned by the next run"
        assert statuses.get("abandoned", 0) >= 15
        # An abandoned run's totals are those of the windows it committed (they are kept).
        untrue = _query(
            database_url,
            "SELECT r.id FROM etl_run r LEFT JOIN ("
            " SELECT run_id, count(*) AS windows, sum(inserted) AS inserted,"
            " sum(rows_fetched) AS fetched FROM sync_window WHERE status = 'done'"
            " GROUP BY run_id) w ON w.run_id = r.id WHERE r.status = 'abandoned'"
            " AND (r.inserted, r.rows_fetched) IS DISTINCT FROM"
            " (coalesce(w.inserted, 0), coalesce(w.fetched, 0))",
        )
        assert untrue == [], untrue


def test_a_sizeable_share_of_failing_requests_still_converges(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """30% of requests fail, in every retriable way: the backfill still ends exact.

    (``error_envelope``, a permanent "There was an error.", is not retried on purpose: see
    test_pipeline's failed-window tests.)"""
    retriable = [kind for kind in FAULT_KINDS if kind != "error_envelope"]
    with Simulator(sim_config) as sim:
        sim.set_fault_rate(0.3, retriable, seed=7, retry_after=0, delay=0.05)
        settings = make_settings(sim, page_size=50)
        policy = RetryPolicy(attempts=12, base_delay=0, max_delay=0, sleep=lambda _s: None)
        start, end = sim_range()
        summary = pipeline.backfill(engine, make_job(settings, retry=policy), start, end)
        assert sim.stats()["faults_injected"] >= 15
        assert summary.ok, summary.failures
        with engine.connect() as conn:
            stored = sorted(
                tuple(r) for r in conn.execute(text("SELECT i_cdr, customer_amount::text FROM cdr"))
            )
        assert stored == _truth(sim)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, so the test can stop and restart it."""
    server = EmbeddedPostgres(tmp_path / "pg", free_port(), fsync=False)
    server.start()
    engine = db.make_engine(server.url)
    db.migrate(engine)
    engine.dispose()
    try:
        yield server
    finally:
        server.stop()


def test_database_restart_mid_run(own_server: EmbeddedPostgres) -> None:
    """PostgreSQL stopped and restarted mid-run: the window fails cleanly, nothing partial is
    marked done, and the next pass converges."""
    url = own_server.url
    with _recent_sim(3000, latency=0.02) as sim:
        env = sim_env(sim, url, RESILIENCE_ENV)
        proc = start_cli("sync", env=env)
        deadline = time.monotonic() + 60
        while _query(url, "SELECT count(*) FROM sync_window WHERE status = 'done'")[0][0] < 2:
            assert time.monotonic() < deadline, "no window committed in time"
            time.sleep(0.05)
        own_server.stop()
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "database error" in err and "Traceback" not in err
        own_server.start()
        _assert_watermark_not_ahead(sim, url)
        again = run_cli("sync", env=env)
        assert again.returncode == 0, again.stderr
        assert _table(url) == _truth(sim)


def _dump(database_url: str, *tables: str) -> str:
    """Every row of ``tables`` as text: where a leaked secret would show."""
    return "\n".join(
        str(row)
        for table in tables
        for row in _query(database_url, f"SELECT t::text FROM {table} t")
    )


def test_secrets_never_leak(sim_config: SimulatorConfig, database_url: str, tmp_path: Path) -> None:
    """With faults, a wrong key and --verbose, neither the key nor any signature appears in
    output, logs or any table; a world-readable config file with a key is warned about."""
    key = "k3y-" + "S" * 20
    login = "buyer1"
    started = int(time.time()) - 5
    with Simulator(replace(sim_config, accounts={login: key})) as sim:
        sim.set_fault_rate(0.3, ["429", "500", "truncated", "html", "reset"], seed=3, retry_after=0)
        env = sim_env(sim, database_url, key=key, TCXC_PAGE_SIZE="200")
        runs = [
            run_cli("--verbose", *backfill_args("2026-09-21", "2026-09-24"), env=env),
            run_cli(
                "--verbose",
                *backfill_args("2026-09-21", "2026-09-22"),
                env={**env, "TCXC_API_KEY": key + "-wrong"},
            ),
        ]
        config = tmp_path / "tcxc.toml"
        config.write_text(f'tcxc_api_key = "{key}"\n')
        config.chmod(0o644)
        runs.append(
            run_cli("--config", str(config), "--verbose", "status", env={**env, "TCXC_API_KEY": ""})
        )
    finished = int(time.time()) + 5
    assert "can be read by other users" in runs[2].stderr
    output = "\n".join(r.stdout + r.stderr for r in runs)
    dump = _dump(
        database_url, "cdr", "cdr_reject", "cdr_conflict", "etl_run", "sync_window", "sync_state"
    )
    signatures = {
        compute_signature(secret, login, ts)
        for secret in (key, key + "-wrong")
        for ts in range(started, finished)
    }
    for haystack in (output, dump):
        assert key not in haystack
        assert not signatures & set(re.findall(r"[0-9a-f]{64}", haystack))
    assert "retrying" in output, "faults were injected and retried (the test saw real errors)"


class _EchoingApi:
    """An API that answers every request with an error message echoing what it was sent:
    the request's form (which the client cuts to 200 characters, so a signature may arrive
    cut short) or the account's key."""

    def __init__(self, echo: str, key: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs

        self.signatures: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = self.rfile.read(int(self.headers["Content-Length"])).decode()
                api.signatures += parse_qs(form)["signature"]
                said = form if echo == "form" else f"bad key {key}"
                body = orjson.dumps({"status": "error", "message": f"invalid request {said}"})
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/buyers/callhistory"

    def __enter__(self) -> _EchoingApi:
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("echo", ["form", "key"])
def test_an_api_that_echoes_secrets_in_its_errors_leaks_none(
    database_url: str, tmp_path: Path, echo: str
) -> None:
    """An API whose error messages quote the request (its signature, maybe cut short) or the
    key: neither reaches the output, the logs or the run history, whole or in part, also for
    an account whose key comes from an [[accounts]] key_env."""
    key = "k3y-" + "Q" * 20
    config = tmp_path / "tcxc.toml"
    config.write_text('[[accounts]]\nlogin = "carrier-b"\nkey_env = "KEY_B"\n')
    with _EchoingApi(echo, key) as api:
        env = {"DATABASE_URL": database_url, "TCXC_API_URL": api.url, "KEY_B": key}
        args = ("--config", str(config), "--verbose", *backfill_args("2026-09-21", "2026-09-22"))
        result = run_cli(*args, env=env)
    assert result.returncode == 1 and api.signatures, result.stderr
    output = result.stdout + result.stderr
    dump = _dump(database_url, "etl_run", "sync_window")
    assert "invalid request" in dump, "the API's message reached the run history"
    for haystack in (output, dump):
        assert key not in haystack and key[:10] not in haystack
        for piece in re.findall(r"[0-9a-f]{8,}", haystack):
            assert not any(piece in signature for signature in api.signatures), piece


HOSTILE_TEXT = st.text(max_size=30) | st.sampled_from(
    [
        "",
        "\x00",
        "'; DROP TABLE cdr; --",
        "Ω≈ç√∫",
        "9" * 40,
        "1e400",
        "NaN",
        "-1",
        "0000-00-00 00:00:00",
    ]
)
HOSTILE = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),  # JSON parsers (orjson) stop at 64 bits
    st.floats(),
    HOSTILE_TEXT,
    st.lists(st.integers(-5, 5), max_size=2),
)


@hsettings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "i_cdr",
                    "CLD",
                    "duration",
                    "customer_amount",
                    "connect_time",
                    "billing_price_1",
                    "i_vendor",
                    "description",
                    "call_id",
                    "extra_field",
                ]
            ),
            HOSTILE,
            max_size=4,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_hostile_records_load_exactly_or_are_rejected(
    sim_config: SimulatorConfig, engine: Engine, changes: list[dict[str, Any]]
) -> None:
    """Arbitrary values never crash a run or touch other rows: each record either loads with
    exactly its values or lands in cdr_reject with a reason."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE cdr, cdr_reject, cdr_conflict, sync_window, etl_run CASCADE"))
    with Simulator(replace(sim_config, cdrs=40, days=1)) as sim:
        base = sim.records("buyer1")
        hostile = []
        for number, change in enumerate(changes):
            record = {
                **base[0],
                "i_cdr": str(990_000_000_000 + number),
                "call_id": f"h{number}",
                **change,
            }
            sim.publish("buyer1", record)
            hostile.append(record)
        settings = make_settings(sim)
        start = datetime(2026, 9, 30, tzinfo=UTC)
        summary = pipeline.backfill(engine, make_job(settings), start, start + timedelta(days=1))
        assert summary.ok, summary.failures
        with engine.connect() as conn:
            # The record as the API sent it, as jsonb holds JSON (numbers as decimals).
            query = text("SELECT i_cdr, api_record(c)::text FROM cdr c")
            stored = {r[0]: r[1] for r in conn.execute(query)}
            rejects = {r[0]: r[1] for r in conn.execute(text("SELECT raw, reason FROM cdr_reject"))}
        for record in base:
            expected = _as_jsonb(engine, record)
            assert stored[int(record["i_cdr"])] == expected, "a good record was lost or altered"
        normalizer = Normalizer("buyer1", ZoneInfo("UTC"))
        # as the API serialises them, and as the client reads them
        served = [jsonparse.loads(orjson.dumps(r)) for r in hostile]
        keys = [str(r.get("i_cdr")) for r in served]
        for record in served:
            if keys.count(str(record.get("i_cdr"))) > 1:
                continue  # repeats merge (last wins) or conflict: covered by other tests
            try:
                row = normalizer.normalize(record)
            except InvalidRecordError:
                raw = jsonparse.dumps_text(record)
                assert rejects.get(raw), f"{record!r} was neither loaded nor rejected"
            else:
                assert _typed_row(engine, row[0]) == row[:-1], f"{record!r} did not load exactly"
                expected = _as_jsonb(engine, record)
                assert stored[row[0]] == expected, f"{record!r} is not what api_record gives back"


def _as_jsonb(engine: Engine, record: dict[str, Any]) -> str:
    with engine.connect() as conn:
        query = text("SELECT CAST(:r AS jsonb)::text")
        return str(conn.execute(query, {"r": jsonparse.dumps_text(record)}).scalar_one())


def _typed_row(engine: Engine, i_cdr: int) -> tuple[Any, ...]:
    columns = ", ".join(ROW_COLUMNS[:-1])
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT {columns} FROM cdr WHERE i_cdr = :i"), {"i": i_cdr}).one()
    return tuple(row)
