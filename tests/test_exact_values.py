"""Values reach the warehouse as the API wrote them: JSON numbers never pass through a binary
float, and a string that is not valid Unicode rejects its record only, not its window."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy import Engine

from etl import pipeline
from etl.client import classify
from etl.columns import _decimal_column
from etl.errors import FatalApiError, RetriableApiError
from etl.fields import FIELDS
from etl.normalize import InvalidRecordError, Normalizer
from etl.simulator import Simulator
from tests.conftest import make_job, make_settings, sim_range, table_rows

UTC_ZONE = Normalizer("buyer1", ZoneInfo("UTC"))


def _records(body: bytes) -> list[Any]:
    return list(classify(200, {}, body).records)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (b"0.004980", "0.004980"),  # the scale as sent
        (b"0.1000000000000000001", "0.1000000000000000001"),  # beyond a double's 17 digits
        (b"12345678.123456789", "12345678.123456789"),
        (b"9007199254740993.0", "9007199254740993.0"),
        (b"1E2", "1E+2"),
        (b"0.00816", "0.00816"),  # the usual price: a float whose repr is the text sent
    ],
)
def test_json_numbers_keep_the_digits_sent(literal: bytes, expected: str) -> None:
    (record,) = _records(b'{"status":"success","cdrs":[{"billing_price_1":' + literal + b"}]}")
    value = record["billing_price_1"]
    assert (repr(value) if isinstance(value, float) else str(value)) == expected


def test_integers_beyond_a_double_stay_exact() -> None:
    body = (
        b'{"status":"success","cdrs":'
        b'[{"i_cdr":9007199254740997,"big":123456789012345678901234567890}]}'
    )
    (record,) = _records(body)
    assert record["i_cdr"] == 9007199254740997
    assert record["big"] == 123456789012345678901234567890


@pytest.mark.parametrize("bad", [b'"\\ud800"', b'"caf\xe9"'])
def test_a_string_that_is_not_unicode_keeps_the_page_readable(bad: bytes) -> None:
    body = b'{"status":"success","cdrs":[{"i_cdr":"1","CLI":' + bad + b'},{"i_cdr":"2"}]}'
    first, second = _records(body)
    assert second == {"i_cdr": "2"}
    with pytest.raises(InvalidRecordError, match="cli is not valid Unicode"):
        UTC_ZONE.normalize({**first, "CLD": "44", "setup_time": "2026-09-28 00:00:00"})


@pytest.mark.parametrize("body", [b'{"status":"success","cdrs":[{"i_cdr":"1"}', b"[NaN]"])
def test_a_truncated_or_non_json_body_is_still_refused(body: bytes) -> None:
    with pytest.raises((RetriableApiError, FatalApiError)):
        classify(200, {}, body)


def test_decimal_values_normalise_exactly() -> None:
    """A Decimal from the parser keeps its digits and scale; an integral one is an id; an
    amount with 14 decimals is a valid amount."""
    row = UTC_ZONE.normalize(
        {
            "i_cdr": Decimal("9007199254740997.0"),
            "duration": Decimal("7"),
            "customer_amount": "0.00012345678901",
            "billing_price_1": Decimal("0.004980"),
            "setup_time": "2026-09-28 00:00:00",
        }
    )
    values = dict(zip(FIELDS, row, strict=False))
    assert values["i_cdr"] == 9007199254740997 and values["duration"] == 7
    assert str(values["billing_price_1"]) == "0.004980"
    assert str(values["customer_amount"]) == "0.00012345678901"
    with pytest.raises(InvalidRecordError, match="more than 20 decimal places"):
        UTC_ZONE.normalize({"i_cdr": "1", "customer_amount": "0." + "1" * 21})


def test_exact_numbers_and_a_bad_string_over_http(sim: Simulator, engine: Engine) -> None:
    """Prices sent as JSON numbers keep every digit and their scale in cdr and in
    api_record(cdr); a record with an unpaired surrogate is rejected and its page loads."""
    good = dict(sim.records("buyer1")[0])
    exact = {
        **good,
        "i_cdr": "999100001",
        "billing_price_1": orjson.Fragment(b"0.004980"),
        "billing_price_n": orjson.Fragment(b"0.1000000000000000001"),
        "customer_amount": orjson.Fragment(b"12345678.123456789"),
    }
    broken = {**good, "i_cdr": "999100002", "CLI": orjson.Fragment(b'"\\ud800"')}
    sim.publish("buyer1", exact)
    sim.publish("buyer1", broken)
    summary = pipeline.backfill(engine, make_job(make_settings(sim)), *sim_range())
    assert summary.ok and summary.counts.rejected == 1
    [(price_1, price_n, amount, rebuilt)] = table_rows(
        engine,
        "SELECT billing_price_1::text, billing_price_n::text, customer_amount::text,"
        " (api_record(cdr) -> 'billing_price_1')::text FROM cdr WHERE i_cdr = 999100001",
    )
    assert (price_1, price_n, amount) == ("0.004980", "0.1000000000000000001", "12345678.123456789")
    assert rebuilt == "0.004980"
    [(i_cdr, reason, raw)] = table_rows(engine, "SELECT i_cdr, reason, raw FROM cdr_reject")
    assert i_cdr == "999100002" and "cli is not valid Unicode" in reason
    assert "\\ud800" in raw


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration", "\u0661\u0662"),  # Arabic-Indic digits
        ("customer_amount", "1_000"),  # Python's digit grouping
        ("customer_amount", "\u0967.\u0665"),  # Devanagari and Arabic-Indic
        ("i_cdr", "\uff15\uff10\uff10\uff14"),  # fullwidth
        ("setup_time", "\uff12\uff10\uff12\uff16-09-28 00:00:00"),
        ("duration", "\u00a07\u2003"),  # wrapped in Unicode spaces
    ],
)
def test_only_ascii_digits_are_numbers(field: str, value: str) -> None:
    """Python's int() and Decimal() read any script's digits, '_' and Unicode spaces; the API
    writes ASCII digits, so anything else is not a number it sent: rejected, not guessed."""
    record = {"i_cdr": "1", "setup_time": "2026-09-28 00:00:00", field: value}
    with pytest.raises(InvalidRecordError, match=field.lower()):
        UTC_ZONE.normalize(record)


def test_a_page_of_exact_prices_matches_the_reference() -> None:
    """Prices the parser kept exact (Decimals, e.g. 0.004980) among floats take the page
    path's number check and give the reference's rows and payloads; a negative zero (which
    numeric cannot hold, so the reference keeps it in the payload) is left to the reference."""
    from tests.test_normalize import SAMPLE, _assert_page_matches_reference

    prices = [Decimal("0.004980"), 0.00816, Decimal("12.500000"), Decimal("-0.000")]
    for kept in (prices[:3], prices):
        records = [
            {**SAMPLE, "i_cdr": str(n), "billing_price_1": price, "billing_price_n": price}
            for n, price in enumerate(kept, 1)
        ]
        _assert_page_matches_reference(UTC_ZONE, records)
    assert UTC_ZONE.normalize_page(records[:3]).copy_text.count("0.004980") == 2
    assert _decimal_column(prices[:3]) is not None  # the page path vouches for these
    assert _decimal_column(prices) is None
