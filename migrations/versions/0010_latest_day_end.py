"""v_reporting_period.latest_day_end_at: where the latest reporting day ends

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 07:00:00.000000

"The latest day" of a query on timestamps was ``latest_day_start_at + interval '1 day'``, which
PostgreSQL computes in the session's TimeZone: from a session in another zone than the
reporting one (a BI tool's default, UTC on the embedded server) a day whose clocks go back
lost its 25th hour, and a day whose clocks go forward took the first hour of the next. The
view now gives the end instant itself, computed in the reporting zone. The new column comes
last, so ``CREATE OR REPLACE VIEW`` keeps the view (and the grants on it).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = """
SELECT d.time_zone,
       d.latest_day,
       date_trunc('month', d.latest_day::timestamp)::date AS month_start,
       date_trunc('month', d.latest_day::timestamp) AT TIME ZONE d.time_zone AS month_start_at,
       d.latest_day::timestamp AT TIME ZONE d.time_zone AS latest_day_start_at{more}
FROM (SELECT (SELECT max(day) FROM cdr_daily) AS latest_day,
             (SELECT applied_time_zone FROM reporting_config) AS time_zone) d
"""
_END = ",\n       (d.latest_day + 1)::timestamp AT TIME ZONE d.time_zone AS latest_day_end_at"


def upgrade() -> None:
    op.execute("CREATE OR REPLACE VIEW v_reporting_period AS " + _BEFORE.format(more=_END))


def downgrade() -> None:
    # A view cannot lose a column in place: drop it and create the older one.
    op.execute("DROP VIEW v_reporting_period")
    op.execute("CREATE VIEW v_reporting_period AS " + _BEFORE.format(more=""))
