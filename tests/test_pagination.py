"""Pagination state machine."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.errors import PaginationError
from etl.pagination import (
    NO_TIE,
    OffsetPaginator,
    Tie,
    distinct_count,
    page_digest,
    sorting_fields,
    tail_tie,
)


def _serve(total: int, cap: int, paginator: OffsetPaginator) -> list[int]:
    """Drive the paginator against an in-memory list served with a page-size cap."""
    seen: list[int] = []
    while not paginator.done:
        off, pager = int(paginator.params()["off"]), int(paginator.params()["pager"])
        page = list(range(total))[off : off + min(pager, cap)]
        seen += page
        paginator.advance(len(page), page_digest(repr(page).encode()))
    return seen


@given(total=st.integers(0, 3000), page_size=st.integers(1, 500), cap=st.integers(1, 500))
def test_every_row_is_fetched_whatever_the_server_cap(total: int, page_size: int, cap: int) -> None:
    """Offsets advance by rows received, so a server cap below `pager` loses nothing."""
    assert _serve(total, cap, OffsetPaginator(page_size)) == list(range(total))


@pytest.mark.parametrize("repeats_inside_limit", [True, False])
def test_repeated_records_never_skip_rows(repeats_inside_limit: bool) -> None:
    """Whether a server counts in-page repeats inside `pager` or on top, nothing is skipped."""
    data = list(range(100))
    paginator, seen = OffsetPaginator(10), set()
    while not paginator.done:
        off = int(paginator.params()["off"])
        if repeats_inside_limit:  # the server's rows contain each record twice in a row
            doubled = [x for x in data for _ in (0, 1)]
            page = doubled[off : off + 10]
        else:  # the server adds a repeat of the first record on top of `pager` rows
            page = data[off : off + 10]
            page = page + page[:1]
        records = [{"i_cdr": str(x)} for x in page]
        seen |= set(page)
        paginator.advance(distinct_count(records), page_digest(repr(page).encode()))
    assert seen == set(data)


def test_identical_consecutive_pages_stop_the_loop() -> None:
    """A server that ignores `off` serves the same page again: that is an error, not a loop."""
    paginator = OffsetPaginator(10)
    paginator.advance(10, page_digest(b"same"))
    with pytest.raises(PaginationError, match="repeats the previous page") as caught:
        paginator.advance(10, page_digest(b"same"))
    assert "ignores `off` (or its result changed" in str(caught.value)  # both causes named


def test_a_page_larger_than_asked_is_an_error() -> None:
    """A server that ignores `pager` could make offsets skip rows: refuse it."""
    with pytest.raises(PaginationError, match="ignores `pager`"):
        OffsetPaginator(10).advance(11, page_digest(b"x"))


def test_page_limit_guard() -> None:
    """More pages than allowed in one window stops with advice to shrink the window."""
    paginator = OffsetPaginator(1, max_pages=3)
    paginator.advance(1, b"a")
    paginator.advance(1, b"b")
    with pytest.raises(PaginationError, match="TCXC_WINDOW"):
        paginator.advance(1, b"c")


def _tie_server(
    seconds: list[int], cap: int, reorder: bool
) -> Callable[[int, int], list[dict[str, str]]]:
    """Records in ascending second; each request orders the records of one second its own way
    (as ``ORDER BY setup_time LIMIT .. OFFSET ..`` may) when ``reorder``; pages cut at ``cap``."""
    rows = sorted((second, number) for number, second in enumerate(seconds))

    def serve(off: int, pager: int) -> list[dict[str, str]]:
        salt = random.Random(off * 7919 + pager).random() if reorder else 0.0
        order = sorted(rows, key=lambda row: (row[0], random.Random(row[1] + salt).random()))
        return [
            {"i_cdr": str(n), "setup_time": f"2026-01-01 00:{s // 60:02d}:{s % 60:02d}"}
            for s, n in order[off : off + min(pager, cap)]
        ]

    return serve


def _take_all(serve: Callable[[int, int], list[Any]], paginator: OffsetPaginator) -> list[str]:
    delivered: list[str] = []
    while not paginator.done:
        off, pager = int(paginator.params()["off"]), int(paginator.params()["pager"])
        page = serve(off, pager)
        delivered += [r["i_cdr"] for r in paginator.take(page, page_digest(repr(page).encode()))]
    return delivered


@given(
    seconds=st.lists(st.integers(0, 40), max_size=300),
    page_size=st.integers(2, 60),
    cap=st.integers(2, 80),
    reorder=st.booleans(),
)
def test_ties_cut_differently_per_request_are_read_whole_and_once(
    seconds: list[int], page_size: int, cap: int, reorder: bool
) -> None:
    """Whatever order each request gives records sharing a second, and whatever the server's
    cap, every record is delivered exactly once (or the page that is one tie is refused)."""
    paginator = OffsetPaginator(page_size)
    try:
        delivered = _take_all(_tie_server(seconds, cap, reorder), paginator)
    except PaginationError as exc:
        assert "shares one second" in str(exc)
        assert max(map(seconds.count, seconds)) >= min(page_size, cap)
        return
    assert sorted(delivered, key=int) == [str(n) for n in range(len(seconds))]


def test_plain_offset_walk_misses_reordered_ties() -> None:
    """The fault the tie guard is for: advancing by rows received, ties cut differently per
    request read some records twice and others never."""
    serve = _tie_server([n // 4 for n in range(200)], cap=10, reorder=True)
    seen: list[str] = []
    off = 0
    while page := serve(off, 10):
        seen += [r["i_cdr"] for r in page]
        off += len(page)
    assert len(set(seen)) < 200 == len(seen)
    assert sorted(set(_take_all(serve, OffsetPaginator(10))), key=int) == [
        str(n) for n in range(200)
    ]


def test_ties_cost_no_extra_request_when_pages_are_full() -> None:
    """A tie at the end of a full page is read again by the next request, not by an extra
    one: 95 records of distinct seconds but at page ends, 10 a page, take 11 requests (the
    last one empty) as without the guard."""
    seconds = [n - (n % 10 == 0 and n > 0) for n in range(95)]  # each page's first = last's
    serve = _tie_server(seconds, cap=100, reorder=False)
    paginator = OffsetPaginator(10)
    delivered = _take_all(serve, paginator)
    assert sorted(delivered, key=int) == [str(n) for n in range(95)] and len(delivered) == 95
    assert paginator.pages <= 12


def test_tail_tie_is_cut_where_no_tie_of_a_sorting_field_straddles() -> None:
    """The records a tie cut at the page's end may hold: from the last record back to where
    no tie of a field that sorts the page (either way) straddles the cut."""

    def page(*times: str, field: str = "setup_time") -> list[dict[str, str]]:
        return [{"i_cdr": str(9 - n), field: t} for n, t in enumerate(times)]

    def tie(records: list[Any]) -> Tie:
        return tail_tie(records, sorting_fields(records) or ())

    assert tie(page("00:01", "00:02")).size == 1
    three = tie(page("00:01", "00:02", "00:02", "00:02"))
    assert three == Tie(3, frozenset({"8", "7", "6"}), {"setup_time": frozenset({"00:02"})})
    assert tie(page("00:03", "00:02", "00:02", field="disconnect_time")).size == 2
    unsorted = page("00:02", "00:01", "00:02")
    assert sorting_fields(unsorted) == ("i_cdr",)  # not by time: by i_cdr (descending)
    assert tie(unsorted).values == {"i_cdr": frozenset({"7"})}
    # Sorted by setup time, connect times unsorted: connect ties do not count.
    calls = [("00:01", "00:07"), ("00:02", "00:05"), ("00:02", "00:06"), ("00:03", "00:06")]
    records = [{"setup_time": s, "connect_time": c} for s, c in calls]
    assert sorting_fields(records) == ("setup_time",) and tie(records).size == 1
    # Two sorting fields: the cut moves back until neither has a tie across it.
    calls = [("00:01", "00:04"), ("00:02", "00:05"), ("00:02", "00:06"), ("00:03", "00:06")]
    records = [{"setup_time": s, "connect_time": c} for s, c in calls]
    assert sorting_fields(records) == ("setup_time", "connect_time")
    assert tie(records).size == 3
    assert tie([{"i_cdr": "y"}, {"i_cdr": "x"}, {"i_cdr": "z"}]) == NO_TIE  # nothing sorts it
    assert tie(page("00:01")) == NO_TIE  # one record: nothing to re-read
    assert tie([{"setup_time": "00:01"}, None]) == NO_TIE
    assert sorting_fields([{"setup_time": "00:01"}, "junk", {"setup_time": "00:02"}]) == (
        "setup_time",
    )
    assert sorting_fields([{"setup_time": "00:01"}, "junk"]) is None  # cannot tell yet


@given(
    total=st.integers(1, 200),
    page_size=st.integers(2, 40),
    room=st.integers(0, 10),
    deletions=st.lists(st.tuples(st.integers(1, 8), st.floats(0, 1)), max_size=6),
)
def test_records_removed_before_the_offset_fail_the_window_rather_than_skip(
    total: int, page_size: int, room: int, deletions: list[tuple[int, float]]
) -> None:
    """Records removed while the window is paged, before the current offset, shift the rest
    back: the next page then lacks the tie it should start with, and the window fails rather
    than skip the records that moved past the offset (records of distinct seconds here; one
    removal is absorbed by the record re-read, two would lose one). The server honours
    `pager`: after a page it cut short, the next request is a plain probe (README)."""
    cap = page_size + room
    rows = list(range(total))
    paginator, delivered, removed, requests = OffsetPaginator(page_size), set(), set(), 0
    try:
        while not paginator.done:
            off, pager = int(paginator.params()["off"]), int(paginator.params()["pager"])
            requests += 1
            for share in (share for when, share in deletions if when == requests and off):
                if rows:
                    removed.add(rows.pop(min(int(share * off), len(rows) - 1)))
            served = rows[off : off + min(pager, cap)]
            page = [{"i_cdr": str(n), "setup_time": f"{n:06d}"} for n in served]
            taken = paginator.take(page, page_digest(repr(page).encode()))
            delivered |= {int(r["i_cdr"]) for r in taken}
    except PaginationError as exc:
        assert "changed while it was paged" in str(exc) and removed
        return
    assert delivered >= set(range(total)) - removed


def test_a_tie_that_comes_back_empty_is_not_the_end() -> None:
    """The page after a full one starts at that page's last records: empty, they went away."""
    paginator = OffsetPaginator(3)
    page = [{"i_cdr": str(n), "setup_time": f"00:0{n}"} for n in range(3)]
    paginator.take(page, page_digest(b"1"))
    assert paginator.params()["off"] == "2"
    with pytest.raises(PaginationError, match="changed while it was paged") as caught:
        paginator.take([], page_digest(b"2"))
    assert "offset limit" in str(caught.value)  # or an API that serves nothing this deep


