"""Read-only access for BI users: ``tcxc-etl grant-readonly ROLE``.

Grants an existing role CONNECT on the database, USAGE on schema ``public``, and SELECT on the
``cdr`` table and on every view in ``public`` (whatever views the migrations created); nothing
on the other tables (``cdr_reject``, ``cdr_conflict``, ``sync_state``, ``sync_window``,
``etl_run``, ``alembic_version``, the rollup tables). A view runs with its owner's rights, so
the role needs no grant on the rollup tables the views read; a view created ``WITH
(security_invoker = true)`` is the exception and is named in the output. GRANT is idempotent,
so running the command again (e.g. after a migration added views) is safe. It must run as the
owner of the tables (the user that runs ``migrate``) or a superuser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from etl.db import database_errors
from etl.errors import DatabaseError, UsageError

MAX_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1

_VIEWS = "SELECT viewname FROM pg_views WHERE schemaname = 'public' ORDER BY viewname"
_INVOKER_VIEWS = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'v'
  AND EXISTS (SELECT 1 FROM unnest(c.reloptions) o
              WHERE lower(o) IN ('security_invoker=true', 'security_invoker=on',
                                 'security_invoker=1', 'security_invoker=yes'))
ORDER BY c.relname
"""
_OTHER_ACCESS = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'm') AND c.relname <> 'cdr'
  AND has_table_privilege(%s, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
ORDER BY c.relname
"""


@dataclass(frozen=True)
class Granted:
    """What ``grant_readonly`` granted, and what the operator should know about."""

    role: str
    database: str
    views: tuple[str, ...]
    invoker_views: tuple[str, ...] = ()
    other_access: tuple[str, ...] = ()
    superuser: bool = False

    def lines(self) -> list[str]:
        lines = [
            f"granted to role {self.role}:",
            f"  CONNECT on database {self.database}",
            "  USAGE on schema public",
            "  SELECT on table cdr",
            f"  SELECT on {len(self.views)} view(s): {', '.join(self.views) or '(none yet)'}",
        ]
        if self.invoker_views:
            lines.append(
                "warning: these views run with the caller's rights (security_invoker), so the "
                f"role also needs SELECT on the tables they read: {', '.join(self.invoker_views)}"
            )
        if self.other_access:
            lines.append(
                f"warning: {self.role} can also access other tables (earlier grants, PUBLIC or "
                f"role membership): {', '.join(self.other_access)}; revoke that if unintended"
            )
        if self.superuser:
            lines.append(f"warning: {self.role} is a superuser: grants do not limit it")
        return lines


def check_role_name(role: str) -> None:
    """Raise UsageError for a name PostgreSQL cannot hold."""
    if not role or "\x00" in role:
        raise UsageError("the role name is empty or contains a NUL character")
    if len(role.encode("utf-8")) > MAX_NAME_BYTES:
        raise UsageError(f"the role name is longer than {MAX_NAME_BYTES} bytes")


def grant_readonly(engine: Engine, role: str) -> Granted:
    """Grant ``role`` read access to ``cdr`` and the reporting views only; see the module doc."""
    check_role_name(role)
    with database_errors(f"granting read access to role {role}"), engine.begin() as sa_conn:
        conn = sa_conn.connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        superuser = _role_superuser(conn, role)
        database = _scalar(conn, "SELECT current_database()")
        views = tuple(row[0] for row in conn.execute(_VIEWS))
        try:
            _grant(conn, role, database, views)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseError(
                f"cannot grant read access to role {role}: {str(exc).splitlines()[0]}; run "
                "grant-readonly as the owner of the tables (the user that runs migrate)"
            ) from exc
        return Granted(
            role=role,
            database=database,
            views=views,
            invoker_views=tuple(row[0] for row in conn.execute(_INVOKER_VIEWS)),
            other_access=tuple(row[0] for row in conn.execute(_OTHER_ACCESS, (role,))),
            superuser=superuser,
        )


def _role_superuser(conn: psycopg.Connection[Any], role: str) -> bool:
    """Whether ``role`` is a superuser; UsageError if there is no such role."""
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is None:
        create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD '...'").format(sql.Identifier(role))
        raise UsageError(
            f"role {role!r} does not exist in this PostgreSQL cluster: create it first, e.g. "
            f"{create.as_string(conn)}, then run grant-readonly again"
        )
    return bool(row[0])


def _grant(conn: psycopg.Connection[Any], role: str, database: str, views: tuple[str, ...]) -> None:
    who = sql.Identifier(role)
    conn.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), who)
    )
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who))
    conn.execute(sql.SQL("GRANT SELECT ON TABLE public.cdr TO {}").format(who))
    for view in views:
        conn.execute(
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(sql.Identifier("public", view), who)
        )


def _scalar(conn: psycopg.Connection[Any], query: str) -> str:
    row = conn.execute(query).fetchone()
    assert row is not None
    return str(row[0])
