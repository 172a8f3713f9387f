"""The TCXC API simulator, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import pytest
import requests

from etl.signing import compute_signature
from etl.simulator import FAULT_KINDS, Fault, Simulator, SimulatorConfig
from tests.conftest import FakeClock

START = datetime(2024, 3, 1)
END = datetime(2024, 3, 8)
KEY = "demo-key"

SAMPLE_FIELDS = [
    "i_cdr",
    "CLD",
    "CLI",
    "call_id",
    "duration",
    "billed_duration",
    "connect_time",
    "disconnect_time",
    "setup_time",
    "billing_prefix",
    "billing_price_1",
    "billing_price_n",
    "billing_interval_1",
    "billing_interval_n",
    "customer_amount",
    "i_customer",
    "i_account",
    "i_vendor",
    "i_connection",
    "i_purchased_route",
    "disconnect_code",
    "customer_ip",
    "i_rate",
    "vendor_name",
    "account_name",
    "connection_name",
    "disconnect_reason",
    "country_name",
    "description",
]


def config(**overrides: Any) -> SimulatorConfig:
    """A small simulator configuration with a fixed window."""
    settings: dict[str, Any] = {"cdrs": 300, "start": START, "end": END, "seed": 7}
    settings.update(overrides)
    return SimulatorConfig(**settings)


def params(
    login: str = "demo", key: str = KEY, ts: int | None = None, **extra: Any
) -> dict[str, str]:
    """Signed form fields of a call-history request."""
    ts = int(time.time()) if ts is None else ts
    fields = {
        "ts": str(ts),
        "api_login": login,
        "signature": compute_signature(key, login, ts),
        "show": "all",
        "pager": "100",
    }
    fields.update(extra)
    return fields


def fetch_all(
    sim: Simulator, session: requests.Session, pager: int = 10, **extra: Any
) -> list[dict[str, Any]]:
    """Every row of a query, page by page, until an empty page."""
    rows: list[dict[str, Any]] = []
    off = 0
    while True:
        response = session.post(sim.url, data=params(pager=str(pager), off=str(off), **extra))
        page = response.json()["cdrs"]
        if not page:
            return rows
        rows.extend(page)
        off += len(page)


@pytest.fixture(scope="module")
def shared() -> Iterator[Simulator]:
    """A read-only simulator shared by the tests that do not change it."""
    with Simulator(config(cdrs=2000)) as sim:
        yield sim


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A requests session closed after the test."""
    with requests.Session() as s:
        yield s


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A fresh small simulator the test may change."""
    with Simulator(config()) as simulator:
        yield simulator


def test_signed_request_succeeds(shared: Simulator, session: requests.Session) -> None:
    """A correctly signed request gets a JSON success envelope with CDRs."""
    response = session.post(shared.url, data=params())
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "success"
    assert len(body["cdrs"]) == 100


BAD_AUTH = {
    "wrong key": lambda: params(key="wrong-key"),
    "unknown login": lambda: params(login="nobody"),
    "wrong signature": lambda: {**params(), "signature": "0" * 64},
    "no signature": lambda: {k: v for k, v in params().items() if k != "signature"},
    "no ts": lambda: {k: v for k, v in params().items() if k != "ts"},
    "ts not a number": lambda: {**params(), "ts": "soon"},
}


@pytest.mark.parametrize("case", list(BAD_AUTH))
def test_bad_signature_is_rejected(shared: Simulator, session: requests.Session, case: str) -> None:
    """A wrong key, unknown login or missing auth field gets the fail envelope with HTTP 200."""
    response = session.post(shared.url, data=BAD_AUTH[case]())
    assert response.status_code == 200
    assert response.json() == {"error": "Wrong signature", "status": "fail"}


def test_stale_timestamp_is_rejected(shared: Simulator, session: requests.Session) -> None:
    """A signature made more than skew_seconds ago is refused like a wrong one."""
    stale = session.post(shared.url, data=params(ts=int(time.time()) - 1000))
    fresh = session.post(shared.url, data=params(ts=int(time.time()) - 100))
    assert stale.json() == {"error": "Wrong signature", "status": "fail"}
    assert fresh.json()["status"] == "success"


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"date_from": "2024-03-01"}, "date_from"),
        ({"date_to": "01/03/2024 00:00:00"}, "date_to"),
        ({"pager": ""}, "pager"),
        ({"pager": "0"}, "pager"),
        ({"off": "-1"}, "off"),
        ({"show": "success"}, "show"),
    ],
)
def test_bad_parameters_get_error_envelope(
    shared: Simulator, session: requests.Session, fields: dict[str, Any], word: str
) -> None:
    """A bad date, pager, off or show gets status error with a message naming it."""
    body = session.post(shared.url, data=params(**fields)).json()
    assert body["status"] == "error"
    assert word in body["message"]


def test_get_with_query_and_trailing_slash(shared: Simulator, session: requests.Session) -> None:
    """GET with a query string and the trailing-slash path are both accepted."""
    query = urlencode(params(pager="3"))
    by_get = session.get(f"{shared.url}?{query}").json()
    by_slash = session.post(shared.url + "/", data=params(pager="3")).json()
    assert by_get == by_slash
    assert len(by_get["cdrs"]) == 3
    assert session.post(shared.url + "x", data=params()).status_code == 404


def test_records_have_the_vendor_field_set_and_types(shared: Simulator) -> None:
    """Every record has exactly the sample's keys, strings except prices, nulls where allowed."""
    records = shared.records("demo")
    assert len(records) == 2000
    for record in records:
        assert list(record) == SAMPLE_FIELDS
        assert isinstance(record["billing_price_1"], float)
        assert isinstance(record["billing_price_n"], float)
        for name in SAMPLE_FIELDS:
            if name in ("billing_price_1", "billing_price_n"):
                continue
            value = record[name]
            nullable = name in ("billed_duration", "connection_name")
            assert isinstance(value, str) or (nullable and value is None), name
        assert len(record["call_id"]) == 32
        int(record["call_id"], 16)
        assert record["CLD"].startswith(record["billing_prefix"])
    assert any(r["connection_name"] is None for r in records)
    assert any(r["customer_ip"] == "" for r in records)
    icdrs = [int(r["i_cdr"]) for r in records]
    assert icdrs == sorted(set(icdrs))


