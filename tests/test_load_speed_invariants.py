"""The fast load path keeps every guarantee: page normalisation -> COPY text -> one merge.

These tests drive the load path the way the pipeline does for each window (``_sync`` below:
``Normalizer.normalize_page``, ``load.stage_text``, ``load.save_rejects``, ``load.merge``, one
transaction per window) and check what must hold whatever the speed: the staged and merged
values are exactly the reference normaliser's, and a re-sync writes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy import Engine

from etl import load
from etl.client import ApiClient
from etl.config import Settings
from etl.fields import FIELDS
from etl.normalize import ROW_COLUMNS, Normalizer
from etl.pagination import OffsetPaginator, distinct_count, page_digest
from etl.simulator import Simulator, SimulatorConfig
from etl.windows import plan_windows
from tests.conftest import make_settings, sim_range, table_rows, write_counters

ZONE = ZoneInfo("America/St_Johns")  # -03:30 / -02:30: a DST zone with a half-hour offset


def _sync(engine: Engine, settings: Settings, widen: timedelta = timedelta()) -> Counter[str]:
    """Sync the simulator's range through the fast path, one transaction per window."""
    client = ApiClient(settings.api_url, settings.api_login, settings.api_key.reveal())
    normalizer = Normalizer(settings.api_login, settings.api_timezone, settings.raw_payload)
    start, end = sim_range()
    totals: Counter[str] = Counter()
    for window in plan_windows(start - widen, end + widen, settings.window):
        with engine.begin() as sa_conn:
            conn = sa_conn.connection.driver_connection
            assert isinstance(conn, psycopg.Connection)
            load.open_stage(conn)
            paginator = OffsetPaginator(settings.page_size)
            while not paginator.done:
                params = {**window.api_params(settings.api_timezone), **paginator.params()}
                page = client.fetch_page(params)
                paginator.advance(distinct_count(page.records), page_digest(page.body))
                normalized = normalizer.normalize_page(page.records)
                load.stage_text(conn, normalized.copy_text)
                rejects = [
                    load.Reject(
                        settings.api_login, str(record.get("i_cdr")), why, json.dumps(record)
                    )
                    for record, why in normalized.rejects
                ]
                totals["rejected"] += load.save_rejects(
                    conn, rejects, None, (window.start, window.end)
                )
            merged = load.merge(conn, None)  # type: ignore[arg-type]  # no run row here
            totals.update(
                inserted=merged.inserted,
                updated=merged.updated,
                unchanged=merged.unchanged,
                conflicts=merged.conflicts,
            )
    client.close()
    return totals


def _odd_records(sim: Simulator) -> list[dict[str, Any]]:
    """Records with every kind of field value the fast path must get exactly right."""
    base = sim.records("buyer1")[0]
    at = base["setup_time"]
    return [
        {**base, "i_cdr": "990000001", "billed_duration": None, "connection_name": None},
        {**base, "i_cdr": "990000002", "customer_ip": "", "customer_amount": "12.345000"},
        {**base, "i_cdr": "990000003", "billing_price_1": 1e-05, "billing_price_n": 2.5e16},
        {**base, "i_cdr": "990000004", "duration": 7, "i_vendor": "0013", "vendor_name": "a\tb\\c"},
        {
            **base,
            "i_cdr": "990000005",
            "description": 'Fixe "ROC"',
            "country_name": "C\u00f4te d\u2019Ivoire",
        },
        {**base, "i_cdr": "990000006", "new_field": {"nested": [1, 2.5, None, "x"]}, "zz": True},
        {**base, "i_cdr": "990000007", "connect_time": "0000-00-00 00:00:00", "setup_time": at},
        {**base, "i_cdr": "990000008", "disconnect_time": at[:10] + "T" + at[11:] + ".5"},
        {**base, "i_cdr": "990000009", "customer_amount": "1E+2", "billing_price_1": 0.1},
    ]


