"""The compact raw payload loses nothing: ``api_record(cdr)`` (migration 0003) rebuilds, in
PostgreSQL, exactly the record the ``full`` mode stores."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from etl import payload, pipeline
from etl.errors import InvalidRecordError
from etl.fields import API_KEYS, BIGINT, COUNT, DECIMAL, FIELD_KINDS, FIELDS, TEXT, TIME
from etl.normalize import ROW_COLUMNS, Normalizer
from etl.simulator import Simulator
from tests.conftest import make_job, make_settings, sim_range, table_rows
from tests.test_normalize import (
    SAMPLE,
    _assert_page_matches_reference,
    json_values,
    records_of_every_kind,
)

_COLUMNS = ", ".join(ROW_COLUMNS)


def _compact(record: dict[str, Any], zone: str = "UTC") -> Any:
    row = Normalizer("b", ZoneInfo(zone), payload.COMPACT).normalize(record)
    return orjson.loads(row[-1])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("i_cdr", "077"),  # leading zero: the bigint prints 77
        ("duration", "+7"),
        ("duration", 7),  # a number where the API sends a string
        ("customer_amount", "-0.000"),  # numeric prints 0.000
        ("customer_amount", "1e-3"),
        ("customer_amount", "0.50 "),
        ("billing_price_1", "0.004987"),  # a string where the API sends a number
        ("billing_price_1", 1e-05),  # repr is 1e-05, numeric prints 0.00001
        ("billing_price_1", -0.0),
        ("connect_time", "2019-08-27T17:45:11"),
        ("connect_time", "2019-08-27 17:45:11.5"),
        ("connect_time", "0000-00-00 00:00:00"),
        ("cld", None),
        ("customer_ip", ""),
    ],
)
def test_values_the_columns_cannot_give_back_stay_in_the_payload(field: str, value: Any) -> None:
    key = {"cld": "CLD"}.get(field, field)
    assert _compact({**SAMPLE, key: value})[key] == value


def test_usual_values_leave_the_payload() -> None:
    """Canonical strings, the prices as numbers and UTC times are dropped; extras stay."""
    record = {**SAMPLE, "billed_duration": "6", "customer_ip": "10.0.0.1", "connection_name": "x"}
    assert _compact({**record, "new": [1]}) == {"new": [1]}
    assert _compact(record) == {}


def test_times_stay_when_the_api_zone_is_not_utc() -> None:
    kept = _compact(SAMPLE, "Europe/London")
    assert {key: kept[key] for key in ("connect_time", "setup_time")} == {
        "connect_time": SAMPLE["connect_time"],
        "setup_time": SAMPLE["setup_time"],
    }


def test_a_documented_field_spelt_otherwise_keeps_the_whole_record() -> None:
    record = {**{k: v for k, v in SAMPLE.items() if k != "CLD"}, "cld": SAMPLE["CLD"]}
    assert _compact(record) == [record]


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="raw payload mode"):
        Normalizer("b", ZoneInfo("UTC"), "some")


def _load(conn: psycopg.Connection[Any], copy_text: str, value: str) -> list[str]:
    """COPY a page's lines into a table shaped like cdr; ``value`` of each row, in order."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS page (LIKE cdr INCLUDING DEFAULTS)")
    conn.execute("TRUNCATE page")
    with conn.cursor().copy(f"COPY page ({_COLUMNS}) FROM STDIN") as copy:
        copy.write(copy_text)
    return [text for (text,) in conn.execute(f"SELECT {value} FROM page t ORDER BY ctid")]