def test_about_forty_percent_fail_and_times_are_consistent(shared: Simulator) -> None:
    """About 40 % of calls fail; failed calls carry no billed time and equal connect/disconnect."""
    records = shared.records("demo")
    failed = [r for r in records if r["duration"] == "0"]
    assert 0.35 < len(failed) / len(records) < 0.45
    for r in records:
        setup, connect, disconnect = (
            datetime.strptime(r[name], "%Y-%m-%d %H:%M:%S")
            for name in ("setup_time", "connect_time", "disconnect_time")
        )
        assert START <= setup < END
        assert setup <= connect <= disconnect
        if r["duration"] == "0":
            assert r["billed_duration"] is None
            assert connect == disconnect
            assert r["customer_amount"] == "0.000000"
        else:
            assert 1 <= (connect - setup).total_seconds() <= 20
            assert (disconnect - connect).total_seconds() == int(r["duration"])
            assert r["disconnect_code"] == "16"
    codes = Counter(r["disconnect_code"] for r in failed)
    assert {"17", "18", "19"} <= set(codes)


def test_amounts_follow_the_billing_formula(shared: Simulator) -> None:
    """billed_duration and customer_amount of answered calls match X/Y billing, exactly."""
    answered = [r for r in shared.records("demo") if r["duration"] != "0"]
    assert answered
    for r in answered:
        d, x, y = (int(r[k]) for k in ("duration", "billing_interval_1", "billing_interval_n"))
        billed = x if d <= x else x + -(-(d - x) // y) * y
        assert int(r["billed_duration"]) == billed
        p1 = Decimal(str(r["billing_price_1"]))
        pn = Decimal(str(r["billing_price_n"]))
        expected = ((x * p1 + (billed - x) * pn) / 60).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_UP
        )
        assert Decimal(r["customer_amount"]) == expected
        assert len(r["customer_amount"].split(".")[1]) == 6


