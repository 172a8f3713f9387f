"""Alembic migrations."""

from __future__ import annotations

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
    outcomes = [(process.wait(timeout=120), process.communicate()[1]) for process in processes]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    engine = db.make_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
            assert list(versions) == [db.SCHEMA_REVISION]
    finally:
        engine.dispose()
