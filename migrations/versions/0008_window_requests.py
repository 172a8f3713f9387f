"""sync_window.requests: every API request a window made, retries and failed ones included

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 03:00:00.000000

The hourly request budget (TCXC_REQUESTS_PER_HOUR) counts the requests other processes made
from the ledger. It summed ``pages``, which a failed window records as 0 and which never
counts a retried attempt: `sync` from cron against an API answering errors (429s among them)
could send far more than the budget. Windows now record every request they made, done or
failed; rows written before this revision have none (NULL) and count their pages.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sync_window", sa.Column("requests", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("sync_window", "requests")
