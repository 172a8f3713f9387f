"""Deterministic CDR generation, stored column-wise so a million rows fit in memory.

Rows are generated sorted by setup time (then ``i_cdr``, which grows with it) and turned into
API-format JSON only when served: each (destination, vendor, account, connection) combination
gets a JSON template made once with orjson, and a row fills in its 12 per-call values, which is
several times cheaper than building and dumping a dict. Everything derives from
``(seed, login)`` and each UTC day (see ``generate``): the same configuration always produces
the same records, and a day's records do not depend on the rest of the range.
"""

from __future__ import annotations

import functools
import hashlib
import random
from array import array
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from etl.simulator.catalog import (
    CLI_POOLS,
    DESTINATIONS,
    FAILURE_WEIGHTS,
    NORMAL_CLEARING,
    Q850_REASONS,
    VENDORS,
)
from etl.simulator.rating import amount_micro, billed_seconds, format_micro

EPOCH = datetime(1970, 1, 1)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
FAILED_SHARE_OF_1024 = 410  # about 40 % of calls fail


def to_epoch(moment: datetime) -> int:
    """Seconds since 1970 of a naive datetime read as UTC."""
    return int((moment - EPOCH).total_seconds())


def _pick_table(weights: list[int], size: int = 1024) -> bytes:
    """A lookup table of ``size`` entries where index ``k`` appears in proportion to weight."""
    total = sum(weights)
    table = bytearray()
    for index, weight in enumerate(weights):
        table.extend([index] * (size * weight // total))
    table.extend([len(weights) - 1] * (size - len(table)))
    return bytes(table)


_DEST_PICK = _pick_table([d.weight for d in DESTINATIONS])
_FAIL_CODES = tuple(FAILURE_WEIGHTS)
_FAIL_PICK = _pick_table(list(FAILURE_WEIGHTS.values()))


@dataclass(frozen=True)
class Profile:
    """Per-login constants: the customer's ids, its SIP accounts and its ``i_cdr`` base."""

    login: str
    seed: int
    i_customer: int
    accounts: tuple[tuple[str, str, str], ...]  # (i_account, account_name, customer_ip)
    icdr_base: int


def icdr_bucket(login: str) -> int:
    """Which bucket of 10**12 the login's ``i_cdr`` values start at (1..9000)."""
    digest = hashlib.sha256(login.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 9000 + 1


def make_profile(login: str, seed: int, bucket: int) -> Profile:
    """The account constants of ``login``, its ``i_cdr`` values starting at bucket * 10**12
    (room for every second until 2400 at ICDR_PER_SECOND; 16 digits at most)."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{login}".encode()).digest()[:8], "big")
    i_customer = 100 + h % 9000
    first_name = 3001 + (h >> 16) % 900
    accounts = tuple(
        (str(i_customer * 10 + k), f"SBC-{first_name + k}", f"203.0.113.{10 + (h >> 32) % 200 + k}")
        for k in range(1 + (h >> 8) % 3)
    )
    return Profile(login, seed, i_customer, accounts, bucket * 10**12)


class CdrTable:
    """Generated CDRs of one login, one array per column, sorted by (setup time, i_cdr)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.setup = array("q")
        self.icdr = array("q")
        self.cld = array("q")
        self.cli = array("q")
        self.call_ids = b""  # 16 random bytes per row
        self.duration = array("H")
        self.ring = array("B")
        self.dest = array("B")
        self.vendor = array("B")
        self.code = array("B")
        self.misc = array("B")  # account index (2 bits), connection (2 bits), has ip (1 bit)
        self.rate = (0, 1)  # (calls, seconds): each day holds its share of calls at this rate
        self.until = 0  # Unix end of the generated setup times
        self._days: dict[int, str] = {}
        self._clock = _clock()
        self._templates: dict[int, tuple[tuple[str, ...], int]] = {}
        self._amounts: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self.icdr)

    def connect(self, i: int) -> int:
        """Unix connect time of row ``i``."""
        return self.setup[i] + self.ring[i]

    def disconnect(self, i: int) -> int:
        """Unix disconnect time of row ``i``."""
        return self.setup[i] + self.ring[i] + self.duration[i]

    def cld_of(self, i: int) -> str:
        """Destination number of row ``i``."""
        dest = DESTINATIONS[self.dest[i]]
        return dest.prefix + str(self.cld[i]).zfill(dest.digits - len(dest.prefix))

    def record(self, i: int, amount: str | None = None) -> dict[str, Any]:
        """Row ``i`` as the API returns it; ``amount`` overrides ``customer_amount``."""
        result: dict[str, Any] = orjson.loads(self.record_json(i, amount))
        return result

    def record_json(self, i: int, amount: str | None = None) -> str:
        """Row ``i`` as compact JSON text, the same as ``orjson.dumps(self.record(i))``."""
        d, v, duration = self.dest[i], self.vendor[i], self.duration[i]
        p, width = self._pieces(d, v, self.misc[i])
        billed, generated_amount = self._billing(d, v, duration)
        # A re-rated amount is escaped as JSON once; generated ones need no escaping.
        amount = generated_amount if amount is None else orjson.dumps(amount).decode()[1:-1]
        setup = self.setup[i]
        day, second = divmod(setup, 86400)
        day_text = self._days.get(day) or self._day_text(day)
        clock = self._clock
        setup_text = day_text + clock[second]
        second += self.ring[i]
        connect_text = day_text + clock[second] if second < 86400 else self._fmt(setup, i, 0)
        if duration == 0:
            disconnect_text = connect_text
        elif second + duration < 86400:
            disconnect_text = day_text + clock[second + duration]
        else:
            disconnect_text = self._fmt(setup, i, duration)
        code = self.code[i]
        return (
            f"{p[0]}{self.icdr[i]}{p[1]}{str(self.cld[i]).zfill(width)}{p[2]}{self.cli[i]}"
            f"{p[3]}{self.call_ids[16 * i : 16 * i + 16].hex()}{p[4]}{duration}{p[5]}{billed}"
            f"{p[6]}{connect_text}{p[7]}{disconnect_text}{p[8]}{setup_text}{p[9]}{amount}"
            f"{p[10]}{_CODE_TEXTS[code]}{p[11]}{_REASONS[code]}{p[12]}"
        )

    def _prices(self, d: int, v: int) -> tuple[int, int]:
        dest, vendor = DESTINATIONS[d], VENDORS[v]
        return (
            dest.price_1_micro * vendor.price_percent // 100,
            dest.price_n_micro * vendor.price_percent // 100,
        )

    def _billing(self, d: int, v: int, duration: int) -> tuple[str, str]:
        """(``billed_duration`` as JSON, ``customer_amount``) of a call, cached."""
        key = (d * 8 + v) * 4096 + duration
        found = self._amounts.get(key)
        if found is None:
            if duration == 0:
                found = ("null", "0.000000")
            else:
                dest = DESTINATIONS[d]
                p1, pn = self._prices(d, v)
                billed = billed_seconds(duration, dest.interval_1, dest.interval_n)
                amount = format_micro(amount_micro(billed, dest.interval_1, p1, pn))
                found = (f'"{billed}"', amount)
            self._amounts[key] = found
        return found

    def _pieces(self, d: int, v: int, misc: int) -> tuple[tuple[str, ...], int]:
        key = (d * 8 + v) * 64 + misc
        found = self._templates.get(key)
        if found is None:
            dest = DESTINATIONS[d]
            pieces = tuple(self._build_template(d, v, misc).split("\x00"))
            found = self._templates[key] = (pieces, dest.digits - len(dest.prefix))
        return found

    def _build_template(self, d: int, v: int, misc: int) -> str:
        """The JSON of a row with ``\\x00`` where each of the 12 per-call values goes."""
        dest, vendor = DESTINATIONS[d], VENDORS[v]
        p1, pn = self._prices(d, v)
        accounts = self.profile.accounts
        i_account, account_name, ip = accounts[misc & 3]
        conn = (misc >> 2) & 3
        i_connection = vendor.i_vendor * 100 + conn if conn else 0
        conn_name = f"{vendor.name} {('Premium', 'Standard', 'CLI')[conn - 1]}" if conn else None
        route = str(5000 + i_connection) if conn else "0"

        def lit(value: object) -> str:
            return orjson.dumps(value).decode()

        return (
            f'{{"i_cdr":"\0","CLD":"{dest.prefix}\0","CLI":"\0","call_id":"\0",'
            '"duration":"\0","billed_duration":\0,"connect_time":"\0",'
            f'"disconnect_time":"\0","setup_time":"\0","billing_prefix":{lit(dest.prefix)},'
            f'"billing_price_1":{lit(p1 / 1_000_000)},"billing_price_n":{lit(pn / 1_000_000)},'
            f'"billing_interval_1":{lit(str(dest.interval_1))},'
            f'"billing_interval_n":{lit(str(dest.interval_n))},"customer_amount":"\0",'
            f'"i_customer":{lit(str(self.profile.i_customer))},"i_account":{lit(i_account)},'
            f'"i_vendor":{lit(str(vendor.i_vendor))},"i_connection":{lit(str(i_connection))},'
            f'"i_purchased_route":{lit(route)},"disconnect_code":"\0",'
            f'"customer_ip":{lit(ip if misc >> 4 else "")},'
            f'"i_rate":{lit(str(100_000 + d * 100 + v))},"vendor_name":{lit(vendor.name)},'
            f'"account_name":{lit(account_name)},"connection_name":{lit(conn_name)},'
            f'"disconnect_reason":"\0","country_name":{lit(dest.country_name)},'
            f'"description":{lit(dest.description)}}}'
        )

    def _fmt(self, setup: int, i: int, duration: int) -> str:
        """Connect (plus ``duration``) time of row ``i`` as text, for calls crossing midnight."""
        day, second = divmod(setup + self.ring[i] + duration, 86400)
        return (self._days.get(day) or self._day_text(day)) + self._clock[second]

    def _day_text(self, day: int) -> str:
        text = self._days[day] = (EPOCH + timedelta(days=day)).strftime("%Y-%m-%d ")
        return text


@functools.cache
def _clock() -> tuple[str, ...]:
    """'HH:MM:SS' for every second of a day, built once."""
    return tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400))


