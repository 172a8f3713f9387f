"""The pipeline: ties one run together, window by window (see ``etl.window_sync`` for one
window). Runs windows one at a time or, with TCXC_WORKERS > 1, several at once (each on its
own connection and HTTP session, one transaction per window), and moves the incremental
watermark only over an unbroken chain of committed windows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Engine

from etl import prefetch, state
from etl.errors import AuthError, DatabaseError, EtlError, StopRequestedError
from etl.state import Counts
from etl.window_sync import Job, load_window, record_failure, sync_window
from etl.windows import Coverage, Window, coalesce_count, plan_windows

__all__ = ["Job", "RunSummary", "backfill", "load_window", "run_logged", "run_windows"]
log = logging.getLogger(__name__)
# Called as each window ends: the window, its counts (None if it failed), and how many of the
# planned windows it covered (planned windows are joined up to TCXC_WINDOW_ROWS).
OnWindow = Callable[[Window, Counts | None, int], None]


@dataclass
class RunSummary:
    """What a run did, for the CLI's summary and for callers in tests."""

    run_id: int
    planned: int = 0
    windows: int = 0
    skipped: int = 0
    counts: Counts = field(default_factory=Counts)
    failures: list[tuple[Window, EtlError]] = field(default_factory=list)
    stopped: bool = False
    paused: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped

    @property
    def status(self) -> str:
        if self.stopped:
            return "stopped"
        if self.paused and not self.failures:
            return "paused"
        if self.failures or self.windows + self.skipped < self.planned:
            return "failed"
        return "succeeded"


class WatermarkChain:
    """Moves the watermark over the unbroken chain of committed windows of one pass.

    Windows may commit out of order when several run at once. Each window, inside its own
    transaction, advances the watermark to the end of the longest chain of committed windows
    starting at the pass's start, so the watermark never passes a window that did not commit.
    The lock is held from that computation until the commit is over, so two windows never
    decide on stale knowledge of each other.
    """

    def __init__(self, job: Job, start: datetime) -> None:
        self.job = job
        self.mark = start
        self.done: list[Window] = []
        self._lock = threading.Lock()
        self._next = start

    def _chain(self, windows: list[Window]) -> datetime:
        mark = self.mark
        for window in sorted(windows):
            if window.start <= mark < window.end:
                mark = window.end
        return mark

    def before_commit(self, conn: psycopg.Connection[Any], window: Window) -> None:
        self._lock.acquire()
        self._next = self._chain([*self.done, window])
        if self._next > self.mark:
            state.advance_watermark(conn, self.job.api_login, self.job.prefix, self._next)

    def after_commit(self, window: Window, committed: bool) -> None:
        if not self._lock.locked():
            return  # the window failed before reaching before_commit
        if committed:
            self.done.append(window)
            self.mark = max(self.mark, self._next)
        self._lock.release()


def _stops_everything(error: EtlError) -> bool:
    return isinstance(error, AuthError | DatabaseError)


