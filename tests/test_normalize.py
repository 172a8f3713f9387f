"""Normalisation of raw API records into typed rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.errors import InvalidRecordError
from etl.fields import BIGINT, COUNT, DECIMAL, FIELD_KINDS, FIELDS, TEXT, TIME
from etl.normalize import ROW_COLUMNS, Normalizer

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
    # The default payload keeps what the columns cannot give back: here '' and the nulls.
    assert orjson.loads(row["raw"]) == {
        "billed_duration": None,
        "customer_ip": "",
        "connection_name": None,
    }
    full = Normalizer("buyer1", ZoneInfo("UTC"), "full").normalize(SAMPLE)
    assert orjson.loads(full[-1]) == SAMPLE


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


def _times(moment: str, disconnect: str | None = None) -> dict[str, str]:
    """One call's three times (setup, connect, disconnect) at ``moment``."""
    return {"setup_time": moment, "connect_time": moment, "disconnect_time": disconnect or moment}


def test_times_days_apart_are_rejected_on_both_paths() -> None:
    """A record whose setup, connect and disconnect times lie more than two days apart (as
    instants: a DST change does not count) is rejected with the reason; times up to two days
    apart, or a zero date among them, load."""
    records = [
        {**SAMPLE, "i_cdr": "1", **_times("2026-09-21 10:00:00", "2026-09-23 10:00:00")},
        {**SAMPLE, "i_cdr": "2", **_times("2026-09-21 10:00:00", "2026-09-23 10:00:01")},
        {**SAMPLE, "i_cdr": "3", **_times("2026-03-27 23:30:00", "2026-03-30 00:10:00")},
        {
            **SAMPLE,
            "i_cdr": "4",
            **_times("2026-09-21 10:00:00"),
            "connect_time": "2026-09-16 10:00:00",
        },
        {
            **SAMPLE,
            "i_cdr": "5",
            **_times("2026-09-21 10:00:00"),
            "connect_time": "0000-00-00 00:00:00",
        },
    ]
    for zone, rejected in (("UTC", ["2", "3", "4"]), ("Europe/London", ["2", "4"])):
        normalizer = Normalizer("b", ZoneInfo(zone))
        _assert_page_matches_reference(normalizer, records)
        rejects = normalizer.normalize_page(records).rejects
        assert [r["i_cdr"] for r, _why in rejects] == rejected, (zone, rejects)
        assert "lie more than 2 days apart" in rejects[0][1]


def test_a_time_of_the_repeated_autumn_hour_is_read_as_its_first_occurrence() -> None:
    """01:30 happens twice in London on 2026-10-25 (BST, then GMT) and the API's text does not
    say which: both paths read it as the first (README, Schema), and the API's text stays in
    the raw payload."""
    record = {**SAMPLE, **_times("2026-10-25 01:30:00")}
    row = _row(record, "Europe/London")
    # (astimezone: an aware time in a repeated hour compares unequal to every other zone's)
    assert row["connect_time"].astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert orjson.loads(row["raw"])["connect_time"] == "2026-10-25 01:30:00"
    page = Normalizer("buyer1", ZoneInfo("Europe/London")).normalize_page([record])
    assert "2026-10-25 01:30:00+01:00" in page.copy_text


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


# --- The page path (COPY text) against the reference ---------------------------------------


def _unescape(field: str) -> str | None:
    """One COPY text-format field back to its text (None for NULL)."""
    if field == "\\N":
        return None
    escapes = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    out, chars = [], iter(field)
    for char in chars:
        out.append(escapes[next(chars)] if char == "\\" else char)
    return "".join(out)


def _read_back(kind: str, text: str | None) -> Any:
    """What PostgreSQL makes of a COPY field of a column of ``kind`` (value and scale)."""
    if text is None:
        return None
    if kind in (BIGINT, COUNT):
        return int(text)
    if kind == DECIMAL:
        number = Decimal(text)
        return number, max(0, -int(number.as_tuple().exponent))
    if kind == TIME:
        return datetime.fromisoformat(text).astimezone(UTC)
    return text


