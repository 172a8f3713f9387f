"""The simulator's state and request logic, independent of HTTP.

One lock guards every piece of shared state: the stores, the fault plan, the envelope override
and the counters. Serialising a page and sleeping happen outside it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from etl.simulator.config import SimulatorConfig
from etl.simulator.data import generate, icdr_bucket, make_profile
from etl.simulator.faults import ALTERING_KINDS, Fault, FaultPlan, altered, fault_reply
from etl.simulator.protocol import (
    WRONG_SIGNATURE,
    Reply,
    authenticate,
    error_reply,
    parse_query,
    success_body,
)
from etl.simulator.store import AccountStore


def _buckets(logins: Sequence[str]) -> dict[str, int]:
    """A distinct ``i_cdr`` bucket per login (see ``make_profile``): its hash bucket, or the
    next free one."""
    taken: set[int] = set()
    result: dict[str, int] = {}
    for login in sorted(logins):
        bucket = icdr_bucket(login)
        while bucket in taken:
            bucket = bucket % 9000 + 1
        taken.add(bucket)
        result[login] = bucket
    return result


class Engine:
    """Answers call-history requests and exposes the ground truth behind them."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.accounts: Mapping[str, str] = dict(config.accounts)
        self.lock = threading.Lock()
        start, end = config.window()
        if start >= end:
            raise ValueError(f"SimulatorConfig window is empty: start {start} >= end {end}")
        self._stores: dict[str, AccountStore] = {}
        clock = config.clock if config.live else None
        for login, bucket in _buckets(list(self.accounts)).items():
            table = generate(make_profile(login, config.seed, bucket), config.cdrs, start, end)
            self._stores[login] = AccountStore(table, config.filter_field, config.order, clock)
        self._faults = FaultPlan()
        self._envelope: bytes | None = None
        self._requests = 0
        self._faults_injected = 0
        self._rows_served = 0
        self._cpu_seconds = 0.0
        self._in_flight = 0
        self._max_in_flight = 0
        self._date_froms: Counter[str] = Counter()
        self._withdrawals = self._withdraw = 0

    # --- request handling -------------------------------------------------------------

    def count_request(self) -> None:
        """Count one HTTP request (called as it arrives)."""
        with self.lock:
            self._requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def request_done(self, cpu_seconds: float) -> None:
        """One request answered: add the CPU time its handler thread spent on it."""
        with self.lock:
            self._in_flight -= 1
            self._cpu_seconds += cpu_seconds

    def answer(self, params: Mapping[str, str]) -> Reply:
        """The reply to one call-history request, faults included."""
        with self.lock:
            fault = self._faults.take()
            if fault is not None:
                self._faults_injected += 1
        if fault is not None and fault.kind not in ALTERING_KINDS:
            return fault_reply(fault)
        reply = self._normal(params)
        if fault is not None:
            reply = altered(reply, fault)
        return reply

    def _normal(self, params: Mapping[str, str]) -> Reply:
        login = authenticate(params, self.accounts, time.time(), self.config.skew_seconds)
        if login is None:
            return WRONG_SIGNATURE
        query = parse_query(login, params)
        if isinstance(query, str):
            return error_reply(query)
        with self.lock:
            self._date_froms[params.get("date_from", "")] += 1
        limit = query.pager
        if self.config.max_page_size is not None:
            limit = min(limit, self.config.max_page_size)
        if self.config.max_offset is not None and query.off >= self.config.max_offset:
            limit = 0
        with self.lock:
            if self._envelope is not None:
                return Reply(200, self._envelope)
            store = self._stores[login]
            if self._withdrawals and query.off > 0:
                store.withdraw_first(query.date_from, query.date_to, query.prefix, self._withdraw)
                self._withdrawals -= 1
            lo, hi = query.date_from, query.date_to
            if self.config.max_span is not None and lo is not None:
                hi = lo + self.config.max_span if hi is None else min(hi, lo + self.config.max_span)
            if self.config.exclusive_bounds:  # (times are whole seconds)
                lo = None if lo is None else lo + 1
                hi = None if hi is None else hi - 1
            rows = store.page(lo, hi, query.prefix, query.off, limit)
        every = self.config.duplicate_every
        if every > 0:
            rows = [row for k, row in enumerate(rows, 1) for _ in range(2 if k % every == 0 else 1)]
        with self.lock:
            self._rows_served += len(rows)
        return Reply(200, success_body(rows))

    # --- ground truth and test control ---------------------------------------------------

    def records(self, login: str) -> list[dict[str, Any]]:
        """Every record of ``login`` served now, with its latest values, in ``i_cdr`` order."""
        with self.lock:
            return self._store(login).records()

    def publish(self, login: str, record: dict[str, Any]) -> None:
        """Add a raw record (late CDR, malformed input) to ``login``'s CDRs."""
        with self.lock:
            self._store(login).publish(dict(record))

    def rerate(self, login: str, i_cdr: str, customer_amount: str) -> None:
        """Change the amount of ``login``'s CDR ``i_cdr``."""
        with self.lock:
            self._store(login).rerate(str(i_cdr), customer_amount)

    def withdraw_while_paging(self, requests: int, records: int) -> None:
        """Each of the next ``requests`` requests past a first page (``off`` > 0) first removes
        the first ``records`` records of its result: records gone while a window is paged."""
        with self.lock:
            self._withdrawals, self._withdraw = requests, records

    def inject(self, faults: Sequence[Fault]) -> None:
        """Queue faults for the next requests."""
        with self.lock:
            self._faults.inject(faults)

    def set_fault_rate(
        self, rate: float, kinds: Sequence[str], seed: int, retry_after: float, delay: float
    ) -> None:
        """Random faults on a seeded share of requests."""
        with self.lock:
            self._faults.set_rate(rate, kinds, seed, retry_after, delay)

    def clear_faults(self) -> None:
        """Drop queued faults and the fault rate."""
        with self.lock:
            self._faults.clear()

    def set_envelope(self, body: bytes | None) -> None:
        """Answer every successful request with ``body`` (None: normal answers)."""
        with self.lock:
            self._envelope = None if body is None else bytes(body)

    def stats(self) -> dict[str, float]:
        """Counters: requests, faults injected, rows served, handler CPU seconds."""
        with self.lock:
            return {
                "requests": self._requests,
                "faults_injected": self._faults_injected,
                "rows_served": self._rows_served,
                "cpu_seconds": self._cpu_seconds,
                "max_in_flight": self._max_in_flight,
            }

    def date_froms(self) -> Counter[str]:
        """How many valid requests asked for each ``date_from`` (as sent)."""
        with self.lock:
            return Counter(self._date_froms)

    @property
    def requests(self) -> int:
        """How many HTTP requests arrived."""
        with self.lock:
            return self._requests

    def _store(self, login: str) -> AccountStore:
        store = self._stores.get(login)
        if store is None:
            raise KeyError(f"unknown login {login!r}")
        return store