def run_windows(
    engine: Engine,
    job: Job,
    windows: Sequence[Window],
    summary: RunSummary,
    *,
    watermark: bool = False,
    on_window: OnWindow | None = None,
    density: float | None = None,
) -> RunSummary:
    """Sync ``windows`` into ``summary`` with TCXC_WORKERS fetch slots (see ``etl.prefetch``).

    Each window is fetched by a slot (its own HTTP session) and loaded, in its own transaction,
    by a loader thread that stages the pages as they arrive; a slot takes its next window as
    soon as it has fetched the last one, so at most TCXC_WORKERS requests are in flight and at
    most twice that many windows are open. Until a window has received its first page, that
    window runs alone: a bad key or an unexpected API answer costs one window (one request).
    Windows join several planned ones (up to TCXC_WINDOW_ROWS expected rows: ``_Pending``) at
    the ``density`` (rows per second) of the account's earlier windows, and at the run's own
    once a window has been fetched to its end; a joined window is one transaction.

    With ``watermark`` (incremental passes) the watermark follows the chain of committed
    windows and the first failure stops new windows from starting, so the watermark stays
    before the failed window. Without it (backfills) a failed window is recorded and the others
    carry on. Errors that would fail every later window (auth, database), stop requests and a
    spent hourly budget end the run; windows already started finish (or are abandoned).
    """
    chain = WatermarkChain(job, windows[0].start) if watermark and windows else None
    workers = max(1, min(job.settings.workers, len(windows)))
    pending = _Pending(windows, job.settings.window_rows, workers, density)
    fetching: dict[Future[int | None], tuple[Job, Window]] = {}
    loading: dict[Future[Counts], tuple[Window, int]] = {}
    idle = [job] + [replace(job, client=job.client.clone()) for _ in range(workers - 1)]
    ending = False
    answered = False  # a window got its first page: the key works, the API answers as expected
    probe: Future[bool] | None = None  # the lone window's first answer, until then
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="fetch") as fetchers,
        ThreadPoolExecutor(2 * workers, thread_name_prefix="window") as loaders,
    ):
        while pending or fetching or loading:
            capacity = min(len(idle), 2 * workers - len(loading))
            if not answered and not summary.windows:  # the lone window, until it is answered
                capacity = 0 if loading else min(capacity, 1)
            while pending and capacity > 0 and not ending:
                capacity -= 1
                if _must_end(job, summary):
                    ending = True
                    break
                window, covers = pending.take(_rows_within_budget(job, workers))
                slot, stream = idle.pop(), prefetch.PageStream()
                probe = probe if answered else stream.answered
                fetching[fetchers.submit(prefetch.fill, stream, slot, window)] = (slot, window)
                load = loaders.submit(_load, engine, job, window, summary.run_id, chain, stream)
                loading[load] = (window, covers)
            if not fetching and not loading:
                break
            futures: list[Future[Any]] = [*fetching, *loading]
            if probe is not None and not probe.done():
                futures.append(probe)
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            answered = answered or bool(probe and probe.done() and probe.result())
            for future in finished:
                if future is probe:
                    continue
                if future in fetching:
                    slot, fetched = fetching.pop(future)
                    idle.append(slot)
                    # (fetch errors reach the loader: this raises only bugs)
                    pending.observe(fetched, future.result())
                    continue
                window, covers = loading.pop(future)
                if not _account(engine, job, future, window, covers, summary, watermark, on_window):
                    ending = True
    for slot in idle:
        if slot is not job:
            slot.client.close()
    return summary


class _Pending:
    """The planned windows not started yet, handed out joined (``etl.windows.coalesce_count``)
    by the row density of the windows fully fetched so far in the run (until there is one, by
    ``seed``, the density of the account's earlier windows)."""

    def __init__(
        self, windows: Sequence[Window], target_rows: int, slots: int, seed: float | None = None
    ) -> None:
        self._windows = list(windows)
        self._target_rows, self._slots, self._seed = target_rows, slots, seed
        self._rows, self._seconds = 0, 0.0

    def __bool__(self) -> bool:
        return bool(self._windows)

    def take(self, row_cap: int | None = None) -> tuple[Window, int]:
        """The next window to sync, and how many planned windows it covers (joined up to
        ``row_cap`` expected rows when that is below the target)."""
        density = self._rows / self._seconds if self._seconds else self._seed
        target = self._target_rows if row_cap is None else min(self._target_rows, row_cap)
        covers = coalesce_count(self._windows, density, target, self._slots)
        window = Window(self._windows[0].start, self._windows[covers - 1].end)
        del self._windows[:covers]
        return window, covers

    def observe(self, window: Window, rows: int | None) -> None:
        """``window`` was fetched to its end with ``rows`` records (None: it was not)."""
        if rows is not None:
            self._rows += rows
            self._seconds += (window.end - window.start).total_seconds()


def _rows_within_budget(job: Job, slots: int) -> int | None:
    """The most rows a joined window may be expected to hold so that its requests (full pages
    and the final empty one) fit this slot's share of what is left of the hourly budget."""
    budget = job.budget
    if budget is None or budget.per_hour <= 0:
        return None
    left = (budget.per_hour - budget.spent_this_hour()) // slots
    return max(0, left - 1) * job.settings.page_size


def _load(
    engine: Engine,
    job: Job,
    window: Window,
    run_id: int,
    chain: WatermarkChain | None,
    stream: prefetch.PageStream,
) -> Counts:
    """A loader thread's work: the window's transaction, fed by its fetch slot."""
    try:
        return sync_window(engine, job, window, run_id, chain, stream)
    finally:
        stream.close()  # whatever happened, the fetcher must not wait for this loader


def _must_end(job: Job, summary: RunSummary) -> bool:
    if job.stop.is_set():
        summary.stopped = True
        return True
    if job.budget is not None and job.budget.hour_exhausted():
        log.warning(
            "hourly request budget spent account=%s: no new window starts; a later run resumes "
            "(TCXC_REQUESTS_PER_HOUR=%d)",
            job.api_login,
            job.budget.per_hour,
        )
        summary.paused = True
        return True
    return False


