"""Retrying retriable API failures: exponential backoff with full jitter, honouring
Retry-After, bounded both in attempts and in total time.

Only RetriableApiError (timeouts, connection errors, 429, 5xx, truncated or non-JSON bodies,
temporary error envelopes) is retried; auth and other errors pass straight through. Each
attempt calls the request function again, so each attempt is freshly signed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from etl.errors import RetriableApiError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``sleep`` and ``clock`` are injectable so tests need not wait."""

    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_elapsed: float = 600.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int, error: RetriableApiError) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        backoff = self.rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        if error.retry_after is not None:
            return min(max(backoff, error.retry_after), self.max_delay)
        return backoff


def call_with_retry(
    request: Callable[[], T],
    policy: RetryPolicy,
    where: str,
    on_retry: Callable[[RetriableApiError], None] | None = None,
) -> T:
    """Call ``request`` until it succeeds, a non-retriable error occurs or the budget ends."""
    started = policy.clock()
    attempt = 1
    while True:
        try:
            return request()
        except RetriableApiError as error:
            wait = policy.delay(attempt, error)
            spent = policy.clock() - started
            if attempt >= policy.attempts or spent + wait > policy.max_elapsed:
                raise error.located(f"{where}, gave up after {attempt} attempts") from None
            log.warning(
                "retrying where=%r attempt=%d kind=%s wait_s=%.2f error=%r",
                where,
                attempt,
                error.kind,
                wait,
                error.message,
            )
            if on_retry is not None:
                on_retry(error)
            policy.sleep(wait)
            attempt += 1
