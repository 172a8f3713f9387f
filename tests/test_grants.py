"""grant-readonly: a role reads cdr and the views, and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, text

from etl.errors import UsageError
from etl.grants import grant_readonly
from tests.conftest import run_cli

PROBE_VIEW = "v_test_probe"  # a view over a table the role may not read directly


def _admin(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True)


@pytest.fixture
def role(database_url: str) -> Iterator[str]:
    """A new LOGIN role (roles are cluster-wide: unique name), dropped with its grants after."""
    name = f"tcxc_ro_{uuid.uuid4().hex[:10]}"
    who = sql.Identifier(name)
    with _admin(database_url) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(who))
    try:
        yield name
    finally:
        with _admin(database_url) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(who))  # revokes its grants here
            conn.execute(sql.SQL("DROP ROLE {}").format(who))


def _as_role(database_url: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, user=role, autocommit=True)


def _tables(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        query = text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        return [row[0] for row in conn.execute(query)]


def test_role_reads_cdr_and_views_only(engine: Engine, database_url: str, role: str) -> None:
    """After the grant the role SELECTs cdr and every view; other tables and writes fail."""
    with engine.begin() as conn:
        conn.execute(text(f"CREATE VIEW {PROBE_VIEW} AS SELECT count(*) AS n FROM sync_state"))
    granted = grant_readonly(engine, role)
    assert PROBE_VIEW in granted.views and granted.other_access == ()
    with _as_role(database_url, role) as conn:
        assert conn.execute("SELECT count(*) FROM cdr").fetchone() == (0,)
        assert conn.execute(f"SELECT n FROM {PROBE_VIEW}").fetchone() == (0,)
        for view in granted.views:
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(view)))
        for table in _tables(engine):
            if table != "cdr":
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL("SELECT 1 FROM {}").format(sql.Identifier(table)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO cdr (i_cdr, api_login, raw) VALUES (1, 'x', '{}')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM cdr")
    assert {"sync_state", "cdr_reject", "etl_run"} <= set(_tables(engine))
    with engine.begin() as conn:  # an earlier, unrelated grant is reported, not revoked
        conn.execute(text(f'GRANT SELECT ON sync_state TO "{role}"'))
    assert grant_readonly(engine, role).other_access == ("sync_state",)


def test_grant_is_idempotent_and_named_in_output(
    engine: Engine, database_url: str, role: str
) -> None:
    """Running the command twice succeeds both times and prints what was granted."""
    env = {"DATABASE_URL": database_url}
    for _ in range(2):
        result = run_cli("grant-readonly", role, env=env)
        assert result.returncode == 0, result.stderr
    assert f"granted to role {role}:" in result.stdout
    assert "SELECT on table cdr" in result.stdout and "USAGE on schema public" in result.stdout
    with _as_role(database_url, role) as conn:
        assert conn.execute("SELECT count(*) FROM cdr").fetchone() == (0,)


def test_unknown_role_is_a_usage_error(engine: Engine, database_url: str) -> None:
    """An unknown role exits 2 and suggests CREATE ROLE; the function raises UsageError."""
    missing = f"tcxc_nobody_{uuid.uuid4().hex[:10]}"
    result = run_cli("grant-readonly", missing, env={"DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "CREATE ROLE" in result.stderr
    with pytest.raises(UsageError, match="CREATE ROLE"):
        grant_readonly(engine, 'odd "name"; DROP TABLE cdr')
    assert "cdr" in _tables(engine)
