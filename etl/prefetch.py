"""Fetch-ahead: a window's pages are fetched by one thread while another normalises and stages
them in the window's transaction, merges and commits.

Under API latency a worker that fetched, staged and merged in turn would leave the API idle
during every normalisation, COPY and merge, and the database idle during every request. Here
each of the TCXC_WORKERS fetch slots (its own HTTP session) runs only the requests (and the
JSON parsing the paging needs: the next offset counts the page's distinct i_cdr), and hands
pages over through a ``PageStream`` that holds at most ``PREFETCH_PAGES`` pages: memory
stays bounded whatever the window's size, and a slot moves on to its next window while the
previous one merges and commits. The number of concurrent requests stays TCXC_WORKERS.

Errors cross over: a fetch error (API error, stop request, loop guard) is raised by the
stream in the loader's thread, inside the window's transaction, so the window rolls back as a
whole exactly as if it had fetched its own pages. A loader that fails closes its stream, and
the fetcher stops at its next page.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future

from etl.window_fetch import Records, fetch_window
from etl.window_sync import Job
from etl.windows import Window

# Pages handed over but not yet taken by the loader, per window. A parsed page of 1,000
# records holds about 2.7 MB; the loader takes each as soon as it has staged the previous one,
# so one waiting page is enough to keep the fetcher from ever waiting on a loader that keeps up.
PREFETCH_PAGES = 1


class StreamClosedError(Exception):
    """The loader went away (its window failed or was abandoned): stop fetching."""


class PageStream:
    """A bounded, one-way hand-over of one window's pages, from its fetcher to its loader."""

    def __init__(self, depth: int = PREFETCH_PAGES) -> None:
        self._depth = depth
        self._pages: deque[Records] = deque()
        self._changed = threading.Condition()
        self._finished = False
        self._error: BaseException | None = None
        self._closed = False
        # True once a first page (even the empty one) was fetched; False if fetching ended
        # without one (an error, or the loader went away).
        self.answered: Future[bool] = Future()

    def _answer(self, ok: bool) -> None:  # (holding the condition's lock)
        if not self.answered.done():
            self.answered.set_result(ok)

    # The fetcher's side.
    def put(self, page: Records) -> None:
        """Hand a page over; waits while ``depth`` pages are waiting to be staged."""
        with self._changed:
            while len(self._pages) >= self._depth and not self._closed:
                self._changed.wait()
            if self._closed:
                raise StreamClosedError
            self._pages.append(page)
            self._answer(True)
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        """No more pages: the window is complete, or ``error`` ended its fetching."""
        with self._changed:
            self._finished, self._error = True, error
            self._answer(error is None)
            self._changed.notify_all()

    # The loader's side.
    def __iter__(self) -> Iterator[Records]:
        while True:
            with self._changed:
                while not self._pages and not self._finished:
                    self._changed.wait()
                if self._pages:
                    page = self._pages.popleft()
                    self._changed.notify_all()
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield page

    def close(self) -> None:
        """The loader is done with the stream (normally or not): release the fetcher."""
        with self._changed:
            self._closed = True
            self._pages.clear()
            self._answer(False)
            self._changed.notify_all()


def fill(stream: PageStream, job: Job, window: Window) -> int | None:
    """Fetch every page of ``window`` into ``stream`` (run by a fetch slot's thread); the
    number of records fetched, or None when fetching did not reach the window's end.

    Every error goes to the loader through the stream; only a loader that went away ends
    this early and silently (its window is rolled back and accounted for by the loader).
    """
    records = 0
    try:
        for page in fetch_window(job, window):
            stream.put(page)
            records += len(page)
    except StreamClosedError:
        return None
    except BaseException as exc:
        stream.finish(exc)
        if not isinstance(exc, Exception):
            raise
        return None
    stream.finish()
    return records
