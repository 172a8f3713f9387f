"""Pagination over one window with ``pager`` (page size) and ``off`` (offset).

Pure state machine: no I/O. The API's page-size cap and ordering are undocumented, so:
- the next offset advances by the number of *distinct* records actually received, never by
  ``pager``: a server that caps pages below what we asked for still yields every row, and a
  server that repeats a record inside a page (the public sample does) is safe whether it counts
  the repeats inside ``pager`` (we then re-read a little overlap, loaded once) or adds them on
  top (we then advance exactly);
- the window ends only on an empty page (a short page proves nothing when the cap is unknown);
- a page identical to the previous one, more distinct records than asked for, or more pages than the
  configured maximum is a PaginationError: the server is ignoring ``off`` or ``pager`` and
  carrying on would either loop forever or silently load less than the API holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from etl.errors import PaginationError


@dataclass
class OffsetPaginator:
    """Says which offset to ask for next, and when the window is exhausted."""

    page_size: int
    max_pages: int = 100_000
    offset: int = 0
    pages: int = 0
    done: bool = False
    _last_digest: bytes = field(default=b"", repr=False)

    def params(self) -> dict[str, str]:
        """The ``pager`` and ``off`` form fields of the next request."""
        return {"pager": str(self.page_size), "off": str(self.offset)}

    def advance(self, row_count: int, body_digest: bytes) -> None:
        """Record a received page of ``row_count`` distinct records hashing to ``body_digest``."""
        if self.done:
            raise PaginationError("asked to advance past the end of the window")
        self.pages += 1
        if row_count == 0:
            self.done = True
            return
        if row_count > self.page_size:
            raise PaginationError(
                f"page at offset {self.offset} has {row_count} distinct records, more than the "
                f"{self.page_size} asked for: the server ignores `pager`"
            )
        if body_digest == self._last_digest:
            raise PaginationError(
                f"page at offset {self.offset} repeats the previous page: the server "
                "ignores `off`; refusing to loop"
            )
        if self.pages >= self.max_pages:
            raise PaginationError(
                f"more than {self.max_pages} pages in one window: use a smaller window "
                "(TCXC_WINDOW) or raise TCXC_MAX_PAGES_PER_WINDOW"
            )
        self._last_digest = body_digest
        self.offset += row_count


def page_digest(rows_json: bytes) -> bytes:
    """A fingerprint of a page's rows, to detect a page served twice in a row.

    The body's length and its 64-bit SipHash (Python's own ``hash``, several times faster
    than a cryptographic digest): it is compared only with the previous page's, in the same
    process, so an accidental match is a one-in-2**64 event.
    """
    return len(rows_json).to_bytes(8, "big") + hash(rows_json).to_bytes(8, "big", signed=True)


def distinct_count(records: list[Any]) -> int:
    """How many different records a page holds (by i_cdr; records without one all count)."""
    if set(map(type, records)) == {dict}:  # the usual page: C-speed passes
        keys: list[Any] = list(map(dict.get, records, repeat("i_cdr")))
        if set(map(type, keys)) == {str}:
            return len(set(map(str.strip, keys)))
    distinct: set[object] = set()
    anonymous = 0
    for record in records:
        key = record.get("i_cdr") if isinstance(record, dict) else None
        if key is None or isinstance(key, dict | list):
            anonymous += 1
        else:
            distinct.add(str(key).strip())
    return len(distinct) + anonymous
