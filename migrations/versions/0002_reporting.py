"""reporting: time-zone setting, Q.850 causes, hourly and daily rollups, BI views

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00.000000

Views read the rollup tables (hourly and daily KPIs, disconnect causes), and ``cdr`` only for
the row-level cost check; ``ix_cdr_customer_amount`` serves "the most expensive calls". Every
view uses ``reporting_config.applied_time_zone``: the zone the rollup was built in, so all
figures agree; ``etl.reporting.rebuild_rollup`` applies a new ``time_zone``. The rollups are
kept current by ``etl.reporting.refresh_days``. The billing formula and the cost check are SQL
functions, shared by ``v_cost_check`` and the rollup.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NORMAL, BUSY, FAILURE = "normal", "busy / no answer", "network / routing failure"
NER_DELIVERED = (16, 17, 18, 19, 21)  # ITU-T E.425: network-delivered causes

# ITU-T Q.850 cause values: (code, name, class).
Q850: tuple[tuple[int, str, str], ...] = (
    (1, "Unallocated (unassigned) number", FAILURE),
    (2, "No route to specified transit network", FAILURE),
    (3, "No route to destination", FAILURE),
    (4, "Send special information tone", FAILURE),
    (5, "Misdialled trunk prefix", FAILURE),
    (6, "Channel unacceptable", FAILURE),
    (7, "Call awarded and being delivered in an established channel", FAILURE),
    (8, "Preemption", FAILURE),
    (9, "Preemption - circuit reserved for reuse", FAILURE),
    (16, "Normal call clearing", NORMAL),
    (17, "User busy", BUSY),
    (18, "No user responding", BUSY),
    (19, "No answer from user (user alerted)", BUSY),
    (20, "Subscriber absent", BUSY),
    (21, "Call rejected", BUSY),
    (22, "Number changed", FAILURE),
    (23, "Redirection to new destination", FAILURE),
    (25, "Exchange routing error", FAILURE),
    (26, "Non-selected user clearing", FAILURE),
    (27, "Destination out of order", FAILURE),
    (28, "Invalid number format (address incomplete)", FAILURE),
    (29, "Facility rejected", FAILURE),
    (30, "Response to STATUS ENQUIRY", FAILURE),
    (31, "Normal, unspecified", NORMAL),
    (34, "No circuit/channel available", FAILURE),
    (38, "Network out of order", FAILURE),
    (39, "Permanent frame mode connection out of service", FAILURE),
    (40, "Permanent frame mode connection operational", FAILURE),
    (41, "Temporary failure", FAILURE),
    (42, "Switching equipment congestion", FAILURE),
    (43, "Access information discarded", FAILURE),
    (44, "Requested circuit/channel not available", FAILURE),
    (46, "Precedence call blocked", FAILURE),
    (47, "Resource unavailable, unspecified", FAILURE),
    (49, "Quality of service not available", FAILURE),
    (50, "Requested facility not subscribed", FAILURE),
    (53, "Outgoing calls barred within CUG", FAILURE),
    (55, "Incoming calls barred within CUG", FAILURE),
    (57, "Bearer capability not authorized", FAILURE),
    (58, "Bearer capability not presently available", FAILURE),
    (62, "Inconsistency in outgoing access information and subscriber class", FAILURE),
    (63, "Service or option not available, unspecified", FAILURE),
    (65, "Bearer capability not implemented", FAILURE),
    (66, "Channel type not implemented", FAILURE),
    (69, "Requested facility not implemented", FAILURE),
    (70, "Only restricted digital information bearer capability is available", FAILURE),
    (79, "Service or option not implemented, unspecified", FAILURE),
    (81, "Invalid call reference value", FAILURE),
    (82, "Identified channel does not exist", FAILURE),
    (83, "A suspended call exists, but this call identity does not", FAILURE),
    (84, "Call identity in use", FAILURE),
    (85, "No call suspended", FAILURE),
    (86, "Call having the requested call identity has been cleared", FAILURE),
    (87, "User not member of CUG", FAILURE),
    (88, "Incompatible destination", FAILURE),
    (90, "Non-existent CUG", FAILURE),
    (91, "Invalid transit network selection", FAILURE),
    (95, "Invalid message, unspecified", FAILURE),
    (96, "Mandatory information element is missing", FAILURE),
    (97, "Message type non-existent or not implemented", FAILURE),
    (98, "Message not compatible with call state or message type non-existent", FAILURE),
    (99, "Information element / parameter non-existent or not implemented", FAILURE),
    (100, "Invalid information element contents", FAILURE),
    (101, "Message not compatible with call state", FAILURE),
    (102, "Recovery on timer expiry", FAILURE),
    (103, "Parameter non-existent or not implemented, passed on", FAILURE),
    (110, "Message with unrecognized parameter, discarded", FAILURE),
    (111, "Protocol error, unspecified", FAILURE),
    (127, "Interworking, unspecified", FAILURE),
)

_VALID_ZONE = "(timestamptz '2000-01-01 00:00:00+00' AT TIME ZONE {}) IS NOT NULL"
_NER = ", ".join(str(code) for code in NER_DELIVERED)
_TZ = "(SELECT applied_time_zone FROM reporting_config)"  # an InitPlan: evaluated once

# The billing formula of docs/API-NOTES: billed = 0 if d = 0; X if d <= X; else
# X + ceil((d - X) / Y) * Y; amount = (X * p1 + (billed - X) * pn) / 60 (prices per minute).
FUNCTIONS: tuple[tuple[str, str], ...] = (
    (
        "cdr_rated_billed_duration(duration integer, interval_1 integer, interval_n integer)",
        """RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN coalesce(duration, 0) <= 0 THEN 0
            WHEN duration <= interval_1 THEN interval_1
            ELSE interval_1 + ceil((duration - interval_1)::numeric / interval_n)::integer
                 * interval_n END""",
    ),
    (
        "cdr_rated_amount(billed_duration integer, interval_1 integer,"
        " price_1 numeric, price_n numeric)",
        """RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN coalesce(billed_duration, 0) = 0 THEN 0
            ELSE round((interval_1 * price_1 + (billed_duration - interval_1) * price_n) / 60, 6)
       END""",
    ),
    # NULL when the row is consistent with its rate (within one micro-unit) or cannot be
    # checked (no increments, prices or amount); else what differs.
    (
        "cdr_cost_issue(duration integer, billed_duration integer, interval_1 integer,"
        " interval_n integer, price_1 numeric, price_n numeric, customer_amount numeric)",
        """RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN interval_1 IS NULL OR interval_1 < 0 OR interval_n IS NULL OR interval_n <= 0
         OR price_1 IS NULL OR price_n IS NULL OR customer_amount IS NULL THEN NULL
    WHEN coalesce(billed_duration, 0)
             <> cdr_rated_billed_duration(duration, interval_1, interval_n)
    THEN CASE WHEN abs(customer_amount
                       - cdr_rated_amount(billed_duration, interval_1, price_1, price_n))
                   > 0.000001
              THEN 'billed_duration, amount' ELSE 'billed_duration' END
    WHEN abs(customer_amount - cdr_rated_amount(billed_duration, interval_1, price_1, price_n))
         > 0.000001 THEN 'amount'