def test_a_tie_served_again_in_another_order_is_not_taken_for_an_ignored_offset() -> None:
    """Four calls of one second, pages cut at two, the second request ordering the tie so
    that the same two come back: the error says the tie cannot be paged, not that the
    server ignores `off`."""
    tie = [{"i_cdr": str(n), "setup_time": "00:00"} for n in range(4)]
    paginator = OffsetPaginator(30)
    paginator.take(tie[:2], page_digest(repr(tie[:2]).encode()))
    with pytest.raises(PaginationError, match="shares one second"):
        paginator.take(tie[:2], page_digest(repr(tie[:2]).encode()))


def test_an_i_cdr_sent_as_a_number_on_one_page_and_a_string_on_the_next_is_one_record() -> None:
    """A server that sends i_cdr as a JSON number in some answers and as a string in others
    (both are the same CDR): the tie a page re-reads is recognised, not taken for records
    that vanished (which failed every window of more than one page)."""
    tied = _tie_server([n // 3 for n in range(60)], cap=1000, reorder=False)

    def flipping(off: int, pager: int) -> list[dict[str, Any]]:
        page = tied(off, pager)
        if (off // 10) % 2:  # every other request sends numbers
            return [{**r, "i_cdr": int(r["i_cdr"])} for r in page]
        return page

    delivered = _take_all(flipping, OffsetPaginator(10))
    assert sorted({int(i) for i in delivered}) == list(range(60))
