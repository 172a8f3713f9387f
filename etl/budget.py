"""A proactive request budget per account, so the API's rate limits are not hit at all.

Two limits, both configurable: requests per second (a token bucket whose burst equals the
rate) and requests per rolling hour. The per-second limit paces requests (waiting, cut short
by a stop request); the hourly one is checked before each window starts: when it is spent the
pass ends after the window it is on, the watermark stays where the last committed window put
it, and a later pass resumes from there. Planned windows are joined only as far as the
requests left in the hour should fetch them (``etl.pipeline``). The hourly count is seeded
from the ledger (the requests windows of any process made in the last hour, failed ones and
retries included), so `sync` from cron respects it across runs too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

HOUR = 3600.0


class RequestBudget:
    """Thread-safe pacing for one account; shared by every job of that account."""

    def __init__(
        self,
        per_second: float,
        per_hour: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.per_hour = per_hour
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = max(1.0, per_second)
        self._filled_at = clock()
        self._recent: deque[float] = deque()
        self._seeded = 0

    def seed(self, requests_last_hour: int) -> None:
        """Count requests other processes made in the last hour (from the ledger)."""
        with self._lock:
            self._seeded = max(0, requests_last_hour - len(self._recent))

    def spent_this_hour(self) -> int:
        with self._lock:
            self._forget_old()
            return len(self._recent) + self._seeded

    def hour_exhausted(self) -> bool:
        """True when no request is left in the rolling hour."""
        return self.per_hour > 0 and self.spent_this_hour() >= self.per_hour

    def acquire(self, wait: Callable[[float], object]) -> bool:
        """Take one request from the budget, pacing with ``wait`` (a stop event's wait): True
        once taken; False, with none taken, as soon as ``wait`` answers true (the stop was
        set: the event's wait returns at once from then on)."""
        while True:
            with self._lock:
                delay = self._take()
                if delay == 0.0:
                    self._recent.append(self._clock())
                    return True
            if wait(delay):
                return False

    def _take(self) -> float:
        if self.per_second <= 0:
            return 0.0
        now = self._clock()
        capacity = max(1.0, self.per_second)
        self._tokens = min(capacity, self._tokens + (now - self._filled_at) * self.per_second)
        self._filled_at = now
        if self._tokens >= 1.0 - 1e-9:  # tolerance: float sums of waits land just below 1
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return max((1.0 - self._tokens) / self.per_second, 1e-3)

    def _forget_old(self) -> None:
        horizon = self._clock() - HOUR
        while self._recent and self._recent[0] < horizon:
            self._recent.popleft()
