"""One login's CDRs as the API sees them: generated rows, late ones, re-rates, selections.

A selection is the ordered list of rows a query (window, prefix) matches. Rows are referred to
by number: ``0 .. len(table) - 1`` are generated rows, ``len(table) + k`` is the k-th published
record. Selections are cached, so paging through a window does not redo the work per page.
The caller (the engine) holds one lock around every method.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from etl.simulator.catalog import DESTINATIONS
from etl.simulator.data import DAY, LONGEST_CALL, TIME_FORMAT, CdrTable, extend, to_epoch

_LAST = 1 << 62  # sort position of a record without a parsable time
_M64 = (1 << 64) - 1
_CACHE_SIZE = 32

IcdrKey = tuple[int, int, str]
AscKey = tuple[int, int, int, str]


def _epoch_of(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return to_epoch(datetime.strptime(value, TIME_FORMAT))
    except ValueError:
        return None


def _icdr_key(value: object) -> IcdrKey:
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value, "")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return (0, int(value), "")
    return (1, 0, str(value))


def _mix(value: int) -> int:
    """A fixed pseudo-random 64-bit image of ``value`` (the "shuffled" order)."""
    x = (value * 0x9E3779B97F4A7C15) & _M64
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    return x ^ (x >> 29)


@dataclass
class _Published:
    record: dict[str, Any]
    text: str
    filter_time: int | None
    cld: str | None
    icdr_key: IcdrKey
    asc_key: AscKey
    shuffle_key: int


def _published(record: dict[str, Any], filter_field: str) -> _Published:
    text = orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    icdr_key = _icdr_key(record.get("i_cdr"))
    setup = _epoch_of(record.get("setup_time"))
    cld = record.get("CLD")
    digest = hashlib.blake2b(repr(icdr_key).encode(), digest_size=8).digest()
    return _Published(
        record=record,
        text=text,
        filter_time=_epoch_of(record.get(filter_field)),
        cld=cld if isinstance(cld, str) else None,
        icdr_key=icdr_key,
        asc_key=(_LAST if setup is None else setup, *icdr_key),
        shuffle_key=int.from_bytes(digest, "big"),
    )


class AccountStore:
    """The CDRs of one login and the queries the API answers over them.

    With a ``clock`` (a live simulator's), the table is extended to the end of the clock's day
    as the clock moves (``data.extend``) and a generated call is served only once its
    disconnect time has passed.
    """

    def __init__(
        self,
        table: CdrTable,
        filter_field: str,
        order: str,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if clock is not None and filter_field != "setup_time":
            raise ValueError("a live store filters on setup_time")
        self.table = table
        self._clock = clock
        self._n = len(table)
        self._filter_field = filter_field
        self._order = order
        self._perm: array[int] | None = None
        self._keys: Sequence[int] = table.setup
        if filter_field != "setup_time":
            times = table.connect if filter_field == "connect_time" else table.disconnect
            values = [times(i) for i in range(self._n)]
            perm = sorted(range(self._n), key=values.__getitem__)
            self._perm = array("q", perm)
            self._keys = array("q", [values[i] for i in perm])
        self._published: list[_Published] = []
        self._withdrawn: set[int] = set()  # rows (by number) no query returns any more
        self._amounts: dict[int, str] = {}
        self._cache: OrderedDict[tuple[int | None, int | None, str, int | None], Sequence[int]]
        self._cache = OrderedDict()

    def _now(self) -> int | None:
        """The clock's time (None without one), the table extended through its day first:
        new rows are numbered on from the old last one, and published records, numbered after
        them, move up with their withdrawals."""
        if self._clock is None:
            return None
        now = int(self._clock())
        added = extend(self.table, (now // DAY + 1) * DAY)
        if added:
            old = self._n
            self._withdrawn = {ref + added if ref >= old else ref for ref in self._withdrawn}
            self._n += added
            self._cache.clear()
        return now

    def page(self, lo: int | None, hi: int | None, prefix: str, off: int, limit: int) -> list[str]:
        """JSON text of the rows ``off .. off + limit`` of the query, in the configured order."""
        selection = self.select(lo, hi, prefix)
        if self._order == "ties":
            return [self._text(ref) for ref in self._ties_slice(selection, off, limit)]
        if self._order == "unstable":
            return [self._text(ref) for ref in self._unstable_slice(selection, off, limit)]
        return [self._text(ref) for ref in selection[off : off + limit]]

    def select(self, lo: int | None, hi: int | None, prefix: str) -> Sequence[int]:
        """Row numbers whose filter time is in ``[lo, hi]`` and CLD starts with ``prefix``
        (and, live, whose call has ended)."""
        now = self._now()
        if now is not None and hi is not None and hi < now - LONGEST_CALL:
            now = None  # every call set up by ``hi`` has ended: the selection stays as it is
        key = (lo, hi, prefix, now)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._compute(lo, hi, prefix, now)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return found

    def publish(self, record: dict[str, Any]) -> None:
        """Add a raw record; it is served from the next query on."""
        self._published.append(_published(record, self._filter_field))
        self._cache.clear()

    def withdraw_first(self, lo: int | None, hi: int | None, prefix: str, count: int) -> None:
        """Remove the first ``count`` rows of the query's result from every later answer."""
        self._withdrawn.update(self.select(lo, hi, prefix)[:count])
        self._cache.clear()

    def rerate(self, i_cdr: str, amount: str) -> None:
        """Change ``customer_amount`` of every row numbered ``i_cdr``; KeyError if none."""
        found = False
        kind, number, _ = _icdr_key(i_cdr)
        icdrs = self.table.icdr
        row = bisect.bisect_left(icdrs, number)
        if kind == 0 and row < self._n and icdrs[row] == number:
            self._amounts[row] = amount
            found = True
        for k, item in enumerate(self._published):
            if str(item.record.get("i_cdr")) == i_cdr:
                record = {**item.record, "customer_amount": amount}
                self._published[k] = _published(record, self._filter_field)
                found = True
        if not found:
            raise KeyError(f"no CDR with i_cdr {i_cdr!r}")

    def records(self) -> list[dict[str, Any]]:
        """Every record served now, with its latest values, in ``i_cdr`` order."""
        now = self._now()
        served = range(self._n) if now is None else self._served(range(self._n), now)
        rows = [row for row in served if row not in self._withdrawn]
        generated: list[dict[str, Any]] = orjson.loads("[" + ",".join(map(self._text, rows)) + "]")
        published = [p for k, p in enumerate(self._published) if self._n + k not in self._withdrawn]
        if not published:
            return generated
        icdrs = self.table.icdr
        pairs: Iterator[tuple[IcdrKey, dict[str, Any]]] = heapq.merge(
            (((0, icdrs[row], ""), record) for row, record in zip(rows, generated, strict=True)),
            sorted(((p.icdr_key, orjson.loads(p.text)) for p in published), key=_first),
            key=_first,
        )
        return [record for _, record in pairs]

    def _text(self, ref: int) -> str:
        if ref < self._n:
            return self.table.record_json(ref, self._amounts.get(ref))
        return self._published[ref - self._n].text

    def _served(self, rows: range, now: int) -> array[int]:
        """The generated ``rows`` but the calls still going at ``now``."""
        ended = self.table.disconnect
        recent = bisect.bisect_right(self._keys, now - LONGEST_CALL)  # rows before: ended
        cut = max(rows.start, min(rows.stop, recent))
        tail = (row for row in range(cut, rows.stop) if ended(row) <= now)
        return array("q", itertools.chain(range(rows.start, cut), tail))

    def _compute(
        self, lo: int | None, hi: int | None, prefix: str, now: int | None
    ) -> Sequence[int]:
        first = 0 if lo is None else bisect.bisect_left(self._keys, lo)
        last = self._n if hi is None else bisect.bisect_right(self._keys, hi)
        if now is not None:
            last = min(last, bisect.bisect_right(self._keys, now))  # (set up by now)
        rows: Sequence[int]
        if now is not None:  # (live: filtered on setup_time, no permutation)
            rows = self._served(range(first, max(first, last)), now)
        elif self._perm is None:
            rows = range(first, max(first, last))
        else:
            rows = array("q", sorted(self._perm[first:last]))
        if prefix:
            rows = self._with_prefix(rows, prefix)
        extra = [
            self._n + k
            for k, item in enumerate(self._published)
            if (item.filter_time is None or _inside(item.filter_time, lo, hi))
            and (not prefix or (item.cld is not None and item.cld.startswith(prefix)))
        ]
        if extra:
            merged = list(rows)
            for ref in extra:
                bisect.insort(merged, ref, key=self._asc_key)
            rows = merged
        if self._withdrawn:
            rows = array("q", (row for row in rows if row not in self._withdrawn))
        return self._ordered(rows)

    def _with_prefix(self, rows: Sequence[int], prefix: str) -> array[int]:
        match = bytes(
            2 if d.prefix.startswith(prefix) else 1 if prefix.startswith(d.prefix) else 0
            for d in DESTINATIONS
        )
        dest = self.table.dest
        cld_of = self.table.cld_of
        return array(
            "q",
            (
                row
                for row in rows
                if (m := match[dest[row]]) == 2 or (m == 1 and cld_of(row).startswith(prefix))
            ),
        )

    def _asc_key(self, ref: int) -> AscKey:
        if ref < self._n:
            return (self.table.setup[ref], 0, self.table.icdr[ref], "")
        return self._published[ref - self._n].asc_key

    def _shuffle_key(self, ref: int) -> int:
        if ref < self._n:
            return _mix(self.table.icdr[ref])
        return self._published[ref - self._n].shuffle_key

    def _ties_slice(self, selection: Sequence[int], off: int, limit: int) -> list[int]:
        """Rows ``off .. off + limit`` in ascending setup time, the rows that share a second
        in an order of this request's own (``off``, ``limit``), as SQL's ``ORDER BY setup_time
        LIMIT .. OFFSET ..`` may give: a tie straddling a page boundary is cut differently by
        the two requests that read either side of it."""
        end = min(off + limit, len(selection))
        if off >= end:
            return []

        def second(ref: int) -> int:
            return self._asc_key(ref)[0]

        first, last = off, end
        while first > 0 and second(selection[first - 1]) == second(selection[off]):
            first -= 1
        while last < len(selection) and second(selection[last]) == second(selection[end - 1]):
            last += 1
        salt = _mix(off * 1_000_003 + limit)

        def place(ref: int) -> tuple[int, int]:
            return second(ref), _mix(self._shuffle_key(ref) ^ salt)

        span = sorted(selection[first:last], key=place)
        return span[off - first : end - first]

    def _unstable_slice(self, selection: Sequence[int], off: int, limit: int) -> list[int]:
        """Rows ``off .. off + limit`` ordered by the hour of their setup time only, the rows
        of an hour in an order of this request's own, as ``ORDER BY`` an hour (or no ``ORDER
        BY`` at all) may give: no field the client knows sorts the pages, and each request
        cuts the hours differently."""
        salt = _mix(off * 1_000_003 + limit)

        def place(ref: int) -> tuple[int, int]:
            return self._asc_key(ref)[0] // 3600, _mix(self._shuffle_key(ref) ^ salt)

        return sorted(selection, key=place)[off : off + limit]

    def _ordered(self, rows: Sequence[int]) -> Sequence[int]:
        if self._order in ("asc", "ties"):
            return rows
        if self._order == "desc":
            if isinstance(rows, range):
                return rows[::-1]
            return array("q", reversed(rows))
        return array("q", sorted(rows, key=self._shuffle_key))


def _first(pair: tuple[IcdrKey, dict[str, Any]]) -> IcdrKey:
    return pair[0]


def _inside(moment: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or moment >= lo) and (hi is None or moment <= hi)
