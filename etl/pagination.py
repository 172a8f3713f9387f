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
  at the end of each full page: the last records, back to where no tie of the fields that sort
  the window's pages straddles (``sorting_fields``, read on the window's first page; at least
  the last record, which may share its second with the first records of the next page). The
  next request starts where that tie starts, and whatever order the server gives the tie
  then, all of it is in that page. Records an earlier page delivered unchanged are dropped, so
  they are not loaded or counted twice. The cost is a record or a few re-read per page, not a
  request. A short page is followed by a plain request at the next offset (the usual end: an
  empty page, no extra request); when that one is not empty, the server cut the page short,
  and the tie at its end is read again the same way. A full page that is one tie (every
  record shares the second) cannot be cut safely: a PaginationError says so;
- the result may change while a window is paged. A record added is a late CDR (read by the
  next pass over the window); records removed before the offset shift the rest back, past
  the offset. The page after a full one must therefore hold the tie it starts with (when it
  reaches past the tie's values: a tie may hold more records than a page); if it does not,
  ResultChangedError (etl.window_sync pages the window again from its start). One removal is
  absorbed by the re-read record but is reported all the same; removals inside a tie that is
  cut differently can go unseen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import repeat
from typing import Any

from etl.errors import PaginationError, ResultChangedError

# Fields a server may sort by: the three times ("YYYY-MM-DD HH:MM:SS" texts sort as times
# do) and i_cdr (compared as sent: only equality matters below).
ORDER_FIELDS = ("setup_time", "connect_time", "disconnect_time", "i_cdr")


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
    # those of a page read past a tie that is being read again), the length of the last page
    # when it was short, where the tie at its end started (None: none to re-read) and that
    # tie, or the offset of that page when it was one tie.
    _full: int = field(default=0, repr=False)
    _delivered: dict[Any, Any] = field(default_factory=dict, repr=False)
    _ahead: dict[Any, Any] = field(default_factory=dict, repr=False)
    _short: int | None = field(default=None, repr=False)
    _tie_start: int | None = field(default=None, repr=False)
    _short_tie: Tie | None = field(default=None, repr=False)
    _one_tie_at: int | None = field(default=None, repr=False)
    # The fields that sort the window's pages (from its first page that tells, see
    # ``sorting_fields``).
    _fields: tuple[str, ...] | None = field(default=None, repr=False)
    # The tie the next page starts with (it must hold its records, in some order).
    _expect: Tie | None = field(default=None, repr=False)

    @property
    def sorted_by(self) -> tuple[str, ...] | None:
        """The ORDER_FIELDS that sort the window's pages; () when none does, None while no
        page has told."""
        return self._fields

    @property
    def unordered(self) -> bool:
        """Whether the window took more than one page and no field of ORDER_FIELDS was seen
        to sort them: no tie guard applied, so a server whose order changes from request to
        request could have cut each page boundary differently (see ``etl.window_sync``,
        which then reads the window again)."""
        return self.done and self.pages > 2 and not self._fields

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
                "ignores `off` (or its result changed between the two requests in a way that "
                "served the same page again); refusing to loop"
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
        keys = _keys(records)
        self._refuse(records, keys, body_digest)
        fresh = _unseen(records, keys, self._delivered, self._ahead)
        if self._ahead and self._ahead.keys().isdisjoint(keys):
            self._ahead = {}  # passed: the pages from here on start beyond them
        start, after_short, tie_start = self.offset, self._short, self._tie_start
        self._short = self._tie_start = self._one_tie_at = self._expect = None
        self.advance(distinct_count(records, keys), body_digest)
        if self.done:
            return fresh
        if after_short is not None:  # a short page that was not the last: the server's cap
            self._full = min(self._full or self.page_size, after_short)
            if tie_start is not None:  # read the tie at the end of that page again
                self._ahead = _by_key(records, keys)
                self.offset, self._expect = tie_start, self._short_tie
                return fresh
        count = self.offset - start  # distinct records: what the offset moved by
        if self._fields is None:  # the server's order, from the first page that tells
            self._fields = sorting_fields(records)
        tie = tail_tie(records, self._fields or ())
        tail = len(records) - tie.size
        overlap = distinct_count(records[tail:], keys[tail:]) if tie.size else 0
        self._delivered = _by_key(records, keys)  # the next page may re-read any of them
        if len(records) < (self._full or self.page_size):  # the end, or cut short: see next
            self._short, self._short_tie = len(records), tie
            if overlap >= count > 1:
                self._one_tie_at = start
            elif overlap:
                self._tie_start = self.offset - overlap
        elif overlap >= count > 1:
            raise _one_tie(start)
        elif overlap < count:
            self.offset -= overlap
            self._expect = tie  # the next page starts with it, in some order
        return fresh

    def _refuse(self, records: Sequence[Any], keys: list[Any], body_digest: bytes) -> None:
        """Raise when the page shows that the tie guard cannot hold (before ``advance``)."""
        if self._expect is not None and _vanished(records, keys, self._expect):
            deep = (
                ""
                if records
                else ", or the API serves nothing this deep (an offset limit: a smaller "
                "TCXC_WINDOW keeps windows shallower)"
            )
            raise ResultChangedError(
                f"the page at offset {self.offset} lacks the records the previous page ended "
                "with: the API's result for the window changed while it was paged (records "
                f"before this offset went away){deep}, so later records may have gone unread; "
                "the window is not taken as complete"
            )
        if records and self._one_tie_at is not None:
            raise _one_tie(self._one_tie_at)  # that short page, one tie, was not the last
        if body_digest == self._last_digest and len(records) > 1:
            fields = self._fields or sorting_fields(records) or ()
            if tail_tie(records, fields).size == len(records):  # ties reordered, not `off`
                raise _one_tie(self.offset)


def _one_tie(offset: int) -> PaginationError:
    return PaginationError(
        f"every record of the page at offset {offset} shares one second, and the page is not "
        "the window's last: a server that orders such ties differently per request cannot be "
        "paged safely through them; raise TCXC_PAGE_SIZE"
    )


@dataclass(frozen=True)
class Tie:
    """The records at the end of a page that a tie cut at its boundary may hold: the last
    ``size`` records, their i_cdr (``keys``) and, per field the page is sorted by, their
    values."""

    size: int
    keys: frozenset[Any]
    values: dict[str, frozenset[Any]]


NO_TIE = Tie(0, frozenset(), {})


def sorting_fields(records: Sequence[Any]) -> tuple[str, ...] | None:
    """The ORDER_FIELDS that sort the page's records (either way; records that are not
    objects are passed over); the i_cdr only when no time does (being unique, it adds no tie).
    None when fewer than two records tell."""
    objects = [r for r in records if isinstance(r, dict)]
    if len(objects) < 2:
        return None
    times = tuple(name for name in ORDER_FIELDS[:-1] if _sorting(name, objects))
    return times or tuple(name for name in ORDER_FIELDS[-1:] if _sorting(name, objects))


def tail_tie(records: Sequence[Any], fields: Sequence[str]) -> Tie:
    """The tie at the end of a page sorted by ``fields`` (see ``sorting_fields``): the
    shortest run of last records (the last one at least) that no tie of those fields
    straddles. NO_TIE when no field sorts the page, or for a page of one record."""
    if len(records) < 2 or not fields or not isinstance(records[-1], dict):
        return NO_TIE
    first = len(records) - 1
    while first and isinstance(before := records[first - 1], dict):
        here = records[first]
        if all(before.get(name) != here.get(name) for name in fields):
            break
        first -= 1
    tail = records[first:]
    values = {name: frozenset(_hashable(r.get(name)) for r in tail) - {None} for name in fields}
    return Tie(len(tail), frozenset(_keys(tail)) - {None}, values)


def _sorting(name: str, records: Sequence[Any]) -> bool:
    """Whether the page's values of ``name`` sort it, either way."""
    values: list[Any] = list(map(dict.get, records, repeat(name)))
    try:  # (linear for a sorted column; None or mixed types raise)
        return values == sorted(values) or values == sorted(values, reverse=True)
    except TypeError:
        return False


def _keys(records: Sequence[Any]) -> list[Any]:
    """Each record's i_cdr as text (as sent when a string, so that the usual page costs no
    conversion; a number as its text, so that 5000099 and "5000099" from two answers are one
    record); None when it has none (or one that is not a scalar, or the record is not an
    object)."""
    if set(map(type, records)) == {dict}:  # the usual page: C-speed key reads
        keys = list(map(dict.get, records, repeat("i_cdr")))
        if set(map(type, keys)) == {str}:
            return keys
    else:
        keys = [r.get("i_cdr") if isinstance(r, dict) else None for r in records]
    return list(map(_hashable, keys))


def _hashable(key: Any) -> Any:
    """``key`` as text (a string as it is), or None when it is none or not a scalar."""
    if key is None or isinstance(key, str):
        return key
    return str(key) if isinstance(key, int | float | bool | Decimal) else None


def _by_key(records: Sequence[Any], keys: Sequence[Any]) -> dict[Any, Any]:
    """``records`` by their ``keys`` (those without one are left out)."""
    held = dict(zip(keys, records, strict=True))
    held.pop(None, None)
    return held


def _vanished(records: Sequence[Any], keys: list[Any], tie: Tie) -> bool:
    """Whether a page that starts at ``tie`` lacks one of its records. A page that does not
    reach past the tie's values (on the fields that sorted the page) cannot tell: the tie
    may hold more records than it."""
    if not records:
        return bool(tie.keys)
    last = records[-1]
    if not isinstance(last, dict) or not tie.values:
        return False
    for name, values in tie.values.items():
        if (value := _hashable(last.get(name))) is not None and value in values:
            return False
    return not tie.keys.issubset(keys)


def _unseen(records: Sequence[Any], keys: list[Any], *held: dict[Any, Any]) -> list[Any]:
    """``records`` minus those equal to the record ``held`` under their key."""
    again: set[int] = set()
    position: dict[Any, int] | None = None
    for records_held in held:
        common = records_held.keys() & keys
        if common:
            position = position or dict(zip(keys, range(len(keys)), strict=True))
            again.update(
                position[key] for key in common if records[position[key]] == records_held[key]
            )
    return [r for i, r in enumerate(records) if i not in again] if again else list(records)


def page_digest(rows_json: bytes) -> bytes:
    """A fingerprint of a page's rows, to detect a page served twice in a row.

    The body's length and its 64-bit SipHash (Python's own ``hash``, several times faster
    than a cryptographic digest): it is compared only with the previous page's, in the same
    process, so an accidental match is a one-in-2**64 event.
    """
    return len(rows_json).to_bytes(8, "big") + hash(rows_json).to_bytes(8, "big", signed=True)


def key_texts(records: Sequence[Any]) -> set[str]:
    """The distinct i_cdr of a page as text (records without one are left out)."""
    return {str(key).strip() for key in _keys(records) if key is not None}


def distinct_count(records: Sequence[Any], keys: list[Any] | None = None) -> int:
    """How many different records a page holds (by i_cdr; records without one all count).
    ``keys``: the page's ``_keys``, when they are at hand."""
    keys = _keys(records) if keys is None else keys
    if set(map(type, keys)) == {str}:  # the usual page: C-speed passes
        return len(set(map(str.strip, keys)))
    distinct = {str(key).strip() for key in keys if key is not None}
    return len(distinct) + keys.count(None)
