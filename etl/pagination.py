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
  carrying on would either loop forever or silently load less than the API holds;
- the order of records that share the sort value is undocumented too. SQL's ``ORDER BY
  setup_time LIMIT .. OFFSET ..`` may order such ties differently in each request, so a second
  whose calls straddle a page boundary can be cut differently by the two requests that read
  either side of it: one call read twice, another never. ``take`` therefore re-reads the tie
  at the end of each full page (the records at its end that share the last record's value of
  a time field a server may sort by: at least the last record, which may share its second
  with the first records of the next page): the next request starts where that tie starts,
  and whatever order the server gives the tie then, all of it is in that page. Records an
  earlier page delivered unchanged are dropped, so they are not loaded or counted twice. The
  cost is a record or a few re-read per page, not a request. A short page is
  followed by a plain request at the next offset (the usual end: an empty page, no extra
  request); when that one is not empty, the server cut the page short, and the tie at its end
  is read again the same way. A full page that is one tie (every record shares the second)
  cannot be cut safely: a PaginationError says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from etl.errors import PaginationError, ResultChangedError


@dataclass
class OffsetPaginator:
    """Says which offset to ask for next, and when the window is exhausted."""

    page_size: int
    max_pages: int = 100_000
    offset: int = 0
    pages: int = 0
    done: bool = False
    _last_digest: bytes = field(default=b"", repr=False)
    # The tie guard (``take``): how many records make a page full (``page_size`` until the
    # server shows a lower cap), the records the next page may repeat (by i_cdr; ``ahead``:
    # those of a page read past a tie that is being read again), the length
    # of the last page when it was short, and where the tie at its end started (None: none to
    # re-read; negative: -1 - its offset, a page that was one tie).
    _full: int = field(default=0, repr=False)
    _delivered: dict[str, Any] = field(default_factory=dict, repr=False)
    _ahead: dict[str, Any] = field(default_factory=dict, repr=False)
    _short: int | None = field(default=None, repr=False)
    _tie_start: int | None = field(default=None, repr=False)
    _tie_keys: frozenset[Any] = field(default=frozenset(), repr=False)
    # The i_cdr the next page must hold (it starts at a tie the previous page ended with).
    _expect: frozenset[Any] = field(default=frozenset(), repr=False)

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

    def take(self, records: Sequence[Any], body_digest: bytes) -> list[Any]:
        """Advance past a received page (see the module's notes on ties); return its records
        minus those an earlier page delivered as they are."""
        expect, self._expect = self._expect, frozenset()
        if expect and _vanished(records, expect):
            raise ResultChangedError(
                f"the page at offset {self.offset} lacks the records the previous page ended "
                "with: the API's result for the window changed while it was paged (records "
                "before this offset went away), so later records may have moved past the "
                "offset unread; the window is not taken as complete"
            )
        fresh = _unseen(records, self._delivered, self._ahead)
        if self._ahead and not _held_keys(records, self._ahead):
            self._ahead = {}  # passed: the pages from here on start beyond them
        start, after_short, tie_start = self.offset, self._short, self._tie_start
        self._short = self._tie_start = None
        self.advance(distinct_count(records), body_digest)
        if self.done:
            return fresh
        if after_short is not None:  # a short page that was not the last: the server's cap
            self._full = min(self._full or self.page_size, after_short)
            if tie_start is not None:  # read the tie at the end of that page again
                if tie_start < 0:
                    raise _one_tie(-tie_start - 1)
                self._ahead = _by_key(records)
                self.offset, self._expect = tie_start, self._tie_keys
                return fresh
        count = self.offset - start  # distinct records: what the offset moved by
        tie = tail_tie(records)
        overlap = distinct_count(records[len(records) - tie :]) if tie else 0
        self._delivered = _by_key(records)  # the next page may re-read any of them
        tie_keys = frozenset(_by_key(records[len(records) - tie :])) if tie else frozenset()
        if len(records) < (self._full or self.page_size):  # the end, or cut short: see next
            self._short, self._tie_keys = len(records), tie_keys
            if overlap:
                self._tie_start = self.offset - overlap if overlap < count else -start - 1
        elif overlap >= count > 1:
            raise _one_tie(start)
        elif overlap < count:
            self.offset -= overlap
            self._expect = tie_keys  # the next page starts with them, in some order
        return fresh