END""",
    ),
)

_RATE_ARGS = "r.billing_interval_1, r.billing_interval_n"
_ISSUE = (
    "cdr_cost_issue(r.duration, r.billed_duration, r.billing_interval_1, r.billing_interval_n,"
    " r.billing_price_1, r.billing_price_n, r.customer_amount)"
)
_RATED = (
    "cdr_rated_amount(r.billed_duration, r.billing_interval_1, r.billing_price_1,"
    " r.billing_price_n)"
)

_MEASURES = (
    "attempts",
    "answered",
    "ner_delivered",
    "billed_seconds",
    "duration_seconds",
    "spend",
    "tta_seconds",
    "tta_calls",
    "cost_mismatches",
    "cost_difference",
)
_SUMS = ", ".join(
    f"sum(h.{m})" + ("" if m in ("spend", "tta_seconds", "cost_difference") else "::bigint")
    + f" AS {m}"
    for m in _MEASURES
)

# Ratios from additive measures; used by the daily and the hourly view alike.
_KPI_COLUMNS = """
       m.attempts, m.answered,
       round(100.0 * m.answered / nullif(m.attempts, 0), 2) AS asr_pct,
       round(1.0 * m.billed_seconds / nullif(m.answered, 0), 1) AS acd_seconds,
       round(m.billed_seconds / 60.0, 2) AS billed_minutes,
       m.spend,
       round(100.0 * m.ner_delivered / nullif(m.attempts, 0), 2) AS ner_pct,
       round(m.tta_seconds / nullif(m.tta_calls, 0), 1) AS avg_tta_seconds,
       m.billed_seconds, m.duration_seconds, m.ner_delivered, m.tta_seconds, m.tta_calls,
       m.cost_mismatches, m.cost_difference"""

VIEWS: tuple[tuple[str, str], ...] = (
    (
        "v_reporting_period",
        """
