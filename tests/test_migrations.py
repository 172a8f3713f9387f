"""Alembic migrations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from etl import db
from etl.schema import metadata


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_schema_revision_commands_check_is_alembics_head() -> None:
    """Commands check the schema against db.SCHEMA_REVISION without importing alembic."""
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(db.alembic_config()).get_heads() == [db.SCHEMA_REVISION]


def test_upgrade_downgrade_upgrade_round_trips(empty_database_url: str) -> None:
    """upgrade head, downgrade base, upgrade head: each step leaves the expected tables."""
    engine = db.make_engine(empty_database_url)
    try:
        db.migrate(engine)
        assert set(metadata.tables) <= _tables(empty_database_url)
        db.downgrade(engine, "base")
        assert _tables(empty_database_url) <= {"alembic_version"}
        db.migrate(engine)
        assert set(metadata.tables) <= _tables(empty_database_url)
    finally:
        engine.dispose()


def test_no_drift_between_migrations_and_metadata(database_url: str) -> None:
    """Autogenerate against a migrated database finds nothing to change."""
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_migrations_at_once_wait_for_each_other(empty_database_url: str) -> None:
    """Two processes migrating one empty database at once (say, two commands starting on a
    fresh embedded database): the second waits for the first and finds nothing left to do,
    instead of failing on the tables the first is creating."""
    from tests.conftest import start_cli

    env = {"DATABASE_URL": empty_database_url}
    processes = [start_cli("migrate", env=env) for _ in range(2)]
    outcomes = [(process.wait(timeout=120), *process.communicate()) for process in processes]
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    said = sorted(out.split(" schema ")[0] for _, out, _ in outcomes)
    assert said == ["database", "migrated the database"], outcomes  # one did it, one found it done
    engine = db.make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
            assert list(versions) == [db.SCHEMA_REVISION]
    finally:
        engine.dispose()


def test_alembic_run_by_hand_waits_for_a_migration_in_progress(empty_database_url: str) -> None:
    """`alembic upgrade head` (the README's by-hand way) takes the same lock as `tcxc-etl
    migrate`: while another migration holds it, alembic waits instead of creating the same
    tables at once."""
    import subprocess
    import sys
    import time

    import psycopg

    from tests.conftest import ROOT, cli_env

    with psycopg.connect(empty_database_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", db.MIGRATION_LOCK)
        by_hand = subprocess.Popen(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            env=cli_env({"DATABASE_URL": empty_database_url}),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting = 0
        deadline = time.monotonic() + 60
        while not waiting and by_hand.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            row = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            waiting = row[0] if row else 0
        holder.rollback()  # the lock goes: alembic goes on
        _, errors = by_hand.communicate(timeout=120)
        assert waiting == 1, errors
        assert by_hand.returncode == 0, errors
    assert "alembic_version" in _tables(empty_database_url)


def test_migrate_on_a_schema_newer_than_the_code_says_to_upgrade(database_url: str) -> None:
    """A database a newer release migrated: `migrate` says what every other command says,
    not an internal error."""
    from tests.conftest import run_cli

    engine = db.make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        done = run_cli("migrate", env={"DATABASE_URL": database_url})
    finally:
        with engine.begin() as conn:
            restore = text("UPDATE alembic_version SET version_num = :v")
            conn.execute(restore, {"v": db.SCHEMA_REVISION})
        engine.dispose()
    assert done.returncode == 1, done.stderr
    assert "newer than this tcxc-etl knows" in done.stderr and "upgrade tcxc-etl" in done.stderr
    assert "internal error" not in done.stderr


def test_the_wheel_carries_the_migrations(tmp_path: Path) -> None:
    """An installed tcxc-etl (not an editable one) migrates: the wheel holds every migration
    as etl/migrations, where etl.db.migrations_dir finds them."""
    import subprocess
    import sys
    import zipfile

    from tests.conftest import ROOT

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tcxc_etl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = {
        f"etl/migrations/versions/{p.name}" for p in (ROOT / "migrations/versions").glob("*.py")
    }
    assert len(scripts) >= 6 and scripts <= names, sorted(names)
    assert {"etl/migrations/env.py", "etl/migrations/script.py.mako"} <= names


def _upgraded(
    url: str, revision: str, inserts: Iterable[tuple[str, dict[str, Any]]], *queries: str
) -> list[list[tuple[Any, ...]]]:
    """Each query's rows once a database at ``revision``, given ``inserts`` (statements and
    their parameters), is upgraded to head."""
    engine = db.make_engine(url)
    try:
        db.migrate(engine, revision)
        with engine.begin() as conn:
            for statement, params in inserts:
                conn.execute(text(statement), params)
        db.migrate(engine)
        with engine.connect() as conn:
            return [[tuple(row) for row in conn.execute(text(query))] for query in queries]
    finally:
        engine.dispose()


def test_0007_records_each_conflicting_record_once_whatever_raw_held(
    empty_database_url: str,
) -> None:
    """Conflicts recorded before 0007 were told apart by their payload's ``raw``: the same
    record met under ``compact`` and under ``full`` was stored twice. The upgrade keeps the
    first of them, with the digest a sync computes now; a different record stays."""
    from etl.load import CONFLICT_DIGEST

    record = {"i_cdr": "5", "CLD": "4420", "call_id": "c2", "customer_amount": "1.5"}
    columns = {"i_cdr": 5, "cld": "4420", "call_id": "c2", "customer_amount": 1.5}
    payloads = [  # compact, full, then another record (another amount)
        {**columns, "api_login": "buyer1", "raw": {}},
        {**columns, "api_login": "buyer1", "raw": record},
        {**columns, "api_login": "buyer1", "customer_amount": 2.5, "raw": {}},
    ]
    insert = (
        "INSERT INTO cdr_conflict (i_cdr, api_login, kept_call_id, incoming_call_id,"
        " incoming_payload, payload_digest) VALUES (5, 'buyer1', 'c1', 'c2', CAST(:p AS jsonb),"
        " md5(CAST(:p AS jsonb)::text))"
    )
    (kept,) = _upgraded(
        empty_database_url,
        "0006",
        [(insert, {"p": json.dumps(payload)}) for payload in payloads],
        "SELECT id, payload_digest = "
        + CONFLICT_DIGEST.format(p="incoming_payload")
        + " FROM cdr_conflict ORDER BY id",
    )
    assert kept == [(1, True), (3, True)]


def test_0009_gives_older_runs_the_one_prefix_of_their_windows(empty_database_url: str) -> None:
    """Runs from before 0009 take the prefix of their ledger rows when they have exactly one;
    a run with none, or with windows of two prefixes, has no prefix (NULL)."""
    run = ("INSERT INTO etl_run (command, api_login) VALUES ('sync', 'b')", {})
    window = (
        "INSERT INTO sync_window (run_id, api_login, prefix, window_start, window_end, status)"
        " VALUES (:run, 'buyer1', :prefix, now(), now(), 'done')"
    )
    windows = ((1, ""), (1, ""), (2, "44"), (3, ""), (3, "44"))
    (prefixes,) = _upgraded(
        empty_database_url,
        "0008",
        [run] * 4 + [(window, {"run": n, "prefix": prefix}) for n, prefix in windows],
        "SELECT id, prefix FROM etl_run ORDER BY id",
    )
    assert prefixes == [(1, ""), (2, "44"), (3, None), (4, None)]


def test_0010_sums_the_daily_rollups_again_from_the_hours(empty_database_url: str) -> None:
    """Days that a refresh summed without their first hour (a midnight that happens twice)
    are summed again from cdr_hourly, which was right."""
    hour = (
        "INSERT INTO cdr_hourly VALUES (:at, '2026-10-25', 'b', 'PT', 7, 'v', 16,"
        " :n, 1, 1, 60, 60, 0.5, 0, 0, 0, 0)"
    )
    daily = (  # the first hour left out
        "INSERT INTO cdr_daily VALUES ('2026-10-25', 'b', 'PT', 7, 'v',"
        " 2, 1, 1, 60, 60, 0.5, 0, 0, 0, 0)"
    )
    cause = "INSERT INTO cdr_daily_cause VALUES ('2026-10-25', 'b', 'PT', 7, 'v', 16, 2, 1)"
    hours = [(hour, {"at": at, "n": 2}) for at in ("2026-10-25 00:00Z", "2026-10-25 01:00Z")]
    days, causes = _upgraded(
        empty_database_url,
        "0009",
        [*hours, (daily, {}), (cause, {})],
        "SELECT day, attempts, answered, spend FROM cdr_daily",
        "SELECT attempts, answered FROM cdr_daily_cause",
    )
    assert days == [(date(2026, 10, 25), 4, 2, Decimal("1.0"))]
    assert causes == [(4, 2)]


def test_0011_writes_older_rejects_as_a_sync_writes_them_now(empty_database_url: str) -> None:
    """Rejects stored before exact JSON numbers (8e5e866) hold their record as json.dumps
    wrote it (", " and ": " separators, ASCII escapes): met again after an upgrade, the same
    record was stored a second time under the new text's digest. The upgrade rewrites their
    text and digest as a sync writes them now, and keeps the first of any two that become one."""
    from etl.jsonparse import dumps_text, loads

    body = b'[{"i_cdr":"7","duration":"abc","CLD":"\\u00e9t\\u00e9","billing_price_1":0.00498}]'
    (record,) = loads(body)
    now = dumps_text(record)  # what a sync stores today
    old = json.dumps(record | {"billing_price_1": 0.00498}, ensure_ascii=True)
    other = json.dumps({"i_cdr": "8", "duration": "x"}, ensure_ascii=True)
    insert = (
        "INSERT INTO cdr_reject (api_login, i_cdr, reason, raw, raw_digest)"
        " VALUES ('buyer1', :i, 'duration is not an integer', :raw, :digest)"
    )
    (found,) = _upgraded(
        empty_database_url,
        "0010",
        [
            (insert, {"i": i_cdr, "raw": raw, "digest": hashlib.sha256(raw.encode()).hexdigest()})
            for i_cdr, raw in (("7", old), ("8", other), ("7", now))
        ],
        "SELECT id, raw, raw_digest FROM cdr_reject ORDER BY id",
    )
    compact_other = '{"i_cdr":"8","duration":"x"}'
    assert found == [
        (1, now, hashlib.sha256(now.encode()).hexdigest()),
        (2, compact_other, hashlib.sha256(compact_other.encode()).hexdigest()),
    ]
