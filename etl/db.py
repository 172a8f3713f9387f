"""Database connections: URL handling, engines, and translation of driver errors.

Only this module, ``load``, ``state``, ``reporting``, ``locks``, ``status``, ``verify`` and
``grants`` talk to the database; the pure stages (signing, pagination, normalisation, window
planning) never do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from etl.errors import DatabaseError, TransientDatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def sqlalchemy_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+psycopg:// and use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    scheme, rest = url.split("://", 1)
    if scheme == "postgresql":
        scheme = "postgresql+psycopg"
    return f"{scheme}://{rest}"


def libpq_url(url: str) -> str:
    """The same database as a plain postgresql:// URL (for psql and BI tools)."""
    return make_url(sqlalchemy_url(url)).set(drivername="postgresql").render_as_string(False)


def make_engine(url: str) -> Engine:
    """One engine per process; connections are checked before use.

    The pool keeps 4 connections; more open as needed (a run holds up to 2 x TCXC_WORKERS
    window transactions plus its lock), bounded by the pipeline's own threads, not the pool."""
    return create_engine(
        sqlalchemy_url(url),
        pool_pre_ping=True,
        pool_size=4,
        max_overflow=-1,
        connect_args={"application_name": "tcxc-etl"},
    )


def is_transient(exc: BaseException) -> bool:
    """True when a database error may pass if the work is tried again."""
    original = getattr(exc, "orig", exc)
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        original,
        psycopg.OperationalError
        | psycopg.errors.SerializationFailure
        | psycopg.errors.DeadlockDetected,
    )


def translate(exc: BaseException, where: str) -> DatabaseError:
    """Our error for a driver error, with where it happened and without the SQL text."""
    original = getattr(exc, "orig", exc)
    summary = str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
    kind = TransientDatabaseError if is_transient(exc) else DatabaseError
    return kind(f"database error during {where}: {summary}")


@contextmanager
def database_errors(where: str) -> Iterator[None]:
    """Translate SQLAlchemy and psycopg errors raised inside the block."""
    try:
        yield
    except (sa_exc.SQLAlchemyError, psycopg.Error) as exc:
        raise translate(exc, where) from exc


def alembic_config() -> Config:
    # alembic (about 10 MB) is imported only by the commands that migrate, not by every worker.
    from alembic.config import Config

    ini = ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def migrations_dir() -> Path:
    """The alembic scripts: the copy an installed wheel carries as ``etl/migrations``, else
    ``migrations/`` of the source tree (a checkout, or an editable install)."""
    packaged = Path(__file__).resolve().parent / "migrations"
    return packaged if (packaged / "env.py").is_file() else ROOT / "migrations"


# Migrations hold this transaction-level advisory lock (the two-int form, beside the rollup's
# locks of etl.reporting): a second process migrating at once waits, then finds the schema
# at the revision it wanted instead of failing on the tables the first one is creating.
MIGRATION_LOCK = (0x7C0C, -2)


def migrate(engine: Engine, revision: str = "head") -> list[str]:
    """Upgrade the database to ``revision`` (``alembic upgrade``), one process at a time;
    the revisions it was at (read once the lock is held: a migration that waited for another
    finds what that one left). A schema newer than this code is a DatabaseError."""
    from alembic import command

    def upgrade(cfg: Config, versions: list[str]) -> None:
        if any(version > SCHEMA_REVISION for version in versions):
            raise DatabaseError(_newer(versions))
        command.upgrade(cfg, revision)

    return _alembic(engine, upgrade)


def downgrade(engine: Engine, revision: str) -> list[str]:
    """Downgrade the database to ``revision`` (``alembic downgrade``), one process at a time."""
    from alembic import command

    return _alembic(engine, lambda cfg, _versions: command.downgrade(cfg, revision))