_CODES: tuple[int, ...] = (NORMAL_CLEARING, *_FAIL_CODES)
_CODE_TEXTS = tuple(str(code) for code in _CODES)
_REASONS = tuple(Q850_REASONS[code] for code in _CODES)


# i_cdr = icdr_base + setup second * ICDR_PER_SECOND + the call's rank among that second's
# calls: it grows with setup time and never depends on the rest of the range.
ICDR_PER_SECOND = 64
DAY = 86400
MAX_DURATION = 3600
# A call ends at most this long after its setup (its ring time is under 32 s): a live
# simulator checks the disconnect time of the calls set up this close to its clock only.
LONGEST_CALL = MAX_DURATION + 32


def generate(profile: Profile, count: int, start: datetime, end: datetime) -> CdrTable:
    """``count`` CDRs with setup times spread over ``[start, end)``, sorted by setup time.

    A real API keeps serving the past as it was, so the data do too: each UTC day's calls are
    drawn from their own random stream (seed, login, day), ``count * day's seconds / span`` of
    them (rounded on the epoch's seconds, so a day's share depends on the rate alone and the
    range still holds exactly ``count``), and a call's ``i_cdr`` comes from its setup second
    and its rank among that second's calls. Two ranges of the same rate (``count / span``)
    that share a whole day serve the same calls for it, values and ``i_cdr`` alike: the demo
    run again a day later loads one new day. (A day the range holds in part is drawn for that
    part alone.) SimulatorConfig keeps the rate low enough for ICDR_PER_SECOND.
    """
    t0, t1 = to_epoch(start), to_epoch(end)
    if t0 < 0:
        raise ValueError("the simulator's data start in 1970 at the earliest")
    span = max(1, t1 - t0)
    table = CdrTable(profile)
    table.rate, table.until = (count, span), t0
    _append(table, t0 + span)
    return table


