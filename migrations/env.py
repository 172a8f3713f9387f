"""Alembic environment: runs migrations on a connection handed over by tcxc-etl, or on
DATABASE_URL when alembic is run by hand."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine, text

from etl.db import MIGRATION_LOCK, sqlalchemy_url
from etl.schema import metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        # One migration at a time, whoever runs it (tcxc-etl already holds this lock; taking
        # it again in the same transaction does not wait).
        lock = {"key": MIGRATION_LOCK[0], "number": MIGRATION_LOCK[1]}
        connection.execute(text("SELECT pg_advisory_xact_lock(:key, :number)"), lock)
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set: use `tcxc-etl migrate`, or set it")
    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