SELECT d.time_zone,
       d.latest_day,
       date_trunc('month', d.latest_day::timestamp)::date AS month_start,
       date_trunc('month', d.latest_day::timestamp) AT TIME ZONE d.time_zone AS month_start_at,
       d.latest_day::timestamp AT TIME ZONE d.time_zone AS latest_day_start_at
FROM (SELECT (SELECT max(day) FROM cdr_daily) AS latest_day,
             (SELECT applied_time_zone FROM reporting_config) AS time_zone) d
""",
    ),
    (
        "v_daily_kpi",
        f"""
SELECT m.day, {_TZ} AS time_zone, m.api_login, m.country_name, m.i_vendor,
       m.vendor_name,{_KPI_COLUMNS}
FROM cdr_daily m
""",
    ),
    (
        "v_hourly_kpi",
        f"""
SELECT m.hour_start AT TIME ZONE {_TZ} AS hour, m.hour_start, {_TZ} AS time_zone, m.api_login,
       m.country_name, m.i_vendor, m.vendor_name,{_KPI_COLUMNS}
FROM (
    SELECT h.hour_start, h.api_login, h.country_name, h.i_vendor, h.vendor_name,
           {_SUMS}
    FROM cdr_hourly h
    -- the last hourly_days reporting days, up to the latest hour loaded: bounded on both
    -- sides, so that the planner estimates a range and reads it with the index
    WHERE h.hour_start >= ((SELECT max(day) FROM cdr_daily)
                           - ((SELECT hourly_days FROM reporting_config) - 1))::timestamp
                          AT TIME ZONE {_TZ}
      AND h.hour_start <= (SELECT max(hour_start) FROM cdr_hourly)
    GROUP BY 1, 2, 3, 4, 5
) m
""",
    ),
    (
        "v_disconnect_causes",
        f"""
SELECT m.day, {_TZ} AS time_zone, m.api_login, m.country_name, m.i_vendor,
       m.vendor_name, m.disconnect_code AS code,
       coalesce(q.name, 'Unknown cause') AS name,
       coalesce(q.class, 'unclassified') AS class,
       coalesce(q.ner_delivered, false) AS ner_delivered,
       m.attempts AS calls, m.answered, m.attempts - m.answered AS failed,
       round(100.0 * m.attempts / sum(m.attempts) OVER (
           PARTITION BY m.day, m.api_login, m.country_name, m.i_vendor, m.vendor_name), 2)
           AS share_pct
FROM cdr_daily_cause m
LEFT JOIN q850_cause q ON q.code = m.disconnect_code
""",
    ),
    (
        "v_cost_check",
        f"""
SELECT r.i_cdr, r.api_login, r.connect_time,
       (coalesce(r.connect_time, r.setup_time) AT TIME ZONE {_TZ})::date AS day,
       r.country_name, r.vendor_name, r.billing_prefix, r.duration, r.billed_duration,
       cdr_rated_billed_duration(r.duration, {_RATE_ARGS}) AS expected_billed_duration,
       r.billing_interval_1, r.billing_interval_n, r.billing_price_1, r.billing_price_n,
       r.customer_amount, {_RATED} AS expected_amount,
       r.customer_amount - {_RATED} AS difference,
       {_ISSUE} AS issue