def extend(table: CdrTable, until: int) -> int:
    """Generate ``table``'s calls on from where they end up to Unix time ``until`` (a live
    simulator's next day), at the same rate: the same calls a range reaching that far would
    hold. Return how many were added."""
    if table.until % DAY:
        raise ValueError("only data ending at midnight UTC can be extended")
    before = len(table)
    if until > table.until:
        _append(table, until)
    return len(table) - before


def _append(table: CdrTable, t1: int) -> None:
    """Append the calls of ``[table.until, t1)``, day by day, and move ``until`` to ``t1``."""
    count, span = table.rate
    t0 = table.until
    call_ids: list[bytes] = [table.call_ids]  # 16 bytes a call
    for day in range(t0 // DAY, -(-t1 // DAY)):
        lo, hi = max(t0, day * DAY), min(t1, (day + 1) * DAY)
        quota = count * hi // span - count * lo // span  # (over [t0, t0 + span): count)
        part = "" if (lo, hi) == (day * DAY, (day + 1) * DAY) else f":{lo}-{hi}"
        rng = random.Random(f"tcxc-sim:{table.profile.seed}:{table.profile.login}:{day}{part}")
        call_ids.append(_generate_day(table, rng, quota, lo, hi))
    table.call_ids = b"".join(call_ids)
    table.until = t1


def _generate_day(table: CdrTable, rng: random.Random, count: int, lo: int, hi: int) -> bytes:
    """Append ``count`` calls with setup times in ``[lo, hi)`` to ``table``, in setup time
    order; return their call ids."""
    profile = table.profile
    randrange, getrandbits, lognorm = rng.randrange, rng.getrandbits, rng.lognormvariate
    n_pools, n_accounts, n_vendors = len(CLI_POOLS), len(profile.accounts), len(VENDORS)
    tens = [10 ** (d.digits - len(d.prefix)) for d in DESTINATIONS]
    setup_a, icdr_a, cld_a, cli_a = table.setup, table.icdr, table.cld, table.cli
    dur_a, ring_a, dest_a, vend_a = table.duration, table.ring, table.dest, table.vendor
    code_a, misc_a = table.code, table.misc
    base = profile.icdr_base
    previous, rank = -1, 0
    for setup in sorted([lo + randrange(hi - lo) for _ in range(count)]):
        rank = rank + 1 if setup == previous else 0
        if rank == ICDR_PER_SECOND:
            raise ValueError(f"more than {ICDR_PER_SECOND} calls in one second: fewer cdrs")
        previous = setup
        r1 = getrandbits(64)
        r2 = getrandbits(64)
        d = _DEST_PICK[r1 & 1023]
        failed = (r1 >> 10) & 1023 < FAILED_SHARE_OF_1024
        ring = (r1 >> 44) & 31
        if failed:
            duration, code = 0, 1 + _FAIL_PICK[(r1 >> 20) & 1023]
            ring %= 31
        else:
            duration, code = min(MAX_DURATION, 1 + int(lognorm(3.6, 1.2))), 0
            ring = 1 + ring % 20
        pool_start, pool_size = CLI_POOLS[((r1 >> 50) & 7) % n_pools]
        setup_a.append(setup)
        icdr_a.append(base + setup * ICDR_PER_SECOND + rank)
        cld_a.append((r2 & 0xFFFFFFFFFF) % tens[d])
        cli_a.append(pool_start + (r2 >> 40) % pool_size)
        dur_a.append(duration)
        ring_a.append(ring)
        dest_a.append(d)
        vend_a.append(((r1 >> 30) & 255) % n_vendors)
        code_a.append(code)
        account = ((r1 >> 38) & 3) % n_accounts
        misc_a.append(account | ((r1 >> 40) & 3) << 2 | (((r1 >> 42) & 3) != 0) << 4)
    return rng.randbytes(16 * count)
