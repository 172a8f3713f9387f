"""Normalisation of raw API records into typed rows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.errors import InvalidRecordError
from etl.normalize import FIELDS, ROW_COLUMNS, Normalizer

SAMPLE: dict[str, Any] = {
    "i_cdr": "77",
    "CLD": "12014705652",
    "CLI": "18552334464",
    "call_id": "31491e97655c19c10c70981c33635a19",
    "duration": "0",
    "billed_duration": None,
    "connect_time": "2019-08-27 17:45:11",
    "disconnect_time": "2019-08-27 17:45:11",
    "setup_time": "2019-08-27 17:45:11",
    "billing_prefix": "1201470565",
    "billing_price_1": 0.004987,
    "billing_price_n": 0.004987,
    "billing_interval_1": "6",
    "billing_interval_n": "6",
    "customer_amount": "0.000000",
    "i_customer": "1",
    "i_account": "10",
    "i_vendor": "13",
    "i_connection": "0",
    "i_purchased_route": "0",
    "disconnect_code": "16",
    "customer_ip": "",
    "i_rate": "0",
    "vendor_name": "IDT",
    "account_name": "SBC-3001",
    "connection_name": None,
    "disconnect_reason": "Normal Call Clearing",
    "country_name": "United States of America",
    "description": "Fixed - ROC",
}


def _row(record: Any, tz: str = "UTC") -> dict[str, Any]:
    return dict(zip(ROW_COLUMNS, Normalizer("buyer1", ZoneInfo(tz)).normalize(record), strict=True))


def test_vendor_sample_becomes_typed_columns() -> None:
    """The vendor's documented sample maps to ints, exact decimals, aware times and NULLs."""
    row = _row(SAMPLE)
    assert row["i_cdr"] == 77 and row["duration"] == 0 and row["disconnect_code"] == 16
    assert row["cld"] == "12014705652" and row["cli"] == "18552334464"
    assert row["billing_price_1"] == Decimal("0.004987")
    assert row["customer_amount"] == Decimal("0.000000")
    assert row["connect_time"] == datetime(2019, 8, 27, 17, 45, 11, tzinfo=UTC)
    assert row["billed_duration"] is None and row["customer_ip"] is None
    assert row["connection_name"] is None and row["api_login"] == "buyer1"
    assert orjson.loads(row["raw"]) == SAMPLE


def test_times_are_read_in_the_api_zone() -> None:
    """A naive API time is interpreted in the configured zone."""
    row = _row(SAMPLE, "Europe/London")
    assert row["connect_time"] == datetime(2019, 8, 27, 16, 45, 11, tzinfo=UTC)


def test_unknown_fields_are_kept_not_rejected() -> None:
    """An extra field the docs do not list stays in the raw payload."""
    row = _row({**SAMPLE, "new_field": {"x": 1}})
    assert orjson.loads(row["raw"])["new_field"] == {"x": 1}


def test_extra_mode_keeps_only_unknown_fields() -> None:
    """With TCXC_RAW_PAYLOAD=extra only the fields without a column are kept raw."""
    values = Normalizer("b", ZoneInfo("UTC"), "extra").normalize({**SAMPLE, "zz": "1"})
    assert orjson.loads(values[-1]) == {"zz": "1"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"i_cdr": None}, "i_cdr is missing"),
        ({"i_cdr": ""}, "i_cdr is missing"),
        ({"duration": "seven"}, "duration is not an integer"),
        ({"duration": "-3"}, "duration is out of range"),
        ({"customer_amount": "1.2.3"}, "customer_amount is not a number"),
        ({"customer_amount": "NaN"}, "customer_amount is not a finite number"),
        ({"connect_time": "2019-02-30 10:00:00"}, "connect_time is an impossible date"),
        ({"setup_time": "yesterday"}, "setup_time is not a 'YYYY-MM-DD HH:MM:SS' time"),
        ({"CLD": "1\x002"}, "cld contains a NUL byte"),
        ({"CLD": ["1"]}, "cld is not text"),
        ({"i_vendor": 2**70}, "i_vendor is out of range"),
    ],
)
def test_malformed_records_raise_with_a_reason(change: dict[str, Any], reason: str) -> None:
    """Each kind of bad value is refused with a reason naming the field."""
    with pytest.raises(InvalidRecordError) as info:
        _row({**SAMPLE, **change})
    assert info.value.reason.startswith(reason)


def test_a_non_object_record_is_refused() -> None:
    """A record that is not a JSON object cannot be a CDR."""
    with pytest.raises(InvalidRecordError, match="not an object"):
        _row(["i_cdr", "1"])


def test_nonexistent_local_time_is_refused() -> None:
    """A local time inside a DST gap does not exist; loading it would shift it silently."""
    with pytest.raises(InvalidRecordError, match="does not exist"):
        _row({**SAMPLE, "connect_time": "2026-03-29 01:30:00"}, "Europe/London")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    record=st.fixed_dictionaries(
        {}, optional={name: json_values for name in FIELDS} | {"CLD": json_values}
    ),
    extra=st.dictionaries(st.text(), json_values, max_size=3),
)
def test_normalisation_is_total(record: dict[str, Any], extra: dict[str, Any]) -> None:
    """Any record either normalises to a full row or raises InvalidRecordError, nothing else."""
    try:
        values = Normalizer("b", ZoneInfo("UTC")).normalize({**extra, **record})
    except InvalidRecordError as exc:
        assert exc.reason
    else:
        assert len(values) == len(ROW_COLUMNS)
        assert isinstance(values[0], int) and values[0] > 0