def _accepted(records: list[Any], rejects: list[tuple[Any, str]]) -> list[int]:
    rejected = {id(record) for record, _why in rejects}
    return [n for n, record in enumerate(records) if id(record) not in rejected]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pages=st.lists(
        records_of_every_kind
        | st.fixed_dictionaries(
            {}, optional={name: json_values for name in FIELDS} | {"CLD": json_values}
        ),
        min_size=1,
        max_size=6,
    ),
    extra=st.dictionaries(st.text(), json_values, max_size=2),
    zone=st.sampled_from(["UTC", "Europe/London", "Asia/Kathmandu"]),
)
def test_api_record_rebuilds_what_full_stores(
    database_url: str, pages: list[dict[str, Any]], extra: dict[str, Any], zone: str
) -> None:
    """For any record both modes accept, api_record of the compact row is, as jsonb text
    (numbers with their scale), the payload ``full`` stores."""
    records = [{**extra, **record} if n % 2 else record for n, record in enumerate(pages)]
    compact = Normalizer("b", ZoneInfo(zone), payload.COMPACT).normalize_page(records)
    full = Normalizer("b", ZoneInfo(zone), payload.FULL).normalize_page(records)
    with psycopg.connect(database_url, autocommit=True) as conn:
        rebuilt = _load(conn, compact.copy_text, "api_record(ROW(t.*)::cdr)::text")
        stored = _load(conn, full.copy_text, "raw::text")
    by_record = dict(zip(_accepted(records, compact.rejects), rebuilt, strict=True))
    for index, text in zip(_accepted(records, full.rejects), stored, strict=True):
        if index in by_record:  # (compact may also accept a price too long for orjson)
            assert by_record[index] == text


# Valid values in the API's usual form and in every other form normalisation accepts, so that
# whole columns pass the page path's fast checks with a few unusual values among them.
_ids = st.integers(1, 10**15)
_counts = st.integers(0, 10**6)
_amounts = st.decimals(-1000, 1000, places=4) | st.decimals(0, 10, places=0)
_moments = st.datetimes(datetime(2000, 1, 1), datetime(2030, 12, 31)).map(
    lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")
)
_VALID = {
    BIGINT: _ids.map(str) | _ids.map(lambda n: f"0{n}") | _ids,
    COUNT: _counts.map(str) | _counts.map(lambda n: f"00{n}") | st.sampled_from(["", None]),
    DECIMAL: _amounts.map(str)
    | _amounts.map(lambda d: f"0{d}".replace("0-", "-0"))
    | st.floats(-1000, 1000).map(lambda f: round(f, 4))
    | _amounts.map(lambda d: d.quantize(Decimal("0.000001")))  # parsed exact: 0.004980
    | st.sampled_from(["-0.00", "-0", "", None, Decimal("-0.000"), Decimal("1E+2")]),
    TIME: _moments | _moments.map(lambda text: text.replace(" ", "T")) | st.sampled_from([""]),
    TEXT: st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1)
    | st.sampled_from(["", None]),
}
_usual_fields = st.fixed_dictionaries(
    {key: _VALID[FIELD_KINDS[name]] for key, name in zip(API_KEYS, FIELDS, strict=True)}
)


@st.composite
def _one_call(draw: st.DrawFn) -> dict[str, Any]:
    """A usual record whose three times are one call's (within a day of each other), each in
    one of the forms the API may send, with a setup or a connect time at least."""
    record = draw(_usual_fields)
    base = draw(st.datetimes(datetime(2000, 1, 1), datetime(2030, 12, 30)))
    for key in ("setup_time", "connect_time", "disconnect_time"):
        moment = base + timedelta(seconds=draw(st.integers(0, 86400)))
        text = moment.strftime("%Y-%m-%d %H:%M:%S")
        record[key] = draw(st.sampled_from([text, text.replace(" ", "T"), ""]))
    if record["setup_time"] == record["connect_time"] == "":  # (rejected: no reporting period)
        record["setup_time"] = text
    return record


_usual_records = _one_call()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(
        _usual_records | st.sampled_from([dict(SAMPLE)]),
        min_size=1,
        max_size=8,
    ),
    zone=st.sampled_from(["UTC", "Europe/London"]),
)
def test_usual_pages_keep_exactly_what_is_not_rebuilt(
    database_url: str, records: list[dict[str, Any]], zone: str
) -> None:
    """Pages in the API's shape whose columns mix usual and unusual valid values: the page
    path keeps the reference's payloads, and api_record gives back each record."""
    normalizer = Normalizer("b", ZoneInfo(zone), payload.COMPACT)
    _assert_page_matches_reference(normalizer, records)
    page = normalizer.normalize_page(records)
    full = Normalizer("b", ZoneInfo(zone), payload.FULL).normalize_page(records)
    with psycopg.connect(database_url, autocommit=True) as conn:
        rebuilt = _load(conn, page.copy_text, "api_record(ROW(t.*)::cdr)::text")
        stored = _load(conn, full.copy_text, "raw::text")
    assert page.rejects == full.rejects == []
    assert rebuilt == stored


