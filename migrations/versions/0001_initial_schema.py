"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 13:13:11.525120
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cdr",
        sa.Column("i_cdr", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("cld", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("cli", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("call_id", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("duration", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column("billed_duration", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column(
            "connect_time",
            sa.DateTime(timezone=True),
            autoincrement=False,
            nullable=True,
        ),
        sa.Column(
            "disconnect_time",
            sa.DateTime(timezone=True),
            autoincrement=False,
            nullable=True,
        ),
        sa.Column(
            "setup_time", sa.DateTime(timezone=True), autoincrement=False, nullable=True
        ),
        sa.Column("billing_prefix", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("billing_price_1", sa.Numeric(), autoincrement=False, nullable=True),
        sa.Column("billing_price_n", sa.Numeric(), autoincrement=False, nullable=True),
        sa.Column(
            "billing_interval_1", sa.Integer(), autoincrement=False, nullable=True
        ),
        sa.Column(
            "billing_interval_n", sa.Integer(), autoincrement=False, nullable=True
        ),
        sa.Column("customer_amount", sa.Numeric(), autoincrement=False, nullable=True),
        sa.Column("i_customer", sa.BigInteger(), autoincrement=False, nullable=True),
        sa.Column("i_account", sa.BigInteger(), autoincrement=False, nullable=True),
        sa.Column("i_vendor", sa.BigInteger(), autoincrement=False, nullable=True),
        sa.Column("i_connection", sa.BigInteger(), autoincrement=False, nullable=True),
        sa.Column(
            "i_purchased_route", sa.BigInteger(), autoincrement=False, nullable=True
        ),
        sa.Column("disconnect_code", sa.Integer(), autoincrement=False, nullable=True),
        sa.Column("customer_ip", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("i_rate", sa.BigInteger(), autoincrement=False, nullable=True),
        sa.Column("vendor_name", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("account_name", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("connection_name", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("disconnect_reason", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("country_name", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("description", sa.Text(), autoincrement=False, nullable=True),
        sa.Column("api_login", sa.Text(), nullable=False),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "loaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("i_cdr", name=op.f("pk_cdr")),
    )
    op.create_index(
        "ix_cdr_api_login_connect_time",
        "cdr",
        ["api_login", "connect_time"],
        unique=False,
    )
    op.create_index(
        "ix_cdr_billing_prefix",
        "cdr",
        ["billing_prefix"],
        unique=False,
        postgresql_ops={"billing_prefix": "text_pattern_ops"},
    )
    op.create_index(
        "ix_cdr_cld",
        "cdr",
        ["cld"],
        unique=False,
        postgresql_ops={"cld": "text_pattern_ops"},
    )
    op.create_index("ix_cdr_connect_time", "cdr", ["connect_time"], unique=False)
    op.create_index(
        "ix_cdr_country_name_connect_time",
        "cdr",
        ["country_name", "connect_time"],
        unique=False,
    )
    op.create_index(
        "ix_cdr_i_vendor_connect_time",
        "cdr",
        ["i_vendor", "connect_time"],
        unique=False,
    )
    op.create_table(
        "etl_run",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("api_login", sa.Text(), nullable=True),
        sa.Column("range_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("range_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status", sa.Text(), server_default=sa.text("'running'"), nullable=False
        ),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("windows", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("pages", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "rows_fetched", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "inserted", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "updated", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "unchanged", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "rejected", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "conflicts", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_etl_run")),
    )
    op.create_table(
        "sync_state",
        sa.Column("api_login", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("api_login", "prefix", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "cdr_conflict",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("i_cdr", sa.BigInteger(), nullable=False),
        sa.Column("api_login", sa.Text(), nullable=False),
        sa.Column("kept_call_id", sa.Text(), nullable=True),
        sa.Column("incoming_call_id", sa.Text(), nullable=True),
        sa.Column(
            "stored_payload", postgresql.JSONB(astext_type=sa.Text()), nullable=True
        ),
        sa.Column(
            "incoming_payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False
        ),
        sa.Column("payload_digest", sa.Text(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "loaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_run.id"],
            name=op.f("fk_cdr_conflict_run_id_etl_run"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cdr_conflict")),
        sa.UniqueConstraint(
            "i_cdr", "payload_digest", name=op.f("uq_cdr_conflict_i_cdr_payload_digest")
        ),
    )
    op.create_table(
        "cdr_reject",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("api_login", sa.Text(), nullable=False),
        sa.Column("i_cdr", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("raw_digest", sa.Text(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "loaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_run.id"],
            name=op.f("fk_cdr_reject_run_id_etl_run"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cdr_reject")),
        sa.UniqueConstraint(
            "api_login", "raw_digest", name=op.f("uq_cdr_reject_api_login_raw_digest")
        ),
    )
    op.create_table(
        "sync_window",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("api_login", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("pages", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "rows_fetched", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "inserted", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "updated", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "unchanged", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "rejected", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "conflicts", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "duration_s", sa.Double(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_run.id"],
            name=op.f("fk_sync_window_run_id_etl_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_window")),
    )
    op.create_index(
        "ix_sync_window_api_login_window_start",
        "sync_window",
        ["api_login", "window_start"],
        unique=False,
    )
    op.create_index("ix_sync_window_run_id", "sync_window", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sync_window_run_id", table_name="sync_window")
    op.drop_index("ix_sync_window_api_login_window_start", table_name="sync_window")
    op.drop_table("sync_window")
    op.drop_table("cdr_reject")
    op.drop_table("cdr_conflict")
    op.drop_table("sync_state")
    op.drop_table("etl_run")
    op.drop_index("ix_cdr_i_vendor_connect_time", table_name="cdr")
    op.drop_index("ix_cdr_country_name_connect_time", table_name="cdr")
    op.drop_index("ix_cdr_connect_time", table_name="cdr")
    op.drop_index(
        "ix_cdr_cld", table_name="cdr", postgresql_ops={"cld": "text_pattern_ops"}
    )
    op.drop_index(
        "ix_cdr_billing_prefix",
        table_name="cdr",
        postgresql_ops={"billing_prefix": "text_pattern_ops"},
    )
    op.drop_index("ix_cdr_api_login_connect_time", table_name="cdr")
    op.drop_table("cdr")
