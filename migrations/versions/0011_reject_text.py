"""cdr_reject.raw as a sync writes it now, so a record met again is not stored twice

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 08:00:00.000000

A reject is stored once per account and digest of its ``raw`` text. Before exact JSON numbers
(tcxc-etl of 2026-11-30) that text was ``json.dumps`` of the record (", " and ": " between
items, non-ASCII as ``\\uXXXX``); it is now compact UTF-8 JSON (``etl.jsonparse.dumps_text``).
After an upgrade, a rejected record met again got a second row under the new text's digest.
This revision writes the older rows' text and digest as a sync writes them now (its own copy
of that writer), and keeps the first row of any two that become one. Numbers the older code
had read as floats keep the digits it wrote (``0.004980`` stayed ``0.00498``): such a record
is still stored once more, with the digits the API sends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 5000


def _number(text: str) -> float | Decimal:
    value = float(text)
    return value if repr(value) == text else Decimal(text)


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(type(value).__name__)


def _ascii_text(value: Any) -> str:
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}:{_ascii_text(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(_ascii_text, value)) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, default=str)


def _text_now(raw: str) -> str:
    """``raw`` as etl.jsonparse.dumps_text writes the record (as of this revision)."""
    try:
        value = json.loads(raw, parse_float=_number)
    except ValueError:
        return raw  # (not JSON: left as it is)
    try:
        return orjson.dumps(value, default=_fragment).decode()
    except TypeError:  # a string that is not valid Unicode, an integer beyond 64 bits
        return _ascii_text(value)


def _digest(text: str) -> str:
    """etl.load.save_rejects's digest of a reject's text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def upgrade() -> None:
    conn = op.get_bind()
    conn.execute(sa.text("CREATE TEMPORARY TABLE reject_text (id bigint, raw text, digest text)"))
    last = 0
    while True:
        rows = conn.execute(
            sa.text("SELECT id, raw FROM cdr_reject WHERE id > :last ORDER BY id LIMIT :n"),
            {"last": last, "n": _BATCH},
        ).all()
        if not rows:
            break
        last = rows[-1][0]
        texts = ((row_id, raw, _text_now(raw)) for row_id, raw in rows)
        changed = [
            {"id": row_id, "raw": now, "digest": _digest(now)}
            for row_id, raw, now in texts
            if now != raw
        ]
        if changed:
            conn.execute(sa.text("INSERT INTO reject_text VALUES (:id, :raw, :digest)"), changed)
    op.execute("""
WITH next AS (
    SELECT r.id, r.api_login, coalesce(t.digest, r.raw_digest) AS digest
    FROM cdr_reject r LEFT JOIN reject_text t ON t.id = r.id
), ranked AS (
    SELECT id, row_number() OVER (PARTITION BY api_login, digest ORDER BY id) AS nth FROM next
)
DELETE FROM cdr_reject c USING ranked k WHERE c.id = k.id AND k.nth > 1
""")
    op.execute(
        "UPDATE cdr_reject c SET raw = t.raw, raw_digest = t.digest FROM reject_text t"
        " WHERE c.id = t.id"
    )
    op.execute("DROP TABLE reject_text")


def downgrade() -> None:
    pass  # revision 0010's code writes the same texts: nothing to undo
