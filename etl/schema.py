"""The warehouse schema as SQLAlchemy metadata; Alembic migrations must match it exactly.

Tables
- ``cdr``: one row per i_cdr, the API's fields as typed columns (lower-case API names), the
  account login, the raw payload (JSONB) and load timestamps.
- ``cdr_reject``: records that could not be normalised, with the reason and the raw payload.
- ``cdr_conflict``: records whose i_cdr was already held with a different call_id, or by
  another account.
- ``sync_state``: per account and prefix, the incremental watermark.
- ``sync_window``: per window of each run, its bounds, counts and outcome (ledger + history).
- ``etl_run``: one row per run of a command.

Reporting (see ``etl/reporting.py``; the views themselves live in migration 0002)
- ``reporting_config``: one row: the reporting time zone asked for and the one in effect.
- ``q850_cause``: ITU-T Q.850 cause codes with a name, a class and whether E.425 counts them
  as network-delivered.
- ``cdr_hourly``: additive measures per reporting hour, account, country, vendor and cause.
- ``cdr_daily``: the same per reporting day, without the cause.
- ``cdr_daily_cause``: attempts and answered calls per day, account, country, vendor and cause.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

from etl.fields import BIGINT, COUNT, DECIMAL, FIELD_KINDS, TIME

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_TYPES: dict[str, Callable[[], TypeEngine[Any]]] = {
    BIGINT: BigInteger,
    COUNT: Integer,
    DECIMAL: Numeric,
    TIME: lambda: DateTime(timezone=True),
}


def _field_columns() -> list[Column[object]]:
    columns: list[Column[object]] = []
    for name, kind in FIELD_KINDS.items():
        column_type = _TYPES.get(kind, Text)()
        columns.append(Column(name, column_type, primary_key=name == "i_cdr", autoincrement=False))
    return columns


def _now() -> Column[object]:
    return Column("loaded_at", DateTime(timezone=True), nullable=False, server_default=func.now())


cdr = Table(
    "cdr",
    metadata,
    *_field_columns(),
    Column("api_login", Text, nullable=False),
    Column("raw", JSONB, nullable=False),
    # What the row was made from (etl.rowdigest): lets a re-sync skip pages it already holds.
    Column("payload_digest", LargeBinary),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Every index is paid for by each row loaded (migration 0004 says which went and why): a
    # period's rows, of every account or of one (the rollup refresh reads one account's hours
    # through the second column without touching other accounts' rows); calls to a number.
    Index("ix_cdr_connect_time_api_login", "connect_time", "api_login"),
    Index("ix_cdr_cld", "cld", postgresql_ops={"cld": "text_pattern_ops"}),
)

cdr_reject = Table(
    "cdr_reject",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("api_login", Text, nullable=False),
    Column("i_cdr", Text),
    Column("reason", Text, nullable=False),
    Column("raw", Text, nullable=False),
    Column("raw_digest", Text, nullable=False),
    Column("run_id", BigInteger, ForeignKey("etl_run.id", ondelete="SET NULL")),
    Column("window_start", DateTime(timezone=True)),
    Column("window_end", DateTime(timezone=True)),
    _now(),
    UniqueConstraint("api_login", "raw_digest"),
)

cdr_conflict = Table(
    "cdr_conflict",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("i_cdr", BigInteger, nullable=False),
    Column("api_login", Text, nullable=False),
    Column("kept_call_id", Text),
    Column("incoming_call_id", Text),
    Column("stored_payload", JSONB),
    Column("incoming_payload", JSONB, nullable=False),
    Column("payload_digest", Text, nullable=False),
    Column("run_id", BigInteger, ForeignKey("etl_run.id", ondelete="SET NULL")),
    _now(),
    UniqueConstraint("i_cdr", "payload_digest"),
)

etl_run = Table(
    "etl_run",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("command", Text, nullable=False),
    Column("api_login", Text),
    Column("range_start", DateTime(timezone=True)),
    Column("range_end", DateTime(timezone=True)),
    Column("status", Text, nullable=False, server_default=text("'running'")),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("windows", Integer, nullable=False, server_default=text("0")),
    Column("pages", Integer, nullable=False, server_default=text("0")),
    Column("rows_fetched", BigInteger, nullable=False, server_default=text("0")),
    Column("inserted", BigInteger, nullable=False, server_default=text("0")),
    Column("updated", BigInteger, nullable=False, server_default=text("0")),
    Column("unchanged", BigInteger, nullable=False, server_default=text("0")),
    Column("rejected", BigInteger, nullable=False, server_default=text("0")),
    Column("conflicts", BigInteger, nullable=False, server_default=text("0")),
    Column("error", Text),
    # The settings its records were read under (etl.state.row_settings; migration 0006).
    Column("row_settings", Text),
    # The destination prefix it synced (migration 0009; NULL for runs of no single prefix).
    Column("prefix", Text),
    # A deep-sync run that finishes an earlier deep pass which did not complete: that pass's id
    # (migration 0009; etl.passes). NULL for every other run.
    Column("finishes_run", BigInteger),
    Index("ix_etl_run_api_login_command", "api_login", "command", "id"),
)

sync_window = Table(
    "sync_window",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, ForeignKey("etl_run.id", ondelete="CASCADE"), nullable=False),
    Column("api_login", Text, nullable=False),
    Column("prefix", Text, nullable=False, server_default=text("''")),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("status", Text, nullable=False),
    Column("pages", Integer, nullable=False, server_default=text("0")),
    Column("rows_fetched", BigInteger, nullable=False, server_default=text("0")),
    Column("inserted", BigInteger, nullable=False, server_default=text("0")),
    Column("updated", BigInteger, nullable=False, server_default=text("0")),
    Column("unchanged", BigInteger, nullable=False, server_default=text("0")),
    Column("rejected", BigInteger, nullable=False, server_default=text("0")),
    Column("conflicts", BigInteger, nullable=False, server_default=text("0")),
    Column("duration_s", Double, nullable=False, server_default=text("0")),
    Column("error", Text),
    Column("finished_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Every API request the window made, retries and failed ones included (migration 0008;
    # NULL on older rows): what the hourly request budget counts.
    Column("requests", Integer),
    Index("ix_sync_window_api_login_window_start", "api_login", "window_start"),
    Index("ix_sync_window_run_id", "run_id"),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("api_login", Text, primary_key=True),
    Column("prefix", Text, primary_key=True, server_default=text("''")),
    Column("watermark", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# --- reporting -------------------------------------------------------------------------------

# A zone name is valid when PostgreSQL can convert a time into it (timezone() is immutable).
_VALID_ZONE = "(timestamptz '2000-01-01 00:00:00+00' AT TIME ZONE {}) IS NOT NULL"

reporting_config = Table(
    "reporting_config",
    metadata,
    Column("id", Boolean, primary_key=True, server_default=text("true")),
    Column("time_zone", Text, nullable=False, server_default=text("'UTC'")),
    Column("applied_time_zone", Text, nullable=False, server_default=text("'UTC'")),
    Column("hourly_days", Integer, nullable=False, server_default=text("7")),
    CheckConstraint("id", name="ck_reporting_config_single_row"),
    CheckConstraint(_VALID_ZONE.format("time_zone"), name="ck_reporting_config_time_zone"),
    CheckConstraint(
        _VALID_ZONE.format("applied_time_zone"), name="ck_reporting_config_applied_time_zone"
    ),
    CheckConstraint("hourly_days BETWEEN 1 AND 366", name="ck_reporting_config_hourly_days"),
)

q850_cause = Table(
    "q850_cause",
    metadata,
    Column("code", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("class", Text, nullable=False),
    Column("ner_delivered", Boolean, nullable=False),
    CheckConstraint(
        "class IN ('normal', 'busy / no answer', 'network / routing failure')",
        name="ck_q850_cause_class",
    ),
)

_ROLLUP_KEY = ("day", "api_login", "country_name", "i_vendor", "vendor_name")


def _rollup_key() -> list[Column[Any]]:
    return [
        Column("day", Date, nullable=False),
        Column("api_login", Text, nullable=False),
        Column("country_name", Text),
        Column("i_vendor", BigInteger),
        Column("vendor_name", Text),
    ]


def _count(name: str) -> Column[Any]:
    return Column(name, BigInteger, nullable=False)


def _measures() -> list[Column[Any]]:
    return [
        _count("attempts"),
        _count("answered"),
        _count("ner_delivered"),
        _count("billed_seconds"),
        _count("duration_seconds"),
        Column("spend", Numeric, nullable=False),
        Column("tta_seconds", Numeric, nullable=False),
        _count("tta_calls"),
        _count("cost_mismatches"),
        Column("cost_difference", Numeric, nullable=False),
    ]


cdr_daily = Table(
    "cdr_daily",
    metadata,
    *_rollup_key(),
    *_measures(),
    Index("uq_cdr_daily_key", *_ROLLUP_KEY, unique=True, postgresql_nulls_not_distinct=True),
)

cdr_hourly = Table(
    "cdr_hourly",
    metadata,
    Column("hour_start", DateTime(timezone=True), nullable=False),
    *_rollup_key(),
    Column("disconnect_code", Integer),
    *_measures(),
    Index(
        "uq_cdr_hourly_key",
        "hour_start",
        *_ROLLUP_KEY[1:],
        "disconnect_code",
        unique=True,
        postgresql_nulls_not_distinct=True,
    ),
)

cdr_daily_cause = Table(
    "cdr_daily_cause",
    metadata,
    *_rollup_key(),
    Column("disconnect_code", Integer),
    _count("attempts"),
    _count("answered"),
    Index(
        "uq_cdr_daily_cause_key",
        *_ROLLUP_KEY,
        "disconnect_code",
        unique=True,
        postgresql_nulls_not_distinct=True,
    ),
)

# The most expensive calls of a period (docs/queries.md): a walk down this index instead of a
# sort of every CDR of the period.
Index("ix_cdr_customer_amount", cdr.c.customer_amount)