@pytest.mark.parametrize("order", ["asc", "desc", "shuffled"])
def test_pagination_covers_every_row_once(order: str, session: requests.Session) -> None:
    """Paging with a server cap below pager returns every row exactly once, in the order."""
    with Simulator(config(order=order, max_page_size=7)) as sim:
        first = session.post(sim.url, data=params(pager="10")).json()["cdrs"]
        assert len(first) == 7
        rows = fetch_all(sim, session, pager=10)
        again = fetch_all(sim, session, pager=50)
        truth = sim.records("demo")
    assert rows == again, "the order is stable between requests"
    assert sorted(int(r["i_cdr"]) for r in rows) == [int(r["i_cdr"]) for r in truth]
    keys = [(r["setup_time"], int(r["i_cdr"])) for r in rows]
    if order == "asc":
        assert keys == sorted(keys)
    elif order == "desc":
        assert keys == sorted(keys, reverse=True)
    else:
        assert keys not in (sorted(keys), sorted(keys, reverse=True))


def test_ties_order_cuts_shared_seconds_differently_per_request(
    session: requests.Session,
) -> None:
    """ "ties": ascending setup time, rows of one second in an order of each request's own: a
    plain offset walk then reads some rows twice and misses others (what the client guards
    against, etl.pagination), while every request still holds the rows of its positions."""
    start = END - timedelta(minutes=5)
    with Simulator(config(order="ties", cdrs=900, start=start)) as sim:
        whole = session.post(sim.url, data=params(pager="1000")).json()["cdrs"]
        walked = fetch_all(sim, session, pager=10)
        truth = sim.records("demo")
    times = [r["setup_time"] for r in whole]
    assert times == sorted(times) and len(set(times)) < len(times) / 2  # dense: many ties
    assert sorted(int(r["i_cdr"]) for r in whole) == [int(r["i_cdr"]) for r in truth]
    assert [r["setup_time"] for r in walked] == times  # positions hold the same seconds
    ids = [int(r["i_cdr"]) for r in walked]
    assert len(set(ids)) < len(ids) == len(truth), "ties cut differently: repeats and misses"


def test_withdrawals_while_paging_hit_only_requests_past_a_first_page(
    session: requests.Session,
) -> None:
    """withdraw_while_paging: the next request with off > 0 removes the first records of its
    result before answering; a first page (off = 0) is answered as it is."""
    with Simulator(config()) as sim:
        whole = [r["i_cdr"] for r in session.post(sim.url, data=params()).json()["cdrs"]]
        sim.withdraw_while_paging(requests=1, records=2)
        first = [r["i_cdr"] for r in session.post(sim.url, data=params(pager="5")).json()["cdrs"]]
        later = session.post(sim.url, data=params(pager="5", off="5")).json()["cdrs"]
        again = session.post(sim.url, data=params(pager="5", off="5")).json()["cdrs"]
        truth = [r["i_cdr"] for r in sim.records("demo")]
    assert first == whole[:5]
    assert [r["i_cdr"] for r in later] == whole[7:12] == [r["i_cdr"] for r in again]
    assert set(whole) - set(truth) == set(whole[:2])


def test_page_past_the_end_is_empty(shared: Simulator, session: requests.Session) -> None:
    """An offset past the last row returns an empty success page."""
    body = session.post(shared.url, data=params(off="5000")).json()
    assert body == {"status": "success", "cdrs": []}


@pytest.mark.parametrize("field", ["setup_time", "disconnect_time"])
def test_date_filter_is_inclusive_on_both_ends(field: str, session: requests.Session) -> None:
    """date_from and date_to both include rows exactly on them, on the configured field."""
    with Simulator(config(filter_field=field)) as sim:
        truth = sim.records("demo")
        times = sorted(r[field] for r in truth)
        low, high = times[50], times[120]
        rows = fetch_all(sim, session, pager=40, date_from=low, date_to=high)
        single = fetch_all(sim, session, date_from=low, date_to=low)
    expected = sorted(r["i_cdr"] for r in truth if low <= r[field] <= high)
    assert sorted(r["i_cdr"] for r in rows) == expected
    assert {r[field] for r in single} == {low}
    assert len(single) == times.count(low)


