"""Pagination state machine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.errors import PaginationError
from etl.pagination import OffsetPaginator, distinct_count, page_digest


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
    with pytest.raises(PaginationError, match="repeats the previous page"):
        paginator.advance(10, page_digest(b"same"))


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