def _publish(sim: Simulator, records: list[dict[str, Any]]) -> None:
    for record in records:
        sim.publish("buyer1", record)


def test_resync_through_the_page_path_writes_nothing(sim: Simulator, engine: Engine) -> None:
    """A second sync of unchanged data: no row version, counters unmoved, all unchanged."""
    _publish(sim, _odd_records(sim))
    settings = replace(make_settings(sim), api_timezone=ZONE)
    first = _sync(engine, settings, widen=timedelta(days=1))
    assert first["inserted"] == len(_ids(sim)) and first["rejected"] == 0
    before = table_rows(engine, "SELECT xmin::text, ctid::text, * FROM cdr ORDER BY i_cdr")
    engine.dispose()  # closing the sessions flushes their statistics
    counters = write_counters(engine)
    engine.dispose()
    second = _sync(engine, settings, widen=timedelta(days=1))
    engine.dispose()
    assert second["inserted"] == second["updated"] == 0
    assert second["unchanged"] >= len(_ids(sim))
    assert table_rows(engine, "SELECT xmin::text, ctid::text, * FROM cdr ORDER BY i_cdr") == before
    assert table_rows(engine, "SELECT count(*) FROM cdr WHERE xmax <> '0'") == [(0,)], "no lock"
    engine.dispose()
    assert write_counters(engine) == counters


def test_rerated_rows_are_the_only_writes(sim: Simulator, engine: Engine) -> None:
    """After re-rating two CDRs, a re-sync updates exactly those two rows."""
    _publish(sim, _odd_records(sim))
    settings = make_settings(sim)
    _sync(engine, settings)
    engine.dispose()
    inserts, updates, deletes = write_counters(engine)
    sim.rerate("buyer1", sim.records("buyer1")[5]["i_cdr"], "9.876543")
    sim.rerate("buyer1", "990000002", "")  # an amount becoming NULL is a change too
    again = _sync(engine, settings)
    engine.dispose()
    assert (again["inserted"], again["updated"]) == (0, 2)
    assert write_counters(engine) == (inserts, updates + 2, deletes)
    amounts = table_rows(
        engine, "SELECT customer_amount::text FROM cdr WHERE i_cdr IN (990000002) ORDER BY i_cdr"
    )
    assert amounts == [(None,)]


def test_repeats_load_once_and_conflicts_are_kept_aside(
    sim_config: SimulatorConfig, engine: Engine
) -> None:
    """Repeats in and across pages load once; another call_id is a conflict, not applied."""
    with Simulator(replace(sim_config, duplicate_every=5)) as sim:
        settings = make_settings(sim, page_size=50)
        counts = _sync(engine, settings)
        assert counts["inserted"] == len(_ids(sim)) and counts["conflicts"] == 0
        assert [
            row[0] for row in table_rows(engine, "SELECT i_cdr FROM cdr ORDER BY i_cdr")
        ] == _ids(sim)
        original = sim.records("buyer1")[3]
        _publish(sim, [{**original, "call_id": "f" * 32, "customer_amount": "99.000000"}])
        counts = _sync(engine, settings)
        assert counts["conflicts"] == 1 and counts["updated"] == counts["inserted"] == 0
        kept = table_rows(
            engine,
            f"SELECT call_id, customer_amount::text FROM cdr WHERE i_cdr = {original['i_cdr']}",
        )
        assert kept == [(original["call_id"], original["customer_amount"])]
        conflicts = table_rows(
            engine, "SELECT i_cdr, kept_call_id, incoming_call_id FROM cdr_conflict"
        )
        assert conflicts == [(int(original["i_cdr"]), original["call_id"], "f" * 32)]
        _sync(engine, settings)
        assert table_rows(engine, "SELECT count(*) FROM cdr_conflict") == [(1,)], "stored once"