def _exact_json(text: str) -> Any:
    """JSON with its numbers as exact decimals (as jsonb keeps them)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _reference(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == DECIMAL:
        return value, max(0, -int(value.as_tuple().exponent))
    if kind == TIME:  # compared as instants (times in a DST fold never equal another zone's)
        return value.astimezone(UTC)
    return value


def _assert_page_matches_reference(normalizer: Normalizer, records: list[Any]) -> None:
    page = normalizer.normalize_page(records)
    rows, rejects = [], []
    for record in records:
        try:
            rows.append(normalizer.normalize(record))
        except InvalidRecordError as exc:
            rejects.append((record, exc.reason))
    assert [(id(r), why) for r, why in page.rejects] == [(id(r), why) for r, why in rejects]
    lines = page.copy_text.split("\n")
    assert lines.pop() == "" and len(lines) == len(rows) == page.rows
    for line, row in zip(lines, rows, strict=True):
        fields = [_unescape(field) for field in line.split("\t")]
        assert len(fields) == len(ROW_COLUMNS)
        for name, field, value in zip(FIELDS, fields, row, strict=False):
            kind = FIELD_KINDS[name]
            assert _read_back(kind, field) == _reference(kind, value), name
        assert fields[-3] == row[-3]  # api_login
        assert fields[-2] == "\\x" + row[-2].hex()  # payload_digest (bytea, hex)
        assert _exact_json(fields[-1] or "") == _exact_json(row[-1])  # the same payload


def test_page_of_the_vendor_sample_matches_the_reference() -> None:
    """A page of sample-like records gives, line for line, the reference's typed values."""
    records = [
        {**SAMPLE, "i_cdr": str(n), "billed_duration": str(n % 3 or "")} for n in range(1, 9)
    ]
    for zone in ("UTC", "Europe/London", "America/St_Johns", "Asia/Kathmandu"):
        _assert_page_matches_reference(Normalizer("buyer\t1", ZoneInfo(zone)), records)


def test_page_rejects_what_the_reference_rejects_and_keeps_the_rest() -> None:
    """Bad records of a page are rejected with the reference's reason; the others stay."""
    records: list[Any] = [
        dict(SAMPLE),
        {**SAMPLE, "i_cdr": "0"},
        {**SAMPLE, "i_cdr": "78", "duration": "seven"},
        ["not", "an", "object"],
        {**SAMPLE, "i_cdr": "79", "cld": "12014705652"},  # CLD and cld agree: accepted
        {**SAMPLE, "i_cdr": "80", "new": "\u0000"},
        {**SAMPLE, "i_cdr": "81", "customer_ip": "a\\b\tc", "description": 'say "hi"'},
    ]
    normalizer = Normalizer("buyer1", ZoneInfo("UTC"))
    _assert_page_matches_reference(normalizer, records)
    assert len(normalizer.normalize_page(records).rejects) == 4


def test_dst_hours_take_the_reference_path() -> None:
    """Times in a DST change hour, or inside a gap, come out as the reference has them."""
    records = [
        {**SAMPLE, "i_cdr": "1", **_times("2026-10-25 01:30:00")},  # ambiguous (fold 0)
        {**SAMPLE, "i_cdr": "2", **_times("2026-03-29 01:30:00")},  # does not exist
        {**SAMPLE, "i_cdr": "3", **_times("2026-03-29 02:00:00")},
        {**SAMPLE, "i_cdr": "4", **_times("1901-01-01 00:00:00.25")},
        {**SAMPLE, "i_cdr": "5", "connect_time": "0000-00-00 00:00:00"},
    ]
    _assert_page_matches_reference(Normalizer("b", ZoneInfo("Europe/London")), records)


def test_a_time_later_than_the_bound_is_rejected_on_both_paths() -> None:
    """With a ``latest`` bound (the sync's time plus a day), a record holding a later time is
    rejected naming the field, on the page path as in the reference; the others load. Times
    just before the bound, and a bound inside a DST change, are read to the second."""
    latest = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # London: 01:30 GMT, after the change
    records = [
        {**SAMPLE, "i_cdr": "1", **_times("2026-10-25 01:29:59")},  # London: 00:29:59Z
        {**SAMPLE, "i_cdr": "2", **_times("2026-10-25 00:00:00", disconnect="2099-01-01 00:00:00")},
        {**SAMPLE, "i_cdr": "3", **_times("2026-10-25 01:30:01")},  # London: 00:30:01Z
        {**SAMPLE, "i_cdr": "4", **_times("2026-10-25 02:30:01")},  # London: 02:30:01Z
    ]
    for zone, rejected in (("UTC", ["2", "3", "4"]), ("Europe/London", ["2", "4"])):
        normalizer = Normalizer("b", ZoneInfo(zone), latest=latest)
        _assert_page_matches_reference(normalizer, records)
        rejects = normalizer.normalize_page(records).rejects
        assert [r["i_cdr"] for r, _why in rejects] == rejected, (zone, rejects)
        assert "disconnect_time is in the future" in rejects[0][1]
    unbounded = Normalizer("b", ZoneInfo("UTC")).normalize_page(records).rejects
    assert [(r["i_cdr"], why) for r, why in unbounded] == [
        ("2", "setup_time, connect_time and disconnect_time lie more than 2 days apart")
    ]


