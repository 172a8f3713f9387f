"""etl_run.prefix and finishes_run: which prefix a run synced, which deep pass it finished

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 04:00:00.000000

`status` and `/healthz` show whether the last deep pass of each account and prefix completed,
and an incremental pass finishes one that did not. A run's prefix was known only through its
ledger rows, so a deep pass stopped or failed before its first window had none. Runs now
record it; older runs take the one prefix of their ledger rows (NULL if they have none or
several). ``finishes_run`` marks such a finishing run with the id of the deep pass it
finishes: a deep pass due at the same time as another process's skips only for a whole deep
pass, not for the finishing of an older one. The index serves "the last run of this account
and command".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("etl_run", sa.Column("prefix", sa.Text(), nullable=True))
    op.add_column("etl_run", sa.Column("finishes_run", sa.BigInteger(), nullable=True))
    op.execute(
        """
        UPDATE etl_run r SET prefix = w.prefix
        FROM (SELECT run_id, min(prefix) AS prefix FROM sync_window
              GROUP BY run_id HAVING count(DISTINCT prefix) = 1) w
        WHERE r.id = w.run_id
        """
    )
    op.create_index("ix_etl_run_api_login_command", "etl_run", ["api_login", "command", "id"])


def downgrade() -> None:
    op.drop_index("ix_etl_run_api_login_command", table_name="etl_run")
    op.drop_column("etl_run", "finishes_run")
    op.drop_column("etl_run", "prefix")
