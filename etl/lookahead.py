"""Look-ahead: a window's next request goes out as soon as a page's answer is read, before
the page is parsed.

The next offset counts the page's distinct ``i_cdr``, which needs the parsed page: without
look-ahead every request waits for the previous page's JSON parsing (several milliseconds for
1,000 records, each time). ``LookAhead.guess`` reads the count off the body (its ``"i_cdr"``
string values) and sends the request for that offset at once; the fetch loop then asks
``LookAhead.take`` for the answer to the request it really needs, which hands over the early
answer only if its form is exactly the one the parsed page led to. A wrong guess (a body the
scan misreads) costs one dropped request, never a page: the guess decides when a request is
sent, never which answer is used. One request at a time stays in flight: a guess is sent only
after the previous answer has been read, and ``take`` waits for a dropped one to finish before
the right one is sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress

from etl.client import Answer

log = logging.getLogger(__name__)

Form = dict[str, str]

# A record's i_cdr as a JSON string (the API's form); the same strip as distinct_count.
_I_CDR = re.compile(rb'"i_cdr"\s*:\s*"([^"\\]*)"')


def guess_count(body: bytes) -> int:
    """The number of distinct ``i_cdr`` string values in ``body`` (0 when none is found)."""
    return len({value.strip() for value in _I_CDR.findall(body)})


class LookAhead:
    """At most one request of a window sent ahead of its turn (see the module docstring)."""

    def __init__(self, send: Callable[[Form], Answer]) -> None:
        self._send = send
        self._pool: ThreadPoolExecutor | None = None
        self._early: tuple[Form, Future[Answer]] | None = None
        self.sent = self.used = 0

    def guess(self, form: Form, answer: Answer) -> None:
        """``answer`` (to ``form``) was just read: send the request for the page after it now,
        at the offset its body suggests (nothing when it suggests an empty page)."""
        count = guess_count(answer.body) if answer.status == 200 else 0
        if not count or self._early is not None:
            return
        ahead = {**form, "off": str(int(form["off"]) + count)}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="lookahead")
        self._early = (ahead, self._pool.submit(self._send, ahead))
        self.sent += 1

    def take(self, form: Form) -> Answer | None:
        """The answer to a request sent ahead with exactly ``form`` (its error, if it failed:
        retried like any other); None when there is none (one sent with another form is waited
        for and dropped first)."""
        early, self._early = self._early, None
        if early is None:
            return None
        sent, future = early
        if sent == form:
            self.used += 1
            return future.result()
        _settle(future)
        return None

    def close(self) -> None:
        """Wait for a request still in flight (dropped) and stop the helper thread."""
        early, self._early = self._early, None
        if early is not None:
            _settle(early[1])
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.sent > self.used:
            log.debug("look-ahead requests dropped=%d of %d", self.sent - self.used, self.sent)


def _settle(future: Future[Answer]) -> None:
    with suppress(Exception):  # a dropped request's error does not matter
        future.result()