def test_every_synced_cdr_rebuilds_to_the_api_record(sim: Simulator, engine: Engine) -> None:
    """End to end over HTTP with the default payload: api_record of every stored row equals
    the simulator's record, and the payloads are mostly empty."""
    settings_ = make_settings(sim)
    assert settings_.raw_payload == payload.COMPACT
    start, end = sim_range()
    assert pipeline.backfill(engine, make_job(settings_), start, end).ok
    stored = {
        i_cdr: (record, raw)
        for i_cdr, record, raw in table_rows(
            engine, "SELECT i_cdr, api_record(c)::text, raw::text FROM cdr c"
        )
    }
    expected = sim.records("buyer1")
    assert len(stored) == len(expected)
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        for record in expected:
            text = driver.execute("SELECT %s::jsonb::text", (orjson.dumps(record).decode(),))
            assert stored[int(record["i_cdr"])][0] == text.fetchone()[0]  # type: ignore[index]
    empty = sum(raw == "{}" for _record, raw in stored.values())
    assert empty > 0 and all(len(raw) < 100 for _record, raw in stored.values())


def test_a_record_the_reference_rejects_is_rejected_in_every_mode() -> None:
    bad = {**SAMPLE, "duration": "seven"}
    for mode in payload.MODES:
        with pytest.raises(InvalidRecordError, match="duration"):
            Normalizer("b", ZoneInfo("UTC"), mode).normalize(bad)


@pytest.mark.parametrize("negative_at", [0, 1])
def test_a_negative_zero_price_is_kept_beside_a_zero_one(negative_at: int) -> None:
    """-0.0 equals 0.0 (and hashes alike): a page holding both keeps the negative zero in its
    record's payload, as the reference does (the page path once took it for the 0.0 it had
    cached, and dropped it; jsonb prints both as 0.0)."""
    records = [{**SAMPLE, "billing_price_n": 0.0}, {**SAMPLE, "billing_price_n": 0.0}]
    records[negative_at]["billing_price_n"] = -0.0
    normalizer = Normalizer("b", ZoneInfo("UTC"), payload.COMPACT)
    _assert_page_matches_reference(normalizer, records)
    lines = normalizer.normalize_page(records).copy_text.split("\n")[:2]
    kept = [orjson.loads(line.split("\t")[-1].replace("\\\\", "\\")) for line in lines]
    assert "billing_price_n" in kept[negative_at]
    assert "billing_price_n" not in kept[1 - negative_at]


@pytest.mark.parametrize("mode", payload.MODES)
@pytest.mark.parametrize(
    ("text", "rejected"),
    [("\\u0000", False), ("a\\\\u0000", False), ("\x00", True), ("\\\x00", True)],
)
def test_only_a_real_nul_character_rejects_a_record(
    database_url: str, mode: str, text: str, rejected: bool
) -> None:
    """The text `\\u0000` (a backslash, then u0000) is ordinary text jsonb stores; only a NUL
    character (which jsonb cannot hold) rejects the record, on the page path as in the
    reference (the check once matched the escaped backslash's text too)."""
    records = [{**SAMPLE, "description": text}, {**SAMPLE, "i_cdr": "7", "unknown": text}]
    normalizer = Normalizer("b", ZoneInfo("UTC"), mode)
    _assert_page_matches_reference(normalizer, records)
    page = normalizer.normalize_page(records)
    assert (len(page.rejects) == 2) is rejected and (not page.rejects) is not rejected
    if not rejected:
        record = "api_record(ROW(t.*)::cdr)"
        with psycopg.connect(database_url, autocommit=True) as conn:
            rebuilt = _load(conn, page.copy_text, f"{record} ->> 'description'")
            unknown = _load(conn, page.copy_text, f"{record} ->> 'unknown'")
        assert rebuilt[0] == text and unknown == [None, text]