def test_prefix_filter(shared: Simulator, session: requests.Session) -> None:
    """prefix keeps exactly the CDRs whose CLD starts with it."""
    truth = shared.records("demo")
    for prefix in ("44", "447", "1201", "44700"):
        rows = fetch_all(shared, session, pager=100, prefix=prefix)
        expected = [r["i_cdr"] for r in truth if r["CLD"].startswith(prefix)]
        assert [r["i_cdr"] for r in rows] == expected
    assert fetch_all(shared, session, prefix="999") == []


def test_duplicates_inside_a_page(session: requests.Session) -> None:
    """duplicate_every=N repeats every Nth row of a page right after it."""
    with Simulator(config(duplicate_every=3)) as sim:
        page = session.post(sim.url, data=params(pager="9")).json()["cdrs"]
        truth = sim.records("demo")[:9]
    assert len(page) == 12
    assert [r["i_cdr"] for r in page] == [
        r["i_cdr"] for k, r in enumerate(truth, 1) for _ in range(2 if k % 3 == 0 else 1)
    ]


def test_same_seed_same_data_and_accounts_are_disjoint() -> None:
    """The same seed gives identical records; another seed or login gives different ones."""
    accounts = {"demo": KEY, "other": "other-key"}
    one = Simulator(config(accounts=accounts))
    two = Simulator(config(accounts=accounts))
    three = Simulator(config(seed=8))
    assert one.records("demo") == two.records("demo")
    assert one.records("demo") != three.records("demo")
    demo_ids = {r["i_cdr"] for r in one.records("demo")}
    other_ids = {r["i_cdr"] for r in one.records("other")}
    assert demo_ids.isdisjoint(other_ids)