def test_a_malformed_record_is_rejected_and_its_page_loads(sim: Simulator, engine: Engine) -> None:
    """A bad record goes to cdr_reject with its reason; every good row of its page loads."""
    bad = {**sim.records("buyer1")[0], "i_cdr": "990000100", "duration": "twelve"}
    _publish(sim, [bad])
    counts = _sync(engine, make_settings(sim))
    assert counts["rejected"] == 1
    assert table_rows(engine, "SELECT i_cdr, reason FROM cdr_reject") == [
        ("990000100", "duration is not an integer: 'twelve'")
    ]
    stored = [row[0] for row in table_rows(engine, "SELECT i_cdr FROM cdr ORDER BY i_cdr")]
    assert stored == [i_cdr for i_cdr in _ids(sim) if i_cdr != 990000100]


def _ids(sim: Simulator) -> list[int]:
    return sorted({int(record["i_cdr"]) for record in sim.records("buyer1")})


@pytest.mark.parametrize("raw_payload", ["full", "extra"])
def test_staged_and_merged_values_are_the_reference_values(
    sim: Simulator, database_url: str, raw_payload: str
) -> None:
    """COPY text staged by the page path holds exactly the reference normaliser's values."""
    records: list[Any] = [*sim.records("buyer1")[:300], *_odd_records(sim)]
    normalizer = Normalizer("buyer1", ZONE, raw_payload)
    reference = [normalizer.normalize(record) for record in records]
    columns = ", ".join(ROW_COLUMNS)
    with psycopg.connect(database_url) as conn:
        load.open_stage(conn)
        load.stage_text(conn, normalizer.normalize_page(records).copy_text)
        load.stage_rows(conn, reference, 10**6)  # the reference, typed by psycopg
        pairs = conn.execute(_PAIRS, {"offset": 10**6}).fetchone()
        assert pairs == (len(records), len(records), 0, 0)
        conn.execute(f"DELETE FROM {load.STAGE} WHERE seq >= %s", (10**6,))
        merged = load.merge(conn, None)  # type: ignore[arg-type]
        assert merged.inserted == len(records)
        stored = conn.execute(f"SELECT {columns} FROM cdr ORDER BY i_cdr").fetchall()
    expected = sorted(reference, key=lambda row: row[0])
    for row, want in zip(stored, expected, strict=True):
        for name, got, value in zip(ROW_COLUMNS, row, want, strict=True):
            if name == "raw":
                assert got == json.loads(value), name  # (exactly equal as jsonb: _PAIRS)
            elif isinstance(value, Decimal):  # the same number, with the same scale
                assert (got, _scale(got)) == (value, _scale(value)), name
            elif isinstance(value, datetime):
                assert got.astimezone(UTC) == value.astimezone(UTC), name
            else:
                assert got == value, name
    assert len(stored) == len(records) and FIELDS[0] == "i_cdr"


def _scale(number: Decimal) -> int:
    return max(0, -int(number.as_tuple().exponent))


# Staged rows of the page path (seq < offset) against the reference's (seq >= offset), joined
# by i_cdr: both counts, then rows whose values, numeric scales or payloads differ, then
# payloads not already in jsonb's own output form (the text the re-sync compares).
_PAIRS = f"""
WITH fast AS (SELECT * FROM {load.STAGE} WHERE seq < %(offset)s),
     ref AS (SELECT * FROM {load.STAGE} WHERE seq >= %(offset)s)
SELECT (SELECT count(*) FROM fast), (SELECT count(*) FROM ref),
       (SELECT count(*) FROM fast f JOIN ref r USING (i_cdr)
        WHERE ({", ".join(f"f.{c}" for c in ROW_COLUMNS[:-1])}, f.raw_text::jsonb,
               scale(f.billing_price_1), scale(f.billing_price_n), scale(f.customer_amount))
              IS DISTINCT FROM
              ({", ".join(f"r.{c}" for c in ROW_COLUMNS[:-1])}, r.raw,
               scale(r.billing_price_1), scale(r.billing_price_n), scale(r.customer_amount))),
       (SELECT count(*) FROM fast WHERE raw_text::jsonb::text <> raw_text)
"""