def _account(
    engine: Engine,
    job: Job,
    future: Future[Counts],
    window: Window,
    covers: int,
    summary: RunSummary,
    watermark: bool,
    on_window: OnWindow | None,
) -> bool:
    """Fold one finished window into the summary; False when no new window should start."""
    try:
        counts = future.result()
    except StopRequestedError as stop:
        log.warning("window abandoned account=%s window=%s: %s", job.api_login, window, stop)
        record_failure(engine, job, window, summary.run_id, stop, "stopped")
        summary.stopped = True
        return False
    except EtlError as error:
        log.error("window failed account=%s window=%s error=%s", job.api_login, window, error)
        record_failure(engine, job, window, summary.run_id, error)
        summary.failures.append((window, error))
        if on_window is not None:
            on_window(window, None, covers)
        return not (watermark or _stops_everything(error))
    summary.windows += covers
    summary.counts.add(counts)
    for outcome in ("inserted", "updated", "unchanged", "rejected", "conflicts"):
        job.observe("rows:" + outcome, str(getattr(counts, outcome)))
    if on_window is not None:
        on_window(window, counts, covers)
    return True


def close_run(engine: Engine, summary: RunSummary) -> None:
    """Record the run's outcome; never hides the error that ended the run."""
    first_error = str(summary.failures[0][1]) if summary.failures else None
    try:
        state.finish_run(
            engine, summary.run_id, summary.status, summary.windows, summary.counts, first_error
        )
    except Exception:  # the database may be what failed; the run row then stays 'running'
        log.warning("could not record the end of run %d", summary.run_id)


def run_logged(
    engine: Engine,
    job: Job,
    command: str,
    windows: Sequence[Window],
    *,
    watermark: bool = False,
    done: set[tuple[datetime, datetime]] | None = None,
    on_window: OnWindow | None = None,
    abandon_stale: bool = False,
    finishes_run: int | None = None,
) -> RunSummary:
    """Open a run row, sync the windows not in ``done``, close the run row.

    ``done`` holds committed windows (of an interrupted backfill: they may join several
    planned ones); a planned window they cover is skipped. ``abandon_stale`` (only for callers
    holding the account's lock) first marks the account's runs left 'running' by a dead
    process as 'abandoned'."""
    start, end = (windows[0].start, windows[-1].end) if windows else (None, None)
    if abandon_stale:
        state.abandon_stale_runs(engine, job.api_login)
    run_id = state.start_run(
        engine,
        command,
        job.api_login,
        start,
        end,
        state.row_settings(job.settings),
        job.prefix,
        finishes_run,
    )
    summary = RunSummary(run_id=run_id, planned=len(windows))
    committed = Coverage(done or ())
    todo = [w for w in windows if w not in committed]
    summary.skipped = len(windows) - len(todo)
    job.seed_budget(engine)
    density = (
        state.recent_density(engine, job.api_login, job.prefix)
        if job.settings.window_rows
        else None
    )
    try:
        run_windows(
            engine, job, todo, summary, watermark=watermark, on_window=on_window, density=density
        )
    finally:
        close_run(engine, summary)
        log.info(
            "run %s account=%s command=%s windows=%d/%d skipped=%d failed=%d rows=%d inserted=%d "
            "updated=%d",
            summary.status,
            job.api_login,
            command,
            summary.windows,
            len(todo),
            summary.skipped,
            len(summary.failures),
            summary.counts.rows_fetched,
            summary.counts.inserted,
            summary.counts.updated,
        )
    return summary


def windows_done(engine: Engine, job: Job, windows: list[Window]) -> set[tuple[datetime, datetime]]:
    """The windows an unfinished earlier backfill of the same account, prefix and planned
    range committed. (A run records its planned bounds, which for a --from in a spring gap is
    the first instant after it, and is looked up by them.)"""
    if not windows:
        return set()
    start, end = windows[0].start, windows[-1].end
    return state.backfill_windows_done(engine, job.api_login, job.prefix, start, end, job.settings)


def backfill(
    engine: Engine,
    job: Job,
    start: datetime,
    end: datetime,
    on_window: OnWindow | None = None,
    *,
    resume: bool = True,
    locked: bool = False,
    repair: bool = False,
) -> RunSummary:
    """Sync ``[start, end]`` in windows of the configured size; leaves the watermark alone.

    With ``resume``, windows that an unfinished earlier backfill of the same account, prefix
    and range already committed are skipped (the per-window ledger says which). ``repair``
    compares every stored row with the API's values, not only its digest (``Job.recheck``),
    and resumes nothing: each of its windows is read and compared.
    """
    windows = list(plan_windows(start, end, job.settings.window))
    if repair:
        job, resume = replace(job, recheck=True), False
    done = windows_done(engine, job, windows) if resume else set()
    return run_logged(
        engine, job, "backfill", windows, done=done, on_window=on_window, abandon_stale=locked
    )
