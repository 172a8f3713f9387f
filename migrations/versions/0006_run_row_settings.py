"""etl_run.row_settings: the settings a run read its records under, so that a resumed
backfill skips only windows read the same way

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 21:45:00.000000

``TCXC_API_TIMEZONE`` decides what instant each of the API's naive times is, and
``TCXC_RAW_PAYLOAD`` what ``cdr.raw`` keeps: a window committed under other values holds rows
that a sync under the current ones would write differently. A resumed backfill now counts a
window as done only if its run's ``row_settings`` equal the current ones. Runs recorded
before this revision have none (NULL): their windows are synced again once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("etl_run", sa.Column("row_settings", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("etl_run", "row_settings")