FROM cdr r
WHERE {_ISSUE} IS NOT NULL
""",
    ),
)


def upgrade() -> None:
    op.create_table(
        "reporting_config",
        sa.Column("id", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("time_zone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column(
            "applied_time_zone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False
        ),
        sa.Column("hourly_days", sa.Integer(), server_default=sa.text("7"), nullable=False),
        sa.CheckConstraint("id", name="ck_reporting_config_single_row"),
        sa.CheckConstraint(_VALID_ZONE.format("time_zone"), name="ck_reporting_config_time_zone"),
        sa.CheckConstraint(
            _VALID_ZONE.format("applied_time_zone"),
            name="ck_reporting_config_applied_time_zone",
        ),
        sa.CheckConstraint(
            "hourly_days BETWEEN 1 AND 366", name="ck_reporting_config_hourly_days"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reporting_config")),
    )
    op.execute("INSERT INTO reporting_config DEFAULT VALUES")
    q850 = op.create_table(
        "q850_cause",
        sa.Column("code", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("class", sa.Text(), nullable=False),
        sa.Column("ner_delivered", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "class IN ('normal', 'busy / no answer', 'network / routing failure')",
            name="ck_q850_cause_class",
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_q850_cause")),
    )
    op.bulk_insert(
        q850,
        [
            {"code": code, "name": name, "class": kind, "ner_delivered": code in NER_DELIVERED}
            for code, name, kind in Q850
        ],
    )
    _create_rollups()
    op.create_index("ix_cdr_customer_amount", "cdr", ["customer_amount"], unique=False)
    for signature, body in FUNCTIONS:
        op.execute(f"CREATE FUNCTION {signature} {body}")
    for name, body in VIEWS:
        op.execute(f"CREATE VIEW {name} AS {body}")
    op.execute("ANALYZE reporting_config")
    op.execute("ANALYZE q850_cause")


def _key_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("api_login", sa.Text(), nullable=False),
        sa.Column("country_name", sa.Text(), nullable=True),
        sa.Column("i_vendor", sa.BigInteger(), nullable=True),
        sa.Column("vendor_name", sa.Text(), nullable=True),
    ]


def _measure_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("answered", sa.BigInteger(), nullable=False),
        sa.Column("ner_delivered", sa.BigInteger(), nullable=False),
        sa.Column("billed_seconds", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.BigInteger(), nullable=False),
        sa.Column("spend", sa.Numeric(), nullable=False),
        sa.Column("tta_seconds", sa.Numeric(), nullable=False),
        sa.Column("tta_calls", sa.BigInteger(), nullable=False),
        sa.Column("cost_mismatches", sa.BigInteger(), nullable=False),
        sa.Column("cost_difference", sa.Numeric(), nullable=False),
    ]


def _create_rollups() -> None:
    key = ["day", "api_login", "country_name", "i_vendor", "vendor_name"]
    op.create_table("cdr_daily", *_key_columns(), *_measure_columns())
    op.create_index(
        "uq_cdr_daily_key", "cdr_daily", key, unique=True, postgresql_nulls_not_distinct=True
    )
    op.create_table(
        "cdr_hourly",
        sa.Column("hour_start", sa.DateTime(timezone=True), nullable=False),
        *_key_columns(),
        sa.Column("disconnect_code", sa.Integer(), nullable=True),
        *_measure_columns(),
    )
    op.create_index(
        "uq_cdr_hourly_key",
        "cdr_hourly",
        ["hour_start", *key[1:], "disconnect_code"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.create_table(
        "cdr_daily_cause",
        *_key_columns(),
        sa.Column("disconnect_code", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("answered", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "uq_cdr_daily_cause_key",
        "cdr_daily_cause",
        [*key, "disconnect_code"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )


def downgrade() -> None:
    for name, _body in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for signature, _body in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    op.drop_index("ix_cdr_customer_amount", table_name="cdr")
    op.drop_index("uq_cdr_daily_cause_key", table_name="cdr_daily_cause")
    op.drop_table("cdr_daily_cause")
    op.drop_index("uq_cdr_hourly_key", table_name="cdr_hourly")
    op.drop_table("cdr_hourly")
    op.drop_index("uq_cdr_daily_key", table_name="cdr_daily")
    op.drop_table("cdr_daily")
    op.drop_table("q850_cause")
    op.drop_table("reporting_config")
