"""fewer indexes on cdr: each costs every row loaded

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 08:00:00.000000

Every secondary index of ``cdr`` is maintained for every row a sync writes: with seven of
them, index upkeep was about two thirds of what PostgreSQL spends on a first sync's COPY
(README, Performance). This keeps the ones that documented questions or dispute work read:

- ``(connect_time, api_login)`` replaces ``(connect_time)`` and ``(api_login,
  connect_time)``: a period's rows of every account, or of one (the rollup refresh filters
  ``api_login`` inside the index, so other accounts' rows are never fetched);
- ``cld`` (prefix search: calls to a number, over any period) and ``customer_amount`` (the
  most expensive calls) stay.

Dropped: ``(country_name, connect_time)``, ``(i_vendor, connect_time)`` and ``billing_prefix``.
No documented query reads them (``docs/queries.md``); per-country and per-vendor figures come
from the rollup tables, and a row-level search by country, vendor or prefix within a period
reads that period through the time index. An operator who searches those rows across all
time can add an index back (``CREATE INDEX CONCURRENTLY ...``), at that cost per row loaded.
Building the new index reads the whole table and holds writes (not reads) back meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_cdr_connect_time_api_login", "cdr", ["connect_time", "api_login"])
    op.drop_index("ix_cdr_connect_time", table_name="cdr")
    op.drop_index("ix_cdr_api_login_connect_time", table_name="cdr")
    op.drop_index("ix_cdr_country_name_connect_time", table_name="cdr")
    op.drop_index("ix_cdr_i_vendor_connect_time", table_name="cdr")
    op.drop_index("ix_cdr_billing_prefix", table_name="cdr")


def downgrade() -> None:
    op.create_index(
        "ix_cdr_billing_prefix",
        "cdr",
        ["billing_prefix"],
        postgresql_ops={"billing_prefix": "text_pattern_ops"},
    )
    op.create_index("ix_cdr_i_vendor_connect_time", "cdr", ["i_vendor", "connect_time"])
    op.create_index("ix_cdr_country_name_connect_time", "cdr", ["country_name", "connect_time"])
    op.create_index("ix_cdr_api_login_connect_time", "cdr", ["api_login", "connect_time"])
    op.create_index("ix_cdr_connect_time", "cdr", ["connect_time"])
    op.drop_index("ix_cdr_connect_time_api_login", table_name="cdr")
