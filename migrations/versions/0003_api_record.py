"""api_record(cdr): the record as the API sent it, rebuilt from the columns and the payload

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 07:30:00.000000

With TCXC_RAW_PAYLOAD=compact (the default from this version on) ``cdr.raw`` keeps only what
the typed columns cannot give back (``etl/payload.py`` holds the rule); ``api_record`` puts
the two together again. Each documented field is printed from its column the way the API
usually sends it (ids, counts and amounts as strings, the two billing prices as numbers,
times as 'YYYY-MM-DD HH:MM:SS' in UTC), a NULL column is left out, and the payload's keys
override. A payload that is a one-element array holds the whole record (a documented field
spelt otherwise than the API), and so does an object payload stored with ``full``. Call it
as ``api_record(c)`` or ``c.api_record`` on a row ``c`` of ``cdr``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "api_record(c cdr)"
BODY = """RETURNS jsonb LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE WHEN jsonb_typeof(c.raw) = 'array' THEN c.raw -> 0
ELSE jsonb_strip_nulls(jsonb_build_object(
        'i_cdr', c.i_cdr::text,
        'CLD', c.cld,
        'CLI', c.cli,
        'call_id', c.call_id,
        'duration', c.duration::text,
        'billed_duration', c.billed_duration::text,
        'connect_time', to_char(c.connect_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
        'disconnect_time', to_char(c.disconnect_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
        'setup_time', to_char(c.setup_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
        'billing_prefix', c.billing_prefix,
        'billing_price_1', c.billing_price_1,
        'billing_price_n', c.billing_price_n,
        'billing_interval_1', c.billing_interval_1::text,
        'billing_interval_n', c.billing_interval_n::text,
        'customer_amount', c.customer_amount::text,
        'i_customer', c.i_customer::text,
        'i_account', c.i_account::text,
        'i_vendor', c.i_vendor::text,
        'i_connection', c.i_connection::text,
        'i_purchased_route', c.i_purchased_route::text,
        'disconnect_code', c.disconnect_code::text,
        'customer_ip', c.customer_ip,
        'i_rate', c.i_rate::text,
        'vendor_name', c.vendor_name,
        'account_name', c.account_name,
        'connection_name', c.connection_name,
        'disconnect_reason', c.disconnect_reason,
        'country_name', c.country_name,
        'description', c.description
    )) || c.raw
END
$$"""


def upgrade() -> None:
    op.execute(f"CREATE FUNCTION {SIGNATURE} {BODY}")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
