"""cdr_conflict.payload_digest: the record as the API sent it, whatever TCXC_RAW_PAYLOAD was

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 02:30:00.000000

A conflict is recorded once per i_cdr and digest. The digest was the md5 of the incoming
payload, whose ``raw`` holds what TCXC_RAW_PAYLOAD keeps (the whole record with ``full``,
next to nothing with ``compact``): after a change of mode, or an upgrade from before 0003,
the same conflicting record was recorded a second time. The digest now covers what every
mode stores alike: the typed values (the account among them) and the undocumented fields,
as ``etl.load.CONFLICT_DIGEST`` computes it. This revision recomputes the stored digests and
keeps the first row recorded of each record (the lowest id).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The API's documented field names (etl.fields.API_KEYS of this revision).
_DOCUMENTED = (
    "i_cdr CLD CLI call_id duration billed_duration connect_time disconnect_time setup_time"
    " billing_prefix billing_price_1 billing_price_n billing_interval_1 billing_interval_n"
    " customer_amount i_customer i_account i_vendor i_connection i_purchased_route"
    " disconnect_code customer_ip i_rate vendor_name account_name connection_name"
    " disconnect_reason country_name description"
).split()
# etl.load.CONFLICT_DIGEST of this revision (a migration keeps its own copy): the typed values
# and the undocumented fields, what every TCXC_RAW_PAYLOAD mode stores alike.
_DIGEST = (
    "md5(({p} - 'raw')::text || E'\\n' || (CASE jsonb_typeof({p} -> 'raw')"
    " WHEN 'array' THEN {p} -> 'raw' -> 0 WHEN 'object' THEN {p} -> 'raw'"
    " ELSE jsonb_build_object() END - ARRAY["
    + ", ".join(f"'{key}'" for key in _DOCUMENTED)
    + "])::text)"
).format(p="incoming_payload")


def upgrade() -> None:
    op.execute(f"""
WITH recomputed AS (
    SELECT id, {_DIGEST} AS digest,
           row_number() OVER (PARTITION BY i_cdr, {_DIGEST} ORDER BY id) AS nth
    FROM cdr_conflict
), repeated AS (
    DELETE FROM cdr_conflict c USING recomputed r WHERE c.id = r.id AND r.nth > 1
)
UPDATE cdr_conflict c SET payload_digest = r.digest
FROM recomputed r WHERE c.id = r.id AND r.nth = 1 AND c.payload_digest <> r.digest
""")


def downgrade() -> None:
    # The older digest of each remaining row (the rows removed as repeats stay removed).
    op.execute("UPDATE cdr_conflict SET payload_digest = md5(incoming_payload::text)")