def test_a_day_is_the_same_whatever_range_holds_it() -> None:
    """A UTC day's calls depend on the seed, the login, the day and the rate (CDRs per second)
    only: a simulator whose range moved on by a day serves the days both hold unchanged, as a
    real API keeps serving the past, and the range's count stays exact."""
    today = config(cdrs=700, start=START, end=END)
    tomorrow = config(cdrs=700, start=START + timedelta(days=1), end=END + timedelta(days=1))
    first, later = Simulator(today).records("demo"), Simulator(tomorrow).records("demo")
    assert len(first) == len(later) == 700

    def shared(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        low, high = str(START + timedelta(days=1)), str(END)
        return [r for r in records if low <= r["setup_time"] < high]

    assert shared(first) == shared(later) and len(shared(first)) > 500
    ids = [int(r["i_cdr"]) for r in later]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # i_cdr grows with setup time


def ended_by(records: list[dict[str, Any]], moment: float) -> list[dict[str, Any]]:
    """The records whose call ended by ``moment`` (Unix seconds)."""
    stamp = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return [r for r in records if r["disconnect_time"] <= stamp]


def test_a_live_simulator_serves_calls_once_they_have_ended(session: requests.Session) -> None:
    """Live, the calls run on past the history at the same rate, day after day, and a call is
    served once its disconnect time has passed: exactly what a longer fixed range holds, cut
    at the clock. Each answer covers the calls ended by then, earlier answers unchanged."""
    longer = Simulator(config(cdrs=900, end=END + timedelta(days=2))).records("demo")  # same rate
    talking = next(r for r in longer if r["setup_time"] > str(END) and int(r["duration"]) > 9)
    # The clock: 5 s into a call set up on the day after the 7 days' history.
    clock = FakeClock(datetime.fromisoformat(talking["connect_time"]) + timedelta(seconds=5))
    live = config(cdrs=700, start=None, end=None, days=7, live=True, clock=clock)
    assert live.window() == (START, END)
    with Simulator(live) as sim:
        window = {"date_from": str(START), "date_to": str(END + timedelta(days=3))}
        now = fetch_all(sim, session, pager=500, **window)
        assert now == ended_by(longer, clock.now) == sim.records("demo")
        assert any(r["setup_time"] > str(END) for r in now) and talking not in now
        clock.now += 3600
        later = fetch_all(sim, session, pager=500, **window)
        assert later == ended_by(longer, clock.now) and talking in later
        assert all(r in later for r in now)
        clock.now += 86400  # the next day: its calls are generated as the clock gets there
        tomorrow = fetch_all(sim, session, pager=500, **window)
        assert tomorrow == ended_by(longer, clock.now)
        assert any(r["setup_time"] > str(END + timedelta(days=1)) for r in tomorrow)


def test_a_live_simulator_keeps_published_and_withdrawn_records_as_it_grows(
    session: requests.Session,
) -> None:
    """Records published to a live simulator (and rows withdrawn from it) stay as they were
    when its next day's calls are added."""
    clock = FakeClock(END + timedelta(hours=23))
    with Simulator(config(cdrs=700, end=None, days=7, live=True, clock=clock)) as sim:
        first = sim.records("demo")[0]
        gone = {**first, "i_cdr": "8", "setup_time": str(START)}  # the first of its hour
        sim.publish("demo", gone)
        sim.withdraw_while_paging(requests=1, records=1)
        first_hour = {"date_from": str(START), "date_to": str(START + timedelta(hours=1))}
        fetch_all(sim, session, pager=1, **first_hour)  # its second request withdraws it
        late = {**first, "i_cdr": "9", "setup_time": str(START)}
        sim.publish("demo", late)
        before = sim.records("demo")
        assert late in before and gone not in before
        clock.now += 7200
        after = sim.records("demo")
        assert late in after and gone not in after and len(after) > len(before)
        assert [r for r in after if r["setup_time"] < str(END)] == [
            r for r in before if r["setup_time"] < str(END)
        ]


def test_publish_serves_late_and_malformed_records(
    sim: Simulator, session: requests.Session
) -> None:
    """Published records appear in matching windows; one without a time in every window."""
    late = {**sim.records("demo")[0], "i_cdr": "9", "setup_time": "2024-03-05 12:00:00"}
    broken = {"i_cdr": "x1", "duration": "seven"}
    sim.publish("demo", late)
    sim.publish("demo", broken)
    rows = fetch_all(sim, session, date_from="2024-03-05 00:00:00", date_to="2024-03-05 23:59:59")
    other = fetch_all(sim, session, date_from="2024-03-06 00:00:00", date_to="2024-03-06 23:59:59")
    assert late in rows and broken in rows
    assert late not in other and broken in other
    assert late in sim.records("demo") and broken in sim.records("demo")


def test_rerate_changes_the_served_amount(sim: Simulator, session: requests.Session) -> None:
    """A re-rated CDR is served and reported with its new amount."""
    target = sim.records("demo")[5]
    sim.rerate("demo", target["i_cdr"], "1.234567")
    rows = fetch_all(sim, session, pager=50)
    served = next(r for r in rows if r["i_cdr"] == target["i_cdr"])
    assert served == {**target, "customer_amount": "1.234567"}
    assert sim.records("demo")[5]["customer_amount"] == "1.234567"
    with pytest.raises(KeyError):
        sim.rerate("demo", "1", "0.1")


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_is_observable(
    sim: Simulator, session: requests.Session, kind: str
) -> None:
    """An injected fault hits exactly the next request, the way its kind describes."""
    sim.inject(Fault(kind, retry_after=2, delay=0.3))
    started = time.monotonic()
    if kind == "reset":
        with pytest.raises(requests.ConnectionError):
            session.post(sim.url, data=params())
    else:
        response = session.post(sim.url, data=params())
        _check_fault(kind, response, time.monotonic() - started)
    assert session.post(sim.url, data=params()).json()["status"] == "success"
    assert sim.stats()["faults_injected"] == 1


def _check_fault(kind: str, response: requests.Response, elapsed: float) -> None:
    """Assert what one fault kind looks like from the client."""
    if kind in ("429", "500", "502", "503"):
        assert response.status_code == int(kind)
        if kind == "429":
            assert response.headers["Retry-After"] == "2"
    elif kind == "slow":
        assert elapsed >= 0.3
        assert response.json()["status"] == "success"
    elif kind == "truncated":
        assert response.status_code == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(response.content)
    elif kind == "html":
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/html")
    else:
        message = {"error_envelope": "There was an error."}.get(
            kind, "Temporary failure, please retry"
        )
        assert response.json() == {"status": "error", "message": message}


def test_faults_apply_in_order_and_by_rate(sim: Simulator, session: requests.Session) -> None:
    """Queued faults hit consecutive requests; a fault rate hits a share of requests."""
    sim.inject(Fault("503"), Fault("429"))
    codes = [session.post(sim.url, data=params()).status_code for _ in range(3)]
    assert codes == [503, 429, 200]
    sim.set_fault_rate(0.5, ["500"], seed=3)
    codes = [session.post(sim.url, data=params()).status_code for _ in range(40)]
    assert 8 < codes.count(500) < 32
    sim.set_fault_rate(0.0, [])
    assert session.post(sim.url, data=params()).status_code == 200


def test_envelope_override(sim: Simulator, session: requests.Session) -> None:
    """set_envelope answers successful requests with the exact body; None restores them."""
    sim.set_envelope(b'{"status": "ok", "data": []}')
    assert session.post(sim.url, data=params()).content == b'{"status": "ok", "data": []}'
    assert session.post(sim.url, data=params(key="bad")).json()["status"] == "fail"
    sim.set_envelope(None)
    assert session.post(sim.url, data=params()).json()["status"] == "success"


def test_keep_alive_and_stats(sim: Simulator) -> None:
    """Two requests share one HTTP/1.1 connection; stats count requests, rows and CPU."""
    parts = urlsplit(sim.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port)
    try:
        for _ in range(2):
            body = urlencode(params(pager="20"))
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            connection.request("POST", parts.path, body=body, headers=headers)
            response = connection.getresponse()
            assert response.status == 200
            assert len(orjson.loads(response.read())["cdrs"]) == 20
            assert not response.will_close
    finally:
        connection.close()
    stats = sim.stats()
    assert sim.requests_served == stats["requests"] == 2
    assert stats["rows_served"] == 40
    assert stats["cpu_seconds"] > 0


def test_config_rejects_bad_values() -> None:
    """Invalid settings raise ValueError naming each problem; the repr hides API keys."""
    with pytest.raises(ValueError, match="order") as caught:
        SimulatorConfig(order="random", max_page_size=0)
    assert "max_page_size" in str(caught.value)
    with pytest.raises(ValueError, match="at most 20 a second: 1200 here"):
        SimulatorConfig(cdrs=1201, start=END - timedelta(minutes=1), end=END)
    densest = Simulator(config(cdrs=1200, start=END - timedelta(minutes=1)))
    assert len({r["i_cdr"] for r in densest.records("demo")}) == 1200  # room in every second
    with pytest.raises(ValueError, match="start must be before end"):
        SimulatorConfig(start=datetime(2400, 1, 1))  # the end defaults to today
    with pytest.raises(ValueError, match="1970 or later"):
        SimulatorConfig(start=datetime(1969, 12, 31), end=datetime(1970, 1, 2))
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("404")
    assert "demo-key" not in repr(SimulatorConfig())
    with pytest.raises(ValueError, match="live simulator has no end"):
        SimulatorConfig(live=True, start=START, end=END)
    with pytest.raises(ValueError, match="live simulator filters on setup_time"):
        SimulatorConfig(live=True, filter_field="connect_time")


def test_latency_includes_the_simulators_own_work() -> None:
    """--latency is the time to answer: the simulator's work on a page is part of it, so its
    cost is never counted as the client's (it is reported apart by the benchmark)."""
    from etl.simulator.server import answer_delay

    assert answer_delay(0.1, 0.03) == pytest.approx(0.07)
    assert answer_delay(0.1, 0.25) == 0.0
    assert answer_delay(0.0, 0.01) == 0.0