def _alembic(engine: Engine, step: Callable[[Config, list[str]], None]) -> list[str]:
    """Run an alembic command in one transaction holding MIGRATION_LOCK (migrations/env.py
    takes it too, for alembic run by hand); the revisions read under the lock."""
    with database_errors("migration"), engine.begin() as connection:
        lock = {"key": MIGRATION_LOCK[0], "number": MIGRATION_LOCK[1]}
        connection.execute(text("SELECT pg_advisory_xact_lock(:key, :number)"), lock)
        versions = _versions(connection)
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        step(cfg, versions)
        return versions


# The schema revision this code needs (the head of migrations/versions). Commands check it
# without importing alembic; a test keeps it equal to alembic's head.
SCHEMA_REVISION = "0011"


def check_schema(engine: Engine, *, upgrade: bool = False) -> None:
    """Fail with what to do unless the database holds this version's schema. With ``upgrade``
    (the embedded database, which is tcxc-etl's own) a missing or older schema is migrated."""
    versions = schema_versions(engine)
    if versions == [SCHEMA_REVISION]:
        return
    if upgrade and all(version < SCHEMA_REVISION for version in versions):
        before = migrate(engine)
        if before != [SCHEMA_REVISION]:  # (else another process migrated it meanwhile)
            log.info(
                "migrated the embedded database from %s to revision %s",
                describe_versions(before),
                SCHEMA_REVISION,
            )
        return
    problem = schema_problem(versions)
    if problem:
        raise DatabaseError(problem)


def schema_problem(versions: list[str]) -> str | None:
    """What is wrong with a database at ``versions`` for this code (None: nothing)."""
    if versions == [SCHEMA_REVISION]:
        return None
    if not versions:
        return "the database (DATABASE_URL) has no tcxc-etl schema: run `tcxc-etl migrate` first"
    found = ", ".join(sorted(versions))
    if all(version < SCHEMA_REVISION for version in versions):
        return (
            f"the database schema is at revision {found}, this tcxc-etl needs "
            f"{SCHEMA_REVISION}: run `tcxc-etl migrate`"
        )
    return _newer(versions)


def _newer(versions: list[str]) -> str:
    return (
        f"the database schema is at revision {', '.join(sorted(versions))}, newer than this "
        f"tcxc-etl knows ({SCHEMA_REVISION}): upgrade tcxc-etl"
    )


def describe_versions(versions: list[str]) -> str:
    """Revisions read by ``schema_versions``, as a log line or message says them."""
    return ", ".join(sorted(versions)) or "an empty database"


def schema_versions(engine: Engine) -> list[str]:
    """The database's alembic revisions ([] when it has no tcxc-etl schema)."""
    with database_errors("reading the schema version"), engine.connect() as conn:
        return _versions(conn)


def _versions(conn: Connection) -> list[str]:
    present = conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not present.scalar_one():
        return []
    return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


@contextmanager
def open_database(url: str, embedded_dir: Path | None, embedded_port: int) -> Iterator[Engine]:
    """An engine on ``url``, or on the embedded PostgreSQL (started on demand) if it is ''.

    A configured database is reached once at once, so that a wrong host, port, password or
    name stops with one line naming DATABASE_URL rather than at the first query, wherever
    that is; errors of the block itself are translated too (no command shows a driver error
    as an internal one)."""
    if url:
        engine = make_engine(url)
        try:
            with database_errors("connecting to DATABASE_URL"), engine.connect():
                pass
            with database_errors("a database command"):
                yield engine
        finally:
            engine.dispose()
        return
    from etl.embedded import default_data_dir, embedded_database

    data_dir = embedded_dir or default_data_dir()
    with embedded_database(data_dir, embedded_port) as server:
        log.info("using the embedded PostgreSQL data_dir=%s url=%s", data_dir, server.url)
        engine = make_engine(server.url)

        # A server that died under a long-running command (the daemon) is started again when
        # a connection is next opened, rather than failing every later pass.
        @event.listens_for(engine, "do_connect")
        def revive(*_args: Any) -> None:
            if server.revive():
                log.warning(
                    "the embedded PostgreSQL in %s was not running (killed, or stopped with "
                    "`db stop --force`): started it again",
                    data_dir,
                )

        try:
            with database_errors("a database command"):
                yield engine
        finally:
            engine.dispose()
