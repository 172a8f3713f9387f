"""The next request goes out before a page is parsed; a wrong guess costs a request, never a
page (etl.lookahead), against the simulator over HTTP."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from zoneinfo import ZoneInfo

from etl.client import Answer, ApiClient, classify
from etl.lookahead import LookAhead, guess_count
from etl.pagination import distinct_count
from etl.simulator import Simulator, SimulatorConfig
from etl.window_sync import fetch_window
from etl.windows import Window
from tests.conftest import make_job, make_settings, sim_range


def _form(offset: int, pager: int = 100) -> dict[str, str]:
    start, _end = sim_range()
    window = Window(start, start + timedelta(days=1))
    return {**window.api_params(ZoneInfo("UTC")), "pager": str(pager), "off": str(offset)}


def test_guess_counts_distinct_i_cdr_strings() -> None:
    body = b'{"cdrs": [{"i_cdr": "1"}, {"i_cdr" : "2"}, {"i_cdr": "1"}, {"x": {"y": 1}}]}'
    assert guess_count(body) == 2
    assert guess_count(b'{"status": "success", "cdrs": []}') == 0


def test_the_next_page_is_requested_while_this_one_is_parsed(sim: Simulator) -> None:
    client = ApiClient(sim.url, "buyer1", "key-one")
    ahead = LookAhead(client.send)
    try:
        served = sim.requests_served
        first = client.send(_form(0))
        ahead.guess(_form(0), first)  # sent now, before the page is parsed
        count = distinct_count(classify(*first).records)
        early = ahead.take(_form(count))
        assert early is not None and sim.requests_served == served + 2  # no request more
        assert classify(*early).records == classify(*client.send(_form(count))).records
        assert ahead.take(_form(count)) is None  # taken once
    finally:
        ahead.close()
        client.close()


def test_a_wrong_guess_is_dropped_and_the_right_page_requested(sim: Simulator) -> None:
    client = ApiClient(sim.url, "buyer1", "key-one")
    ahead = LookAhead(client.send)
    try:
        first = client.send(_form(0))
        served = sim.requests_served
        ahead.guess(_form(0), Answer(200, {}, b'{"cdrs": [{"i_cdr": "7"}]}'))  # guesses 1
        assert ahead.take(_form(distinct_count(classify(*first).records))) is None
        assert (ahead.sent, ahead.used) == (1, 0)
        assert sim.requests_served == served + 1  # the request sent ahead, dropped
    finally:
        ahead.close()
        client.close()


def test_windows_load_exactly_whatever_the_guesses(sim_config: SimulatorConfig) -> None:
    """Pages capped below pager and records repeated inside pages: every guess is checked
    against the parsed page, so the pages are those paging without look-ahead gives."""
    config = replace(sim_config, max_page_size=37, duplicate_every=5)
    with Simulator(config) as sim:
        start, _end = sim_range()
        window = Window(start, start + timedelta(days=2))
        settings = replace(make_settings(sim), page_size=50)
        pages = list(fetch_window(make_job(settings), window))
        fetched = [record["i_cdr"] for page in pages for record in page]
        truth = {
            record["i_cdr"]
            for record in sim.records("buyer1")
            if window.api_params(ZoneInfo("UTC"))["date_from"]
            <= record["setup_time"]
            <= window.api_params(ZoneInfo("UTC"))["date_to"]
        }
        assert set(fetched) == truth and pages[-1] == []
        assert sim.requests_served <= len(pages) + 1  # wrong guesses: at most the last one