texts = st.text() | st.sampled_from(["", "a\tb", "back\\slash", 'quo"te', "é", "\u2028", "\x01"])
digits = st.integers(0, 10**20).map(str) | st.integers(0, 10**6).map(lambda n: f"00{n}")
plausible = {
    TEXT: texts | st.none() | st.integers(),
    BIGINT: digits | st.sampled_from(["+5", " 7 ", "-1", "0", "", "1.0"]) | st.integers(-5, 2**64),
    COUNT: digits | st.sampled_from(["2147483647", "2147483648", ""]) | st.floats(0, 10),
    DECIMAL: st.decimals(allow_nan=False, allow_infinity=False).map(str)
    | st.decimals(allow_nan=False, allow_infinity=False)  # a number the parser kept exact
    | st.floats(allow_nan=False)
    | st.sampled_from(["1e-5", "-0.0", "0.002100", "", "1" * 31]),
    TIME: st.datetimes(datetime(1899, 12, 31), datetime(2201, 1, 2)).map(
        lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")
    )
    | st.sampled_from(["0000-00-00 00:00:00", "2019-02-30 10:00:00", "2019-01-01T10:00:00.5"]),
}
_independent_fields = st.fixed_dictionaries(
    {
        name.upper() if name in ("cld", "cli") else name: plausible[kind]
        for name, kind in FIELD_KINDS.items()
    }
)
TIME_NAMES = ("setup_time", "connect_time", "disconnect_time")


@st.composite
def _one_call(draw: st.DrawFn) -> dict[str, Any]:
    """Fields drawn independently; in about half of the records the times are one call's:
    around one moment, up to 3 days apart (so that both sides of MAX_SPREAD show), with now
    and then an odd value among them."""
    record = draw(_independent_fields)
    if draw(st.booleans()):
        base = draw(st.datetimes(datetime(1900, 1, 2), datetime(2200, 12, 29)))
        for name in TIME_NAMES:
            if draw(st.integers(0, 5)):
                moment = base + timedelta(seconds=draw(st.integers(-3600, 3 * 86400)))
                record[name] = moment.strftime("%Y-%m-%d %H:%M:%S")
    return record


records_of_every_kind = _one_call()


@given(
    pages=st.lists(
        records_of_every_kind
        | st.fixed_dictionaries({}, optional={name: json_values for name in FIELDS}),
        min_size=1,
        max_size=6,
    ),
    extra=st.dictionaries(st.text(), json_values, max_size=2),
    zone=st.sampled_from(["UTC", "Europe/London", "America/St_Johns", "Asia/Kathmandu"]),
    raw_payload=st.sampled_from(["compact", "full", "extra"]),
    latest=st.none()
    | st.datetimes(datetime(1990, 1, 1), datetime(2201, 1, 1), timezones=st.just(UTC)),
)
def test_page_path_agrees_with_the_reference(
    pages: list[dict[str, Any]],
    extra: dict[str, Any],
    zone: str,
    raw_payload: str,
    latest: datetime | None,
) -> None:
    """Any page gives the reference's rows (value and scale) and rejects (with reasons),
    with or without a bound on its times."""
    records = [{**extra, **record} if n % 2 else record for n, record in enumerate(pages)]
    normalizer = Normalizer("b", ZoneInfo(zone), raw_payload, latest)
    _assert_page_matches_reference(normalizer, records)


def test_a_record_with_no_setup_or_connect_time_is_rejected_on_both_paths() -> None:
    """Reporting places a CDR by its connect_time, else its setup_time: a record with neither
    (null, '' or the zero date) would be counted by `report` and by no rollup or view. It is
    rejected with the reason; one with only a setup time or only a connect time loads."""
    zero = "0000-00-00 00:00:00"
    records = [
        {**SAMPLE, "i_cdr": "1", "setup_time": zero, "connect_time": zero, "disconnect_time": zero},
        {**SAMPLE, "i_cdr": "2", "setup_time": "", "connect_time": None},
        {**SAMPLE, "i_cdr": "3", "setup_time": zero},
        {**SAMPLE, "i_cdr": "4", "connect_time": zero},
        {**SAMPLE, "i_cdr": "5", "setup_time": " 0000-00-00 ", "connect_time": "0000-00-00"},
    ]
    normalizer = Normalizer("b", ZoneInfo("UTC"))
    _assert_page_matches_reference(normalizer, records)
    rejects = normalizer.normalize_page(records).rejects
    assert [r["i_cdr"] for r, _why in rejects] == ["1", "2", "5"]
    _assert_page_matches_reference(normalizer, records[4:])  # alone: no plain '' beside it
    for record in records:  # each alone: a page of zero dates and no null nor '' among them
        assert len(normalizer.normalize_page([record]).rejects) == (record["i_cdr"] in "125")
    assert all("no setup_time and no connect_time" in why for _r, why in rejects)