def _one_tie(offset: int) -> PaginationError:
    return PaginationError(
        f"every record of the page at offset {offset} shares one second, and the page is not "
        "the window's last: a server that orders such ties differently per request cannot be "
        "paged safely through them; raise TCXC_PAGE_SIZE"
    )


# Time fields a server may sort by.
ORDER_FIELDS = ("setup_time", "connect_time", "disconnect_time")


def tail_tie(records: Sequence[Any]) -> int:
    """How many records at the end of the page share the last one's value of a time field a
    server may sort by (the longest such run; 1 when the last record's values are its own):
    the records a tie cut at the page's end may hold. 0 for a page of one record."""
    last = records[-1] if len(records) > 1 else None
    if not isinstance(last, dict):
        return 0
    longest = 0
    for name in ORDER_FIELDS:
        value = last.get(name)
        if value is None:
            continue
        first = len(records) - 1
        while first and isinstance(r := records[first - 1], dict) and r.get(name) == value:
            first -= 1
        longest = max(longest, len(records) - first)
    return longest


def _by_key(records: Sequence[Any]) -> dict[Any, Any]:
    """``records`` by their i_cdr as sent (those without a hashable one are left out)."""
    keys = _keys(records)
    if set(map(type, keys)) <= _SCALARS:  # the usual page: built at C speed
        held = dict(zip(keys, records, strict=True))
        held.pop(None, None)
        return held
    return {key: r for key, r in zip(keys, records, strict=True) if _hashable(key)}


def _keys(records: Sequence[Any]) -> list[Any]:
    """Each record's i_cdr as sent (None when it has none or is not an object)."""
    if set(map(type, records)) == {dict}:  # the usual page: C-speed key reads
        return list(map(dict.get, records, repeat("i_cdr")))
    return [r.get("i_cdr") if isinstance(r, dict) else None for r in records]


def _vanished(records: Sequence[Any], expect: frozenset[Any]) -> bool:
    """Whether a page that starts at a tie lacks one of the tie's records (``expect``)."""
    if len(records) < len(expect):  # cut shorter than the tie: cannot tell
        return not records
    keys = _keys(records)
    held = set(keys) if set(map(type, keys)) <= _SCALARS else set(filter(_hashable, keys))
    return not expect <= held


def _held_keys(records: Sequence[Any], *held: dict[Any, Any]) -> list[int]:
    """Indexes of the records whose i_cdr (as sent) is a key of ``held``."""
    keys = _keys(records)
    wanted = set().union(*held)
    if not set(map(type, keys)) <= _SCALARS:  # an object or a list as i_cdr: never held
        return [i for i, key in enumerate(keys) if _hashable(key) and key in wanted]
    return [i for i, key in enumerate(keys) if key in wanted]


_SCALARS = {str, int, float, bool, type(None)}


def _hashable(key: Any) -> bool:
    return key is not None and not isinstance(key, dict | list)


def _unseen(records: Sequence[Any], *held: dict[Any, Any]) -> list[Any]:
    """``records`` minus those equal to the record ``held`` under their i_cdr."""
    held = tuple(h for h in held if h)
    if not held:
        return list(records)
    again = {
        i
        for i in _held_keys(records, *held)
        if any(records[i] == h.get(records[i]["i_cdr"], _NOTHING) for h in held)
    }
    return [r for i, r in enumerate(records) if i not in again] if again else list(records)


_NOTHING = object()


def page_digest(rows_json: bytes) -> bytes:
    """A fingerprint of a page's rows, to detect a page served twice in a row.

    The body's length and its 64-bit SipHash (Python's own ``hash``, several times faster
    than a cryptographic digest): it is compared only with the previous page's, in the same
    process, so an accidental match is a one-in-2**64 event.
    """
    return len(rows_json).to_bytes(8, "big") + hash(rows_json).to_bytes(8, "big", signed=True)


def distinct_count(records: Sequence[Any]) -> int:
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
