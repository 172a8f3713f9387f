"""The short report printed after a demo run (and by ``tcxc-etl report``)."""

from __future__ import annotations

from sqlalchemy import Engine, text

_TOTALS = text(
    "SELECT count(*), count(*) FILTER (WHERE duration > 0), coalesce(sum(customer_amount), 0),"
    " min(connect_time), max(connect_time) FROM cdr"
)
_TOP_DESTINATIONS = text(
    "SELECT coalesce(country_name, '(unknown)'), count(*), sum(customer_amount)"
    " FROM cdr GROUP BY 1 ORDER BY 3 DESC NULLS LAST, 1 LIMIT :limit"
)
_ASR_BY_VENDOR = text(
    "SELECT coalesce(vendor_name, '(unknown)'), count(*),"
    " round(100.0 * count(*) FILTER (WHERE duration > 0) / count(*), 1)"
    " FROM cdr GROUP BY 1 ORDER BY 1"
)
_SIDE_TABLES = text("SELECT (SELECT count(*) FROM cdr_reject), (SELECT count(*) FROM cdr_conflict)")


def build_report(engine: Engine, limit: int = 5) -> str:
    """Rows loaded, top destinations by spend, ASR by vendor, as plain text."""
    with engine.connect() as conn:
        total, answered, spend, first, last = conn.execute(_TOTALS).one()
        rejects, conflicts = conn.execute(_SIDE_TABLES).one()
        top = conn.execute(_TOP_DESTINATIONS, {"limit": limit}).all()
        vendors = conn.execute(_ASR_BY_VENDOR).all()
    lines = [
        f"CDRs in the warehouse: {total:,} ({answered:,} answered), spend {spend:.2f}",
        f"  connect_time from {first} to {last}" if total else "  no CDRs loaded yet",
        f"  rejected records: {rejects:,}; i_cdr conflicts: {conflicts:,}",
        "",
        f"Top {limit} destinations by spend:",
    ]
    lines += [
        f"  {name:<32} {calls:>9,} calls  {amount or 0:>14.2f}" for name, calls, amount in top
    ]
    lines += ["", "ASR by vendor:"]
    lines += [f"  {name:<32} {calls:>9,} calls  ASR {asr:>5}%" for name, calls, asr in vendors]
    return "\n".join(lines)
