"""cdr.payload_digest: what each row was made from, so a re-sync can skip pages it holds

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 08:30:00.000000

A keyed BLAKE2b-128 of the record as the API sent it, the account, the settings and the
version of the code that normalises it (``etl/rowdigest.py``). A page whose every record's
digest is stored under its i_cdr is already in the warehouse exactly as it would be loaded
again: a re-sync counts it unchanged without normalising or merging it. Existing rows start
without a digest (adding a nullable column rewrites nothing); each gets one the next time its
window is synced, without its values or ``updated_at`` changing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("cdr", sa.Column("payload_digest", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("cdr", "payload_digest")
